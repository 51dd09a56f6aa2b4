"""Bidirectional streaming against a hand-written grpcio servicer, and OpenAI-compatible token
streaming (server-sent events over HTTP/1.1) against the same model over native gRPC.

Bidirectional echo: h2load opens ``--streams`` concurrent ``PredictEchoStream`` streams on
one connection, each carrying ``--messages`` requests in its body and reading as many
echoes; messages/s = all echoed messages ÷ time from the first request to the last end of
stream. Tokens: the ``tokens`` model of one BlazeRPC server generates ``--tokens`` tokens per
request, asked ``--clients`` at a time over native gRPC (``PredictTokens``, one connection)
and over ``POST /v1/completions`` with ``stream: true`` (``--clients`` HTTP/1.1
connections); tokens/s likewise. Every contender stays up; rounds alternate between them.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import harness
from harness import Metric, RunningServer, ServerSpec, Target

APP = "benchmarks.stream_apps:app"
TEXT = "hello blazerpc"
TARGETS = [Target("blazerpc", "grpcio", "msgs_per_s", 0.8)]
ECHO_METRICS = [
    Metric("msgs_per_s", "messages/s"),
    Metric("cpu_us", "server CPU µs/message", "{:.1f}"),
]
TOKEN_METRICS = [
    Metric("tokens_per_s", "tokens/s"),
    Metric("p50_ms", "p50 ms per request", "{:.2f}"),
    Metric("cpu_us", "server CPU µs/token", "{:.1f}"),
]


def blazerpc_server(http_port: int) -> ServerSpec:
    blaze = Path(sys.executable).with_name("blaze")
    return ServerSpec(
        name="blazerpc",
        description=f"BlazeRPC (this repo): `blaze serve {APP} --http-port ...`",
        command=lambda port: [
            str(blaze),
            *("serve", APP, "--host", harness.HOST, "--port", str(port)),
            *("--http-port", str(http_port), "--app-dir", str(harness.ROOT)),
        ],
    )


def until(duration: float, run: Callable[[], tuple[int, float, list[float]]]) -> tuple[int, ...]:
    """Repeat whole h2load runs until `duration` seconds of load; (units, wall, latencies)."""
    units, wall, latencies = 0, 0.0, []
    while units == 0 or wall < duration:
        n, w, lat = run()
        units, wall, latencies = units + n, wall + w, latencies + lat
    return units, wall, latencies  # type: ignore[return-value]


def sse_tokens(http_port: int, tokens: int) -> tuple[list[str], bytes]:
    """One streamed completion through urllib: its token texts and its raw body."""
    body = json.dumps({"model": "tokens", "prompt": "x", "max_tokens": tokens, "stream": True})
    request = urllib.request.Request(
        f"http://{harness.HOST}:{http_port}/v1/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
    if events[-1] != b"[DONE]":
        raise RuntimeError(f"the event stream does not end with [DONE]: {raw[-200:]!r}")
    texts = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    return [t for t in texts if t], raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=2.0, help="least seconds per round")
    parser.add_argument("--streams", type=int, default=8, help="concurrent echo streams")
    parser.add_argument("--messages", type=int, default=200, help="messages per echo stream")
    parser.add_argument("--clients", type=int, default=8, help="concurrent token requests")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()

    pb2, pb2_grpc = harness.load_stubs("streams.proto")
    echo_request = pb2.EchoStreamRequest(texts=TEXT).SerializeToString()
    echo_payload = harness.WORK_DIR / "echo-stream.bin"
    echo_payload.write_bytes(harness.grpc_frame(echo_request) * args.messages)
    echo_bytes = args.messages * len(
        harness.grpc_frame(pb2.EchoStreamResponse(result=TEXT).SerializeToString())
    )
    tokens_payload = harness.write_payload(
        "tokens-native",
        pb2.TokensRequest(prompt="x", max_tokens=args.tokens).SerializeToString(),
    )
    token_bytes = sum(
        len(harness.grpc_frame(pb2.TokensResponse(result=f" t{i}").SerializeToString()))
        for i in range(args.tokens)
    )
    sse_payload = harness.WORK_DIR / "tokens-sse.json"
    sse_payload.write_text(
        json.dumps({"model": "tokens", "prompt": "x", "max_tokens": args.tokens, "stream": True})
    )
    http_port = harness.free_port()
    streams = harness.compile_proto("streams.proto")
    specs = [
        blazerpc_server(http_port),
        harness.handwritten_server("handwritten_streams.py", "", streams),
    ]
    sse_body_bytes = 0

    def check(server: RunningServer) -> None:
        nonlocal sse_body_bytes
        with grpc.insecure_channel(f"{harness.HOST}:{server.port}") as channel:
            stub = pb2_grpc.InferenceServiceStub(channel)
            sent = [pb2.EchoStreamRequest(texts=t) for t in ("a", "b", "c")]
            got = [m.result for m in stub.PredictEchoStream(iter(sent), timeout=10)]
            if got != ["a", "b", "c"]:
                raise RuntimeError(f"{server.spec.name} echoed {got!r}")
            if server.spec.name != "blazerpc":
                return
            native = [
                m.result for m in stub.PredictTokens(pb2.TokensRequest(prompt="x"), timeout=10)
            ]
            texts, raw = sse_tokens(http_port, args.tokens)
            if native != [f" t{i}" for i in range(16)] or texts != [
                f" t{i}" for i in range(args.tokens)
            ]:
                raise RuntimeError(f"tokens: native {native!r}, SSE {texts!r}")
            sse_body_bytes = len(raw)

    def echo(server: RunningServer) -> dict[str, float]:
        def run() -> tuple[int, float, list[float]]:
            result = harness.h2load(
                server.port, "PredictEchoStream", echo_payload,
                clients=1, streams=args.streams, requests=args.streams,
            )  # fmt: skip
            if result.succeeded != args.streams or result.data_bytes != args.streams * echo_bytes:
                raise RuntimeError(
                    f"{server.spec.name}: {result.succeeded}/{args.streams} streams, "
                    f"{result.data_bytes} of {args.streams * echo_bytes} data bytes"
                )
            return args.streams * args.messages, result.wall_s, result.latencies_ms

        cpu_before = server.cpu_seconds()
        messages, wall, _ = until(args.duration, run)
        cpu_us = (server.cpu_seconds() - cpu_before) / messages * 1e6
        return {"msgs_per_s": messages / wall, "cpu_us": cpu_us}

    def tokens(server: RunningServer, sse: bool) -> dict[str, float]:
        requests = args.clients * 4

        def run() -> tuple[int, float, list[float]]:
            if sse:
                result = harness.h2load(
                    http_port, "v1/completions", sse_payload,
                    clients=args.clients, streams=1, requests=requests, http1_json=True,
                )  # fmt: skip
                ok = result.data_bytes >= requests * sse_body_bytes
            else:
                result = harness.h2load(
                    server.port, "PredictTokens", tokens_payload,
                    clients=1, streams=args.clients, requests=requests,
                )  # fmt: skip
                ok = result.data_bytes == requests * token_bytes
            if result.succeeded != requests or result.failed or not ok:
                raise RuntimeError(
                    f"tokens ({'SSE' if sse else 'native'}): {result.succeeded}/{requests} "
                    f"requests, {result.data_bytes} data bytes"
                )
            return requests * args.tokens, result.wall_s, result.latencies_ms

        cpu_before = server.cpu_seconds()
        count, wall, latencies = until(args.duration, run)
        cpu_us = (server.cpu_seconds() - cpu_before) / count * 1e6
        p50 = sorted(latencies)[len(latencies) // 2]
        return {"tokens_per_s": count / wall, "p50_ms": p50, "cpu_us": cpu_us}

    echo_samples: harness.Samples = {s.name: {} for s in specs}
    token_samples: harness.Samples = {"native gRPC": {}, "OpenAI SSE": {}}

    def record(samples: harness.Samples, name: str, result: dict[str, float]) -> None:
        for key, value in result.items():
            samples[name].setdefault(key, []).append(value)
        shown = ", ".join(f"{k}={v:,.2f}" for k, v in result.items())
        print(f"{name:<12} {shown}", file=sys.stderr)

    with harness.running(specs[0]) as blaze, harness.running(specs[1]) as grpcio:
        for server in (blaze, grpcio):
            check(server)
            echo(server)  # warm-up, discarded
        tokens(blaze, sse=False)
        tokens(blaze, sse=True)
        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no}/{args.rounds}", file=sys.stderr)
            record(echo_samples, "blazerpc", echo(blaze))
            record(echo_samples, "grpcio", echo(grpcio))
            record(token_samples, "native gRPC", tokens(blaze, sse=False))
            record(token_samples, "OpenAI SSE", tokens(blaze, sse=True))

    body = "\n\n".join(
        [
            harness.section_header("Client and bidirectional streaming", specs),
            "The machine was shared with other work while this ran (see the load average).",
            f"**Bidirectional echo.** {args.streams} concurrent `PredictEchoStream` streams on one "
            f"connection, each sending {args.messages} `EchoStreamRequest(texts={TEXT!r})` "
            f"messages and reading {args.messages} echoes: `h2load -c 1 -m {args.streams} "
            f"-n {args.streams} -t 1`, repeated until {args.duration:g} s per server per round; "
            "messages/s = echoed messages ÷ time from first request to last end of stream. "
            f"{args.rounds} rounds in alternation after a discarded warm-up. Checked: a "
            "3-message stream through a grpc stub before timing, every timed stream by its "
            "DATA byte count. Server CPU: user+system time of the server process per message.",
            harness.summary(echo_samples, ECHO_METRICS, "msgs_per_s"),
            harness.target_lines(echo_samples, TARGETS),
            f"**Token streaming, native gRPC vs OpenAI SSE, same server and model.** "
            f"`tokens(prompt, max_tokens={args.tokens})` yields {args.tokens} short strings; "
            f"{args.clients} requests at a time, {args.clients * 4} per h2load run, repeated "
            f"until {args.duration:g} s per round. Native: `h2load -c 1 -m {args.clients}` on "
            f"`PredictTokens`. OpenAI: `h2load --h1 -c {args.clients}` POSTing "
            '`{"model": "tokens", "stream": true, ...}` to `/v1/completions`, each '
            "response an event stream of one JSON chunk per token plus the final chunk and "
            "`data: [DONE]`. Checked: the tokens of one request of each kind before timing, "
            "and every timed run by its byte count (gRPC exactly; SSE at least a whole "
            "response per request). Native gRPC sends each message as its own operation "
            "through gRPC core, while aiohttp appends each event to the connection's buffer "
            "and waits only when it is full, which is why SSE costs less server CPU per token "
            "here. p50: per request, first byte sent to last byte received. In alternation "
            "with the echo rounds.",
            harness.summary(token_samples, TOKEN_METRICS, "tokens_per_s"),
        ]
    )
    print(body)
    if not args.no_write:
        harness.write_section("stream-input", body)


if __name__ == "__main__":
    main()
