"""KServe v2 gRPC next to the native service: the same model, the same server, two protocols.

The model is the batching benchmark's ``matmul`` (``TensorInput[np.float32, "batch", 4]`` ->
4x3 matmul). Each request is one row: natively a ``MatmulRequest``, over KServe a
``ModelInferRequest`` with the row in ``raw_input_contents``, as tritonclient sends it. Two
processes of the same server (`blaze serve benchmarks.batching_apps:app`) take turns, one
loaded through each protocol, 64 calls in flight, in alternating rounds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
import harness
from bench_batching import APP, PROTO, ROW, WEIGHTS
from harness import Metric, RunningServer, ServerSpec, Target

from blazerpc.protocols.kserve import messages as kserve

CONCURRENCY = 64
TARGETS = [Target("kserve", "native", "rps", 0.85)]
METRICS = [
    Metric("rps", "req/s"),
    Metric("p50_ms", "p50 ms", "{:.2f}"),
    Metric("p99_ms", "p99 ms", "{:.2f}"),
    Metric("cpu_us", "server CPU µs/call", "{:.0f}"),
    Metric("batch", "mean batch", "{:.1f}"),
]


def server(name: str, protocol: str) -> ServerSpec:
    blaze = Path(sys.executable).with_name("blaze")
    return ServerSpec(
        name=name,
        description=f"BlazeRPC (this repo): `blaze serve {APP}`, loaded over {protocol}",
        command=lambda port: [
            str(blaze),
            *("serve", APP, "--host", harness.HOST, "--port", str(port)),
            *("--app-dir", str(harness.ROOT)),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per server per round")
    parser.add_argument("--clients", type=int, default=1, help="h2load -c (connections)")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()
    if CONCURRENCY % args.clients:
        raise SystemExit(f"--clients must divide {CONCURRENCY}")
    streams = CONCURRENCY // args.clients

    pb2, pb2_grpc = harness.load_stubs(PROTO)
    expected = ROW @ WEIGHTS
    native_request = pb2.MatmulRequest(
        x=pb2.TensorProto(shape=ROW.shape, dtype="float", data=ROW.tobytes())
    ).SerializeToString()
    native_reply = pb2.MatmulResponse(
        result=pb2.TensorProto(shape=expected.shape, dtype="float", data=expected.tobytes())
    ).SerializeToString()
    kserve_request = kserve.ModelInferRequest(
        model_name="matmul",
        inputs=[{"name": "x", "datatype": "FP32", "shape": ROW.shape}],
        raw_input_contents=[ROW.tobytes()],
    ).SerializeToString()
    kserve_reply = kserve.ModelInferResponse(
        model_name="matmul",
        model_version="1",
        outputs=[{"name": "result", "datatype": "FP32", "shape": expected.shape}],
        raw_output_contents=[expected.tobytes()],
    ).SerializeToString()
    paths: dict[str, tuple[str, str, bytes, bytes]] = {
        "native": ("blazerpc.InferenceService", "PredictMatmul", native_request, native_reply),
        "kserve": (kserve.SERVICE_NAME, "ModelInfer", kserve_request, kserve_reply),
    }
    payloads = {name: harness.write_payload(f"kserve_{name}", p[2]) for name, p in paths.items()}
    specs = [server("native", "the native service"), server("kserve", "KServe v2 gRPC")]

    def model_counts(port: int) -> tuple[int, int]:
        with grpc.insecure_channel(f"{harness.HOST}:{port}") as channel:
            stub = pb2_grpc.InferenceServiceStub(channel)
            reply = stub.PredictStats(pb2.StatsRequest(model="matmul"), timeout=10)
        calls, rows = reply.result.split()
        return int(calls), int(rows)

    def check(running: RunningServer) -> None:
        service, method, request, reply = paths[running.spec.name]
        with grpc.insecure_channel(f"{harness.HOST}:{running.port}") as channel:
            got = channel.unary_unary(f"/{service}/{method}")(request, timeout=10)
        if got != reply:
            raise RuntimeError(f"{running.spec.name} answered {got!r}, expected {reply!r}")

    def measure(running: RunningServer) -> dict[str, float]:
        service, method, _, reply = paths[running.spec.name]
        frame = len(harness.grpc_frame(reply))
        before, cpu = model_counts(running.port), running.cpu_seconds()
        result = harness.h2load(
            running.port,
            method,
            payloads[running.spec.name],
            clients=args.clients,
            streams=streams,
            duration=args.duration,
            service=service,
        )
        cpu = running.cpu_seconds() - cpu
        after = model_counts(running.port)
        result.check_unary(frame, running.spec.name)
        calls, rows = after[0] - before[0], after[1] - before[1]
        return {
            "rps": result.rps,
            "p50_ms": result.percentile(50),
            "p99_ms": result.percentile(99),
            "cpu_us": 1e6 * cpu / max(1, result.started),
            "batch": rows / max(1, calls),
        }

    samples = harness.alternate(specs, args.rounds, measure, check)
    body = "\n\n".join(
        [
            harness.section_header("KServe v2 gRPC next to the native service", specs),
            f"{CONCURRENCY} concurrent unary calls of the `matmul` model (one row "
            '`[[1, 2, 3, 4]]` of `TensorInput[np.float32, "batch", 4]`, a 4x3 matmul): '
            "natively `PredictMatmul`, over KServe `inference.GRPCInferenceService/ModelInfer` "
            "with the row in `raw_input_contents`. "
            f"`h2load -c {args.clients} -m {streams} -t 1 -D {args.duration:g}`, "
            f"{args.rounds} rounds per server in alternation after one discarded warm-up "
            "round. Each path's answer compared byte for byte with the expected response "
            "before timing, every timed response checked by its DATA byte count. Mean batch = "
            "rows ÷ calls counted inside the model (through the app's `stats` model). "
            "Server CPU: user+system time of the server process per call.",
            harness.summary(samples, METRICS, "rps"),
            harness.target_lines(samples, TARGETS),
        ]
    )
    print(body)
    if not args.no_write:
        harness.write_section("kserve", body)


if __name__ == "__main__":
    main()
