"""Where the server's time goes per call: cProfile around a BlazeRPC server under h2load.

The server runs in this process (`app.start`, on uvloop as `blaze serve` runs it) with cProfile
on for the timed calls only; h2load, in its own process, sends ``--requests`` calls to one
model of ``benchmarks/percall_apps.py``. The table lists the functions with the most time of
their own, per call. Neither grpcio's Cython core nor uvloop's C loop shows by name: their
time lands on the Python function or built-in that the loop ran or that entered them.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import time

import harness
import numpy as np
import uvloop
from percall_apps import app

MODELS = {
    "echo": ("PredictEcho", lambda pb2: pb2.EchoRequest(text="hello")),
    "matmul": (
        "PredictMatmul",
        lambda pb2: pb2.MatmulRequest(
            x=pb2.TensorProto(shape=[1, 4], dtype="float", data=np.ones((1, 4), "<f4").tobytes())
        ),
    ),
}


def where(func: tuple[str, int, str]) -> str:
    path, line, name = func
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path}:{line})" if line else name


def profile(model: str, requests: int, streams: int, top: int) -> str:
    pb2, _ = harness.load_stubs("percall.proto")
    method, request = MODELS[model]
    payload = harness.write_payload(f"profile_{model}", request(pb2).SerializeToString())
    profiler = cProfile.Profile()

    async def main() -> tuple[float, str]:
        server = await app.start("127.0.0.1", 0)
        try:
            load = lambda: harness.h2load(  # noqa: E731
                server.port, method, payload, clients=1, streams=streams, requests=requests
            )
            await asyncio.to_thread(load)  # warm-up: the model earns its place on the loop
            profiler.enable()
            start = time.perf_counter()
            result = await asyncio.to_thread(load)
            elapsed = time.perf_counter() - start
            profiler.disable()
            if result.succeeded != requests:
                raise RuntimeError(f"{result.succeeded} of {requests} calls succeeded")
            return elapsed, server.modes()[model]
        finally:
            await server.stop(grace=1)

    elapsed, mode = uvloop.run(main())
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    table = harness.markdown_table(
        ["function", "calls per call", "own µs per call", "share of profiled time"],
        [
            [
                f"`{where(func)}`",
                f"{ncalls / requests:.2f}",
                f"{tottime / requests * 1e6:.1f}",
                f"{tottime / total:.0%}",
            ]
            for func, (_, ncalls, tottime, _, _) in rows
        ],
    )
    ours = sum(row[2] for func, row in stats.stats.items() if "blazerpc/" in func[0])  # type: ignore[attr-defined]
    return (
        f"`{model}` model (plain `def`, running `{mode}` at the end), {requests} calls at "
        f"{streams} in flight "
        f"(`h2load -c 1 -m {streams}`), {elapsed:.2f} s under the profiler "
        f"({requests / elapsed:,.0f} calls/s, cProfile's own overhead included): "
        f"{total / requests * 1e6:.0f} µs of profiled time per call, of which BlazeRPC's own "
        f"functions (handler, codec, runner, batcher, executor) {ours / requests * 1e6:.0f} µs "
        f"({ours / total:.0%}).\n\n{table}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="echo,matmul")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()
    parts = [
        "## Profile of one call (native gRPC path)",
        f"- command: `{harness.command_line()}` (from the repository root)",
        f"- machine: {harness.machine()}; shared with other work while measured",
        __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
    ]
    for model in args.models.split(","):
        parts.append(profile(model, args.requests, args.streams, args.top))
    body = "\n\n".join(parts)
    print(body)
    if not args.no_write:
        harness.write_section("profile", body)


if __name__ == "__main__":
    main()
