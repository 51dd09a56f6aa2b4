"""--workers: throughput of a CPU-bound pure-Python model with 1 worker process and with 2.

One process runs Python on one core at a time, so only more processes use more cores. Both
servers run `blaze serve benchmarks.apps:app`, one with `--workers 2`; h2load opens several
connections, which the kernel spreads across the workers (SO_REUSEPORT is per connection).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
import harness
from harness import Metric, RunningServer, ServerSpec, Target

N = 20_000  # about 1.5 ms of pure Python per call on this machine
TARGETS = [Target("2 workers", "1 worker", "rps", 1.4)]
METRICS = [
    Metric("rps", "req/s"),
    Metric("p50_ms", "p50 ms", "{:.1f}"),
    Metric("p99_ms", "p99 ms", "{:.1f}"),
]


def server(workers: int) -> ServerSpec:
    blaze = Path(sys.executable).with_name("blaze")
    return ServerSpec(
        name=f"{workers} worker{'s' if workers > 1 else ''}",
        description=f"BlazeRPC: `blaze serve {harness.APP} --workers {workers}`",
        command=lambda port: [
            str(blaze),
            "serve",
            harness.APP,
            "--host",
            harness.HOST,
            "--port",
            str(port),
            "--app-dir",
            str(harness.ROOT),
            "--workers",
            str(workers),
        ],
    )


def expected(n: int) -> int:
    return sum(i * i % 7 for i in range(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per server per round")
    parser.add_argument("--clients", type=int, default=16, help="h2load -c: connections")
    parser.add_argument("--streams", type=int, default=4, help="h2load -m: calls per connection")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()

    pb2, pb2_grpc = harness.load_stubs()
    payload = harness.write_payload("burn", pb2.BurnRequest(n=N).SerializeToString())
    response_frame = len(
        harness.grpc_frame(pb2.BurnResponse(result=expected(N)).SerializeToString())
    )
    specs = [server(1), server(2)]

    def check(server: RunningServer) -> None:
        with grpc.insecure_channel(f"{harness.HOST}:{server.port}") as channel:
            reply = pb2_grpc.InferenceServiceStub(channel).PredictBurn(
                pb2.BurnRequest(n=N), timeout=30, wait_for_ready=True
            )
        if reply.result != expected(N):
            raise RuntimeError(f"{server.spec.name} answered {reply.result}, not {expected(N)}")

    def measure(server: RunningServer) -> dict[str, float]:
        result = harness.h2load(
            server.port,
            "PredictBurn",
            payload,
            clients=args.clients,
            streams=args.streams,
            duration=args.duration,
        )
        result.check_unary(response_frame, server.spec.name)
        return {"rps": result.rps, "p50_ms": result.percentile(50), "p99_ms": result.percentile(99)}

    samples = harness.alternate(specs, args.rounds, measure, check)
    body = "\n\n".join(
        [
            harness.section_header("Worker processes", specs),
            f"A CPU-bound pure-Python model (`burn(n={N})`, a loop of integer arithmetic) under "
            f"`h2load -c {args.clients} -m {args.streams} -t 1 -D {args.duration:g}`, "
            f"{args.rounds} rounds per server in alternation after one discarded warm-up round. "
            "h2load itself needs part of one of the two cores.",
            harness.summary(samples, METRICS, "rps"),
            harness.target_lines(samples, TARGETS),
        ]
    )
    print(body)
    if not args.no_write:
        harness.write_section("workers", body)


if __name__ == "__main__":
    main()
