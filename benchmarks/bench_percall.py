"""Per-call cost of plain `def` models on the default install, beside a hand-written servicer.

BlazeRPC serves ``benchmarks/percall_apps.py`` with ``blaze serve`` as installed: on uvloop,
which a default ``pip install blazerpc`` brings wherever it builds (``blazerpc-asyncio``: on
asyncio's own loop, as where it does not, Windows). The hand-written grpcio servicer
(``handwritten_percall.py``) runs the same numpy functions directly in its ``async def``
methods, on the loop a plain ``pip install grpcio`` has (asyncio's; ``grpcio-uvloop``: the
same on uvloop). PyTriton (Triton's C++ server and dynamic batcher, ``pytriton_server.py``)
serves the tensor model over KServe v2 gRPC. ``grpcio-floor`` answers every call with the
expected reply's bytes and does nothing else (``bare_receive_server.py --reply``, on uvloop):
the most any grpcio server on BlazeRPC's loop can reach here.

Scenarios, each an alternation of its own (servers take turns every few seconds):

- ``echo_64``: ``def echo(text: str) -> str``, 64 calls in flight;
- ``tensor_1``, ``tensor_64``: ``def matmul(x: TensorInput[np.float32, "batch", 4])``, a 4x3
  matmul on one row per request, batching on (app defaults), 1 and 64 calls in flight;
- ``image_16``: one 3x224x224 float32 image per request (588 KiB), per-channel means back,
  16 clients;
- ``blob_16``: one 16 MiB float32 tensor per request, its sum back, 16 clients.

Each table has throughput, p50/p99 latency, the server's CPU time per call and its peak RSS
(VmHWM, reset before every run, summed over the server's processes).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import harness
import numpy as np
from harness import Metric, RunningServer, ServerSpec, Target
from percall_apps import BLOB_SHAPE, WEIGHTS

from blazerpc.protocols.kserve import messages as kserve

APP = "benchmarks.percall_apps:app"
PROTO = "percall.proto"


@dataclass(frozen=True)
class Scenario:
    key: str
    method: str
    clients: int
    streams: int
    duration: float
    servers: tuple[str, ...]
    title: str
    requests: int = 0  # instead of a duration: slow calls would not finish within a short one

    def h2load_args(self, scale: float) -> dict[str, int]:
        if self.requests:
            return {"requests": max(self.clients, round(self.requests * scale))}
        return {"duration": max(1, round(self.duration * scale))}

    def load_flags(self, scale: float) -> str:
        ((key, value),) = self.h2load_args(scale).items()
        return f"-n {value}" if key == "requests" else f"-D {value}"


SCENARIOS = [
    Scenario("echo_64", "PredictEcho", 1, 64, 2, ("blazerpc", "grpcio"), "def echo, 64 calls"),
    Scenario(
        "tensor_1",
        "PredictMatmul",
        1,
        1,
        2,
        ("blazerpc", "grpcio", "pytriton"),
        "def 4x3 matmul, batching on, one client",
    ),
    Scenario(
        "tensor_64",
        "PredictMatmul",
        1,
        64,
        2,
        ("blazerpc", "grpcio", "pytriton"),
        "def 4x3 matmul, batching on, 64 calls",
    ),
    Scenario(
        "image_16",
        "PredictImage",
        16,
        1,
        3,
        ("blazerpc", "grpcio"),
        "def on one 3x224x224 float32 image, 16 clients",
    ),
    Scenario(
        "blob_16",
        "PredictBlob",
        16,
        1,
        0,
        ("blazerpc", "grpcio"),
        "def on one 16 MiB float32 tensor, 16 clients",
        requests=64,
    ),
]
TARGETS = [
    Target("blazerpc", "grpcio", "echo_64_rps", 0.85),
    Target("blazerpc", "grpcio", "tensor_1_rps", 0.8),
    # p99 at one client within 1.25x the hand-written servicer's: its p99 at least 0.8x ours.
    Target("grpcio", "blazerpc", "tensor_1_p99_ms", 0.8),
    Target("blazerpc", "grpcio", "tensor_64_rps", 0.95),
    Target("blazerpc", "pytriton", "tensor_64_rps", 1.3),
    Target("blazerpc", "grpcio", "image_16_rps", 0.9),
    Target("blazerpc", "grpcio", "blob_16_rps", 0.9),
]
METRICS = [
    Metric("rps", "req/s"),
    Metric("p50_ms", "p50 ms", "{:.2f}"),
    Metric("p99_ms", "p99 ms", "{:.2f}"),
    Metric("cpu_us", "server CPU µs/call"),
    Metric("rss_mb", "peak RSS MB"),
]


def blazerpc_server(name: str, loop: str = "", inline: bool = True) -> ServerSpec:
    """`blaze serve` as installed (uvloop), or on `loop` when given."""
    blaze = Path(sys.executable).with_name("blaze")
    how = "" if inline else ", `BENCH_INLINE_US=0`: every `def` call in the thread pool"
    flags = ("--loop", loop) if loop else ()
    serve = f"`blaze serve {APP} --loop {loop}`" if loop else f"`blaze serve {APP}`"
    on = "" if loop else " (uvloop, as the default install has it)"
    return ServerSpec(
        name=name,
        description=f"BlazeRPC (this repo): {serve}{how}{on}",
        command=lambda port: [
            str(blaze),
            *("serve", APP, "--host", harness.HOST, "--port", str(port)),
            *("--app-dir", str(harness.ROOT), *flags),
        ],
        env={} if inline else {"BENCH_INLINE_US": "0"},
    )


def floor_server(replies: dict[str, Path]) -> ServerSpec:
    return ServerSpec(
        name="grpcio-floor",
        description="grpcio's own floor: a grpcio asyncio server on uvloop answering every call "
        "with the expected reply's bytes, read once at start-up: no decoding, no model, no "
        "encoding (benchmarks/bare_receive_server.py --reply --loop uvloop)",
        command=lambda port: [
            sys.executable,
            str(harness.BENCH_DIR / "bare_receive_server.py"),
            *("--host", harness.HOST, "--port", str(port), "--loop", "uvloop"),
            *(f"--reply={method}={path}" for method, path in replies.items()),
        ],
    )


def pytriton_server() -> ServerSpec:
    python = harness.ensure_pytriton_venv()
    script = harness.BENCH_DIR / "pytriton_server.py"
    return ServerSpec(
        name="pytriton",
        description="PyTriton (`nvidia-pytriton` from PyPI, own python3.11 venv): the same "
        "matmul behind Triton's dynamic batcher (max_batch_size=32), KServe v2 gRPC "
        "(benchmarks/pytriton_server.py)",
        command=lambda port: [
            str(python),
            str(script),
            "--host",
            harness.HOST,
            "--port",
            str(port),
        ],
        env={"PYTHONPATH": ""},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--duration-scale", type=float, default=1.0, help="x each run's seconds or calls"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(s.key for s in SCENARIOS),
        help="any of " + ", ".join(s.key for s in SCENARIOS),
    )
    parser.add_argument(
        "--servers",
        default="blazerpc,blazerpc-asyncio,blazerpc-threads,grpcio,grpcio-uvloop,grpcio-floor,pytriton",
        help="any of blazerpc, blazerpc-asyncio, blazerpc-threads, grpcio, grpcio-uvloop, "
        "grpcio-floor, pytriton; the order is the round order",
    )
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()

    pb2, _ = harness.load_stubs(PROTO)
    gen_dir = harness.GEN_DIR
    factories = {
        "blazerpc": lambda: blazerpc_server("blazerpc"),
        "blazerpc-asyncio": lambda: blazerpc_server("blazerpc-asyncio", "asyncio"),
        "blazerpc-threads": lambda: blazerpc_server("blazerpc-threads", inline=False),
        "grpcio": lambda: harness.handwritten_server(
            "handwritten_percall.py",
            ", models called in its `async def` methods, asyncio loop (a plain grpcio install's)",
            gen_dir,
            ("--loop", "asyncio"),
        ),
        "grpcio-uvloop": lambda: harness.handwritten_server(
            "handwritten_percall.py",
            ", models called in its `async def` methods, on uvloop",
            gen_dir,
            ("--loop", "uvloop"),
            name="grpcio-uvloop",
        ),
        "grpcio-floor": lambda: floor_server(replies),
        "pytriton": pytriton_server,
    }
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if unknown := set(names) - factories.keys():
        raise SystemExit(f"unknown servers {sorted(unknown)}; choose from {sorted(factories)}")
    scenarios = [s for s in SCENARIOS if s.key in args.scenarios.split(",")]

    # Requests and the exact replies expected, per scenario (native) and for KServe.
    row = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    rng = np.random.default_rng(0)
    img = rng.random((3, 224, 224), dtype=np.float32)
    big = rng.random(BLOB_SHAPE, dtype=np.float32)

    def tensor(a: np.ndarray) -> object:
        return pb2.TensorProto(shape=a.shape, dtype="float", data=a.tobytes())

    native = {
        "PredictEcho": (pb2.EchoRequest(text="hello"), pb2.EchoResponse(result="hello")),
        "PredictMatmul": (
            pb2.MatmulRequest(x=tensor(row)),
            pb2.MatmulResponse(result=tensor(row @ WEIGHTS)),
        ),
        "PredictImage": (
            pb2.ImageRequest(x=tensor(img)),
            pb2.ImageResponse(result=tensor(img.mean(axis=(1, 2)))),
        ),
        "PredictBlob": (
            pb2.BlobRequest(x=tensor(big)),
            pb2.BlobResponse(result=float(big.sum(dtype=np.float64))),
        ),
    }
    payloads = {
        method: harness.write_payload(f"percall_{method}", req.SerializeToString())
        for method, (req, _) in native.items()
    }
    replies = {method: harness.WORK_DIR / f"percall_reply_{method}.bin" for method in native}
    for method, (_, reply) in native.items():
        replies[method].write_bytes(reply.SerializeToString())
    kserve_request = kserve.ModelInferRequest(
        model_name="matmul",
        inputs=[{"name": "x", "datatype": "FP32", "shape": row.shape}],
        raw_input_contents=[row.tobytes()],
    ).SerializeToString()
    kserve_payload = harness.write_payload("percall_kserve", kserve_request)
    kserve_frame: dict[str, int] = {}

    def check_pytriton(server: RunningServer) -> None:
        """Triton listens before its model is loaded: retry until it answers, then check."""
        deadline = time.monotonic() + 120
        with grpc.insecure_channel(f"{harness.HOST}:{server.port}") as channel:
            call = channel.unary_unary(f"/{kserve.SERVICE_NAME}/ModelInfer")
            while True:
                try:
                    got = call(kserve_request, timeout=10)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
        reply = kserve.ModelInferResponse.FromString(got)
        y = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(1, 3)
        if not np.allclose(y, row @ WEIGHTS):
            raise RuntimeError(f"pytriton answered {reply}")
        kserve_frame["matmul"] = len(harness.grpc_frame(got))

    samples: harness.Samples = {name: {} for name in names}
    specs_used: dict[str, ServerSpec] = {}
    for scenario in scenarios:
        # PyTriton serves only the matmul; BlazeRPC and the grpcio servers, every scenario.
        runs = [n for n in names if n in scenario.servers or n.startswith(("blazerpc", "grpcio"))]
        specs = [factories[n]() for n in runs]
        specs_used |= {s.name: s for s in specs}
        expected = native[scenario.method][1].SerializeToString()

        def check(server: RunningServer, method: str = scenario.method) -> None:
            if server.spec.name == "pytriton":
                check_pytriton(server)
                return
            request, reply = native[method]
            with grpc.insecure_channel(
                f"{harness.HOST}:{server.port}",
                options=[("grpc.max_send_message_length", 64 * 2**20)],
            ) as channel:
                got = channel.unary_unary(f"/blazerpc.InferenceService/{method}")(
                    request.SerializeToString(), timeout=30
                )
            if got != reply.SerializeToString():
                raise RuntimeError(f"{server.spec.name} {method}: unexpected reply {got[:200]!r}")

        def measure(
            server: RunningServer, sc: Scenario = scenario, frame: int = len(expected) + 5
        ) -> dict[str, float]:
            triton = server.spec.name == "pytriton"
            server.reset_peak_rss()
            cpu_before = server.cpu_seconds()
            result = harness.h2load(
                server.port,
                "ModelInfer" if triton else sc.method,
                kserve_payload if triton else payloads[sc.method],
                clients=sc.clients,
                streams=sc.streams,
                **sc.h2load_args(args.duration_scale),
                service=kserve.SERVICE_NAME if triton else "blazerpc.InferenceService",
            )
            cpu_us = (server.cpu_seconds() - cpu_before) / max(1, result.succeeded) * 1e6
            result.check_unary(kserve_frame["matmul"] if triton else frame, server.spec.name)
            return {
                f"{sc.key}_rps": result.rps,
                f"{sc.key}_p50_ms": result.percentile(50),
                f"{sc.key}_p99_ms": result.percentile(99),
                f"{sc.key}_cpu_us": cpu_us,
                f"{sc.key}_rss_mb": server.peak_rss_mb(),
            }

        print(f"scenario {scenario.key}", file=sys.stderr)
        for name, metrics in harness.alternate(specs, args.rounds, measure, check).items():
            samples[name] |= metrics

    parts = [
        harness.section_header(
            "Per-call cost: plain `def` models, default install",
            [specs_used[n] for n in names if n in specs_used],
        ),
        "Each scenario: freshly started servers, one discarded warm-up round each, then "
        f"{args.rounds} rounds with the servers taking turns. Load from h2load (`-t 1`), "
        "`-c` clients with `-m` calls in flight each, as given per scenario. Every server's "
        "answer checked byte for byte (PyTriton: decoded and compared) before timing, every "
        "timed response by its DATA byte count. Server CPU: user+system time of all the "
        "server's processes over the run, per call. Peak RSS: VmHWM reset before each run, "
        "summed over the server's processes (Triton's server, its Python stub and the "
        "script), median of rounds. The machine (2 cores) was shared with other work while "
        "this ran: the per-round figures show the noise, the ratios are the figures to read.",
    ]
    for scenario in scenarios:
        sub = {
            name: {
                key.removeprefix(f"{scenario.key}_"): values
                for key, values in metrics.items()
                if key.startswith(f"{scenario.key}_")
            }
            for name, metrics in samples.items()
            if any(k.startswith(f"{scenario.key}_") for k in metrics)
        }
        parts += [
            f"### {scenario.key}: {scenario.title} (`h2load -c {scenario.clients} "
            f"-m {scenario.streams} {scenario.load_flags(args.duration_scale)}`)",
            harness.summary(sub, METRICS, "rps"),
        ]
    targets = [
        t
        for t in TARGETS
        if t.metric in samples.get(t.subject, {}) and t.metric in samples.get(t.baseline, {})
    ]
    parts += [
        "Targets, as the ratio of medians and as the median of per-round ratios:",
        harness.target_lines(samples, targets),
        harness.paired_lines(samples, targets),
    ]
    body = "\n\n".join(parts)
    print(body)
    if not args.no_write:
        harness.write_section("percall", body)


if __name__ == "__main__":
    main()
