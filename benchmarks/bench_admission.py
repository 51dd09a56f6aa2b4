"""What safe retries cost the server: unary echo with and without the admission-headers ask.

`BlazeClient` sends `blazerpc-admission-headers: 1` with every call, so that the server sends
response headers as soon as it admits the call, before the model runs: gRPC then never
retries a call that may have reached a model (docs/kubernetes.md). Those headers are a write
of their own. Both variants run against the same server, in alternating rounds: `stock` is
what grpcurl or a protoc stub sends, `asks` adds the metadata, as BlazeClient does.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import grpc
import harness
from harness import Metric

from blazerpc.balancing import ADMISSION_HEADERS

TEXT = "hello blazerpc"
VARIANTS = {"stock": (), "asks": (f"{ADMISSION_HEADERS[0]}: {ADMISSION_HEADERS[1]}",)}
METRICS = [
    Metric("rps", "req/s"),
    Metric("p50_ms", "p50 ms", "{:.2f}"),
    Metric("p99_ms", "p99 ms", "{:.2f}"),
    Metric("cpu_us", "server CPU µs/call", "{:.0f}"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per variant per round")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()

    pb2, pb2_grpc = harness.load_stubs()
    payload = harness.write_payload("echo", pb2.EchoRequest(text=TEXT).SerializeToString())
    frame = len(harness.grpc_frame(pb2.EchoResponse(result=TEXT).SerializeToString()))
    spec = harness.blazerpc_server()
    samples: harness.Samples = {name: {} for name in VARIANTS}
    with harness.running(spec) as server:
        for headers in VARIANTS.values():  # each answers right, with and without the ask
            with grpc.insecure_channel(f"{harness.HOST}:{server.port}") as channel:
                stub = pb2_grpc.InferenceServiceStub(channel)
                metadata = [tuple(h.split(": ")) for h in headers]
                reply = stub.PredictEcho(pb2.EchoRequest(text=TEXT), metadata=metadata, timeout=10)
            if reply.result != TEXT:
                raise RuntimeError(f"echoed {reply.result!r}, not {TEXT!r}")

        def measure(name: str) -> dict[str, float]:
            cpu_before = server.cpu_seconds()
            result = harness.h2load(
                server.port,
                "PredictEcho",
                payload,
                clients=1,
                streams=64,
                duration=args.duration,
                headers=VARIANTS[name],
            )
            result.check_unary(frame, name)
            return {
                "rps": result.rps,
                "p50_ms": result.percentile(50),
                "p99_ms": result.percentile(99),
                "cpu_us": (server.cpu_seconds() - cpu_before) / result.succeeded * 1e6,
            }

        for name in VARIANTS:
            measure(name)  # warm-up, discarded
        for round_no in range(1, args.rounds + 1):
            for name in VARIANTS:
                result = measure(name)
                for key, value in result.items():
                    samples[name].setdefault(key, []).append(value)
                print(f"round {round_no} {name:<6} {result}", file=sys.stderr)

    cpu = {name: statistics.median(samples[name]["cpu_us"]) for name in VARIANTS}
    body = "\n\n".join(
        [
            harness.section_header("Safe retries: headers on admission", [spec]),
            "64 concurrent unary `PredictEcho` calls on one connection "
            f"(`h2load -c 1 -m 64 -t 1 -D {args.duration:g}`), {args.rounds} rounds per variant "
            "in alternation after one discarded warm-up round, against one server: `stock` "
            "sends what a protoc stub sends; `asks` adds the "
            f"`{ADMISSION_HEADERS[0]}: {ADMISSION_HEADERS[1]}` metadata that BlazeClient sends, so "
            "the server writes the response headers before the model runs. Every timed "
            "response checked by its byte count. The machine was shared with other work.",
            harness.summary(samples, METRICS, "rps"),
            f"- server CPU per call, asks minus stock (medians): "
            f"{cpu['asks'] - cpu['stock']:+.0f} µs ({cpu['asks'] / cpu['stock'] - 1:+.0%}); "
            "clients that do not ask pay nothing but the check of their metadata",
        ]
    )
    print(body)
    if not args.no_write:
        harness.write_section("admission", body)


if __name__ == "__main__":
    main()
