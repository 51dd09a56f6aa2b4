"""Server-streaming throughput and time to first message, against the same two baselines.

Throughput: h2load opens ``--streams`` concurrent ``PredictTokens(n=--messages)`` streams on one
connection (one channel, as a gRPC client multiplexes) and the figure is all messages divided
by the wall time from the first request to the last end of stream. Time to first message
comes from a grpc client on an otherwise idle server, since h2load only reports a
per-connection time to first byte, which may be the response headers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import grpc
import harness
from harness import Metric, RunningServer, Target

TARGETS = [
    Target("blazerpc", "grpcio", "msgs_per_s", 0.8),
    Target("blazerpc", "reference", "msgs_per_s", 1.6),
]
METRICS = [
    Metric("msgs_per_s", "messages/s"),
    Metric("ttfm_ms", "first message ms", "{:.2f}"),
    Metric("cpu_us", "server CPU µs/message", "{:.1f}"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--duration",
        type=float,
        default=3.0,
        help="least seconds of streaming per server per round (whole h2load runs, at least one)",
    )
    parser.add_argument("--messages", type=int, default=20_000, help="messages per stream")
    parser.add_argument("--streams", type=int, default=3, help="concurrent streams")
    parser.add_argument("--ttfm-samples", type=int, default=5, help="samples per round")
    parser.add_argument("--servers", default="blazerpc,grpcio,reference")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()

    pb2, pb2_grpc = harness.load_stubs()
    request = pb2.TokensRequest(n=args.messages)
    payload = harness.write_payload("tokens", request.SerializeToString())
    stream_bytes = sum(
        len(harness.grpc_frame(pb2.TokensResponse(result=str(i)).SerializeToString()))
        for i in range(args.messages)
    )
    specs = harness.pick_servers(args.servers)
    channels: dict[str, grpc.Channel] = {}

    def stub(server: RunningServer) -> Any:
        """One connected channel per server, so first-message times exclude connection setup."""
        if server.spec.name not in channels:
            channel = grpc.insecure_channel(f"{harness.HOST}:{server.port}")
            grpc.channel_ready_future(channel).result(timeout=10)
            channels[server.spec.name] = channel
        return pb2_grpc.InferenceServiceStub(channels[server.spec.name])

    def check(server: RunningServer) -> None:
        got = [m.result for m in stub(server).PredictTokens(pb2.TokensRequest(n=5), timeout=10)]
        if got != ["0", "1", "2", "3", "4"]:
            raise RuntimeError(f"{server.spec.name} streamed {got!r}")

    def first_message_ms(server: RunningServer) -> float:
        # The stream is read to its end, not cancelled: a server that keeps generating after
        # a cancel would otherwise delay the next sample with the previous stream's work.
        started = time.perf_counter()
        first: float | None = None
        count = 0
        for _ in stub(server).PredictTokens(request, timeout=120):
            if first is None:
                first = time.perf_counter() - started
            count += 1
        if first is None or count != args.messages:
            raise RuntimeError(f"{server.spec.name} streamed {count} of {args.messages} messages")
        return first * 1000

    def measure(server: RunningServer) -> dict[str, float]:
        messages, wall = 0, 0.0
        cpu_before = server.cpu_seconds()
        while messages == 0 or wall < args.duration:
            result = harness.h2load(
                server.port,
                "PredictTokens",
                payload,
                clients=1,
                streams=args.streams,
                requests=args.streams,
            )
            if result.succeeded != args.streams or result.data_bytes != args.streams * stream_bytes:
                raise RuntimeError(
                    f"{server.spec.name}: {result.succeeded}/{args.streams} streams, "
                    f"{result.data_bytes} of {args.streams * stream_bytes} data bytes"
                )
            messages += args.streams * args.messages
            wall += result.wall_s
        cpu_us = (server.cpu_seconds() - cpu_before) / messages * 1e6
        ttfm = statistics.median(first_message_ms(server) for _ in range(args.ttfm_samples))
        return {"msgs_per_s": messages / wall, "ttfm_ms": ttfm, "cpu_us": cpu_us}

    try:
        samples = harness.alternate(specs, args.rounds, measure, check)
    finally:
        for channel in channels.values():
            channel.close()
    body = "\n\n".join(
        [
            harness.section_header("Server streaming", specs),
            f"{args.streams} concurrent `PredictTokens(n={args.messages})` streams (messages "
            f"`str(i)`) on one connection: `h2load -c 1 -m {args.streams} -n {args.streams} -t 1`, "
            f"repeated until {args.duration:g} s of streaming per server per round; messages/s = "
            "all messages ÷ time from first request to last end of stream (h2load's "
            f"per-request log). {args.rounds} rounds per server in alternation after one "
            "discarded warm-up round. First message: median of "
            f"{args.ttfm_samples} `PredictTokens(n={args.messages})` calls per round from a "
            "Python grpc client on a connected channel, server otherwise idle, each stream read "
            "to its end. Checked: a 5-message stream through a grpc client before timing, and "
            "every timed stream by its DATA byte count. Server CPU: user+system time of the "
            "server process (all threads) over the h2load runs, per message.",
            harness.summary(samples, METRICS, "msgs_per_s"),
            harness.target_lines(samples, TARGETS),
        ]
    )
    print(body)
    if not args.no_write:
        harness.write_section("streaming", body)


if __name__ == "__main__":
    main()
