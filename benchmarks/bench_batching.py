"""Adaptive batching: BlazeRPC batched vs unbatched vs the reference release vs hand-written grpcio.

Five scenarios per server and round, each ``--duration`` seconds of h2load:

- ``cheap_1``, ``cheap_64``: a 4x3 matmul on one 4-float row, written ``async def`` (run on
  the event loop, as the hand-written servicer runs it), at one call in flight (a lone
  client) and at 64 concurrent calls;
- ``thread_1``, ``thread_64``: the same matmul as a plain ``def``, which BlazeRPC runs in its
  thread pool (the hand-written servicer: ``asyncio.to_thread``);
- ``device_64``: a "device" model that costs 5 ms per call whatever the batch size and takes
  one lock (as calls do on one GPU), at 64 concurrent calls.

The BlazeRPC-style servers also serve ``stats``, which the models feed: calls and rows since
start-up, read before and after every h2load run, give the mean batch size the model saw.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import harness
import numpy as np
from harness import Metric, RunningServer, ServerSpec, Target

APP = "benchmarks.batching_apps:app"
PROTO = "batching.proto"
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
ROW = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
CONCURRENCY = 64


@dataclass(frozen=True)
class Scenario:
    key: str
    model: str  # also the stats key
    method: str
    concurrent: bool
    title: str


SCENARIOS = [
    Scenario("cheap_1", "matmul", "PredictMatmul", False, "4x3 matmul (async def), one client"),
    Scenario("cheap_64", "matmul", "PredictMatmul", True, "4x3 matmul (async def), 64 calls"),
    Scenario("thread_1", "matmul-sync", "PredictMatmulSync", False, "4x3 matmul (def), one client"),
    Scenario("thread_64", "matmul-sync", "PredictMatmulSync", True, "4x3 matmul (def), 64 calls"),
    Scenario("device_64", "device", "PredictDevice", True, "5 ms device model (def), 64 calls"),
]
TARGETS = [
    Target("batched", "unbatched", "device_64_rps", 10),
    Target("batched", "grpcio", "cheap_64_rps", 0.85),
    Target("batched", "grpcio", "cheap_1_rps", 0.8),
    # The same targets for the model as a plain `def`, each side running it in a thread.
    Target("batched", "grpcio", "thread_64_rps", 0.85),
    Target("batched", "grpcio", "thread_1_rps", 0.8),
]
METRICS = [
    Metric("rps", "req/s"),
    Metric("p50_ms", "p50 ms", "{:.2f}"),
    Metric("p99_ms", "p99 ms", "{:.2f}"),
    Metric("cpu_us", "server CPU µs/call"),
]


def blazerpc_server(batching: bool) -> ServerSpec:
    blaze = Path(sys.executable).with_name("blaze")
    setting = "on" if batching else "off: `BENCH_BATCHING=0` -> `enable_batching=False`"
    return ServerSpec(
        name="batched" if batching else "unbatched",
        description=f"BlazeRPC (this repo): `blaze serve {APP}`, batching {setting}",
        command=lambda port: [
            str(blaze),
            *("serve", APP, "--host", harness.HOST, "--port", str(port)),
            *("--app-dir", str(harness.ROOT)),
        ],
        env={"BENCH_BATCHING": "1" if batching else "0"},
    )


def reference_server() -> ServerSpec:
    blaze = harness.ensure_reference_venv() / "bin" / "blaze"
    return ServerSpec(
        name="reference",
        description=(
            f"reference `blazerpc=={harness.REFERENCE_VERSION}` from PyPI: `blaze serve {APP}` "
            "(its batching on, the default)"
        ),
        command=lambda port: [
            str(blaze),
            "serve",
            APP,
            "--host",
            harness.HOST,
            "--port",
            str(port),
        ],
        env={"PYTHONPATH": ""},  # our src/ must not shadow the reference package
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=int, default=2, help="seconds per h2load run")
    parser.add_argument(
        "--scenarios",
        default=",".join(s.key for s in SCENARIOS),
        help="any of " + ", ".join(s.key for s in SCENARIOS),
    )
    parser.add_argument("--clients", type=int, default=1, help="h2load -c for the 64-call runs")
    parser.add_argument(
        "--servers",
        default="unbatched,batched,grpcio,reference",
        help="any of batched, unbatched, grpcio, reference; the order is the round order",
    )
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()
    if CONCURRENCY % args.clients:
        raise SystemExit(f"--clients must divide {CONCURRENCY}")

    scenarios = [s for s in SCENARIOS if s.key in args.scenarios.split(",")]
    targets = [t for t in TARGETS if any(t.metric == f"{s.key}_rps" for s in scenarios)]
    pb2, pb2_grpc = harness.load_stubs(PROTO)
    gen_dir = harness.GEN_DIR
    factories = {
        "batched": lambda: blazerpc_server(True),
        "unbatched": lambda: blazerpc_server(False),
        "grpcio": lambda: harness.handwritten_server(
            "handwritten_batching.py", ", unbatched", gen_dir
        ),
        "reference": reference_server,
    }
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if unknown := set(names) - factories.keys():
        raise SystemExit(f"unknown servers {sorted(unknown)}; choose from {sorted(factories)}")
    specs = [factories[n]() for n in names]

    tensor = pb2.TensorProto(shape=ROW.shape, dtype="float", data=ROW.tobytes())
    payload = harness.write_payload("batching_row", pb2.MatmulRequest(x=tensor).SerializeToString())
    expected = ROW @ WEIGHTS
    reply = pb2.TensorProto(shape=expected.shape, dtype="float", data=expected.tobytes())
    response_frame = len(harness.grpc_frame(pb2.MatmulResponse(result=reply).SerializeToString()))

    def stub(server: RunningServer) -> tuple[grpc.Channel, Any]:
        channel = grpc.insecure_channel(f"{harness.HOST}:{server.port}")
        return channel, pb2_grpc.InferenceServiceStub(channel)

    def model_counts(server: RunningServer, model: str) -> tuple[int, int] | None:
        """(calls, rows) the model has seen, or None for the hand-written servicer."""
        if server.spec.name == "grpcio":
            return None
        channel, s = stub(server)
        with channel:
            calls, rows = s.PredictStats(pb2.StatsRequest(model=model), timeout=10).result.split()
        return int(calls), int(rows)

    def check(server: RunningServer) -> None:
        channel, s = stub(server)
        with channel:
            for call in (s.PredictMatmul, s.PredictMatmulSync, s.PredictDevice):
                got = call(pb2.MatmulRequest(x=tensor), timeout=10).result
                y = np.frombuffer(got.data, np.float32).reshape(tuple(got.shape))
                if got.dtype != "float" or not np.allclose(y, expected):
                    raise RuntimeError(f"{server.spec.name}: {call} answered {got}")

    def run(server: RunningServer, scenario: Scenario) -> dict[str, float]:
        before = model_counts(server, scenario.model)
        cpu_before = server.cpu_seconds()
        clients, streams = (
            (args.clients, CONCURRENCY // args.clients) if scenario.concurrent else (1, 1)
        )
        result = harness.h2load(
            server.port,
            scenario.method,
            payload,
            clients=clients,
            streams=streams,
            duration=args.duration,
        )
        cpu_us = (server.cpu_seconds() - cpu_before) / result.succeeded * 1e6
        result.check_unary(response_frame, f"{server.spec.name} {scenario.key}")
        out = {
            f"{scenario.key}_rps": result.rps,
            f"{scenario.key}_p50_ms": result.percentile(50),
            f"{scenario.key}_p99_ms": result.percentile(99),
            f"{scenario.key}_cpu_us": cpu_us,
        }
        after = model_counts(server, scenario.model)
        if before is not None and after is not None:
            calls, rows = after[0] - before[0], after[1] - before[1]
            if rows < result.succeeded:
                raise RuntimeError(f"{server.spec.name}: {rows} rows for {result.succeeded} calls")
            out[f"{scenario.key}_batch"] = rows / calls
        return out

    # One alternation per scenario, so that the servers compared take turns every few seconds
    # and a burst of load from elsewhere on the machine hits all of them alike.
    samples: harness.Samples = {spec.name: {} for spec in specs}
    for scenario in scenarios:
        print(f"scenario {scenario.key}", file=sys.stderr)
        measured = harness.alternate(
            specs, args.rounds, lambda server, sc=scenario: run(server, sc), check
        )
        for name, metrics in measured.items():
            samples[name] |= metrics
    parts = [
        harness.section_header("Adaptive batching", specs),
        f"Scenarios, each an h2load run of {args.duration:g} s per server and round, at "
        f"`-c 1 -m 1` (one client: cheap_1, thread_1) or `-c {args.clients} "
        f"-m {CONCURRENCY // args.clients}` (64 concurrent calls: cheap_64, thread_64, "
        "device_64). Every request is one row `[[1, 2, 3, 4]]` of "
        '`TensorInput[np.float32, "batch", 4]` and the model a 4x3 matmul: `async def` '
        "(`PredictMatmul`, on the event loop, as the hand-written servicer runs it), plain "
        "`def` (`PredictMatmulSync`, in BlazeRPC's thread pool; the hand-written servicer uses "
        "`asyncio.to_thread`), or plain `def` plus 5 ms asleep under one lock "
        "(`PredictDevice`, a device that costs the same whatever the batch size). "
        f"{args.rounds} rounds per server and scenario, the servers taking turns (each "
        "scenario on freshly started servers, after one discarded warm-up round each). "
        "Each server's answers checked with a grpc client before timing, every timed response "
        "by its DATA byte count. Mean batch size = rows ÷ calls counted inside the model "
        "(read through the app's `stats` model), so it is what the model itself saw. "
        "Server CPU: user+system time of the server process (all threads) over the h2load "
        "run, per call; it depends less than req/s on what else the machine is doing. "
        "BlazeRPC runs with the app defaults: max_batch_size=32, batch_timeout_ms=10. "
        "What bounds each figure: unbatched, the device model can serve at most 200 calls/s "
        "(5 ms each, one at a time); batched, each 5 ms call serves up to 32 rows, so the "
        "server's CPU per call, not the device, sets the pace. An `async def` model that "
        "never awaits is never busy, so every request finds it idle and runs at once: its "
        "batch size is 1 by design.",
    ]
    for scenario in scenarios:
        sub = {
            name: {
                key.removeprefix(f"{scenario.key}_"): values
                for key, values in metrics.items()
                if key.startswith(f"{scenario.key}_")
            }
            for name, metrics in samples.items()
        }
        batch = ", ".join(
            f"{name} {statistics.median(m['batch']):.1f}" for name, m in sub.items() if "batch" in m
        )
        parts += [
            f"### {scenario.key}: {scenario.title}",
            harness.summary(sub, METRICS, "rps"),
            f"Mean batch size (median of rounds): {batch}.",
        ]
    parts += [
        "Targets, as the ratio of medians and as the median of per-round ratios (each round's "
        "two figures measured seconds apart, so the paired ratio is the steadier one on a "
        "shared machine):",
        harness.target_lines(samples, targets),
        harness.paired_lines(samples, targets),
    ]
    body = "\n\n".join(parts)
    print(body)
    if not args.no_write:
        harness.write_section("batching", body)


if __name__ == "__main__":
    main()
