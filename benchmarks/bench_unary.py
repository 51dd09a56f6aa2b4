"""Unary echo throughput: BlazeRPC against hand-written grpcio and the reference release.

64 calls stay in flight, by default on one HTTP/2 connection (h2load ``-c 1 -m 64``), the
way one gRPC channel multiplexes its calls; each round runs ``--duration`` seconds per server.
"""

from __future__ import annotations

import argparse

import grpc
import harness
from harness import Metric, RunningServer, Target

TEXT = "hello blazerpc"
TARGETS = [
    Target("blazerpc", "grpcio", "rps", 0.85),
    Target("blazerpc", "reference", "rps", 2.5),
]
METRICS = [
    Metric("rps", "req/s"),
    Metric("p50_ms", "p50 ms", "{:.2f}"),
    Metric("p99_ms", "p99 ms", "{:.2f}"),
    Metric("cpu_us", "server CPU µs/call", "{:.0f}"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per server per round")
    parser.add_argument("--clients", type=int, default=1, help="h2load -c: connections")
    parser.add_argument("--streams", type=int, default=64, help="h2load -m: calls per connection")
    parser.add_argument("--servers", default="blazerpc,grpcio,reference")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()

    pb2, pb2_grpc = harness.load_stubs()
    payload = harness.write_payload("echo", pb2.EchoRequest(text=TEXT).SerializeToString())
    response_frame = len(harness.grpc_frame(pb2.EchoResponse(result=TEXT).SerializeToString()))
    specs = harness.pick_servers(args.servers)

    def check(server: RunningServer) -> None:
        with grpc.insecure_channel(f"{harness.HOST}:{server.port}") as channel:
            reply = pb2_grpc.InferenceServiceStub(channel).PredictEcho(
                pb2.EchoRequest(text=TEXT), timeout=10
            )
        if reply.result != TEXT:
            raise RuntimeError(f"{server.spec.name} echoed {reply.result!r}, not {TEXT!r}")

    def measure(server: RunningServer) -> dict[str, float]:
        cpu_before = server.cpu_seconds()
        result = harness.h2load(
            server.port,
            "PredictEcho",
            payload,
            clients=args.clients,
            streams=args.streams,
            duration=args.duration,
        )
        result.check_unary(response_frame, server.spec.name)
        cpu_us = (server.cpu_seconds() - cpu_before) / result.succeeded * 1e6
        return {
            "rps": result.rps,
            "p50_ms": result.percentile(50),
            "p99_ms": result.percentile(99),
            "cpu_us": cpu_us,
        }

    samples = harness.alternate(specs, args.rounds, measure, check)
    concurrency = args.clients * args.streams
    body = "\n\n".join(
        [
            harness.section_header("Unary echo", specs),
            f"{concurrency} concurrent unary `PredictEcho(text={TEXT!r})` calls: "
            f"`h2load -c {args.clients} -m {args.streams} -t 1 -D {args.duration:g}`, "
            f"{args.rounds} rounds per server in alternation after one "
            "discarded warm-up round. Each response checked with a grpc client before timing, "
            "and every timed response by its byte count. Latency percentiles from h2load's "
            "per-request log (time from request start to end of response, trailers included). "
            "Server CPU: user+system time of the server process (all threads) per call, which "
            "other load on the machine disturbs less than req/s.",
            harness.summary(samples, METRICS, "rps"),
            harness.target_lines(samples, TARGETS),
        ]
    )
    print(body)
    if not args.no_write:
        harness.write_section("unary", body)


if __name__ == "__main__":
    main()
