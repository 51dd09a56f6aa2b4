"""The batching benchmark's models, served unchanged by BlazeRPC and by the reference release.

``BENCH_BATCHING=0`` turns BlazeRPC's batching off (``enable_batching=False``). Each model
counts its calls and rows, and the ``stats`` model reports them, so the benchmark reads the
mean batch size from the model's own point of view, whichever server called it.
"""

import os
import threading
import time

import numpy as np

from blazerpc import BlazeApp, TensorInput, TensorOutput

app = BlazeApp(name="bench-batching", enable_batching=os.environ.get("BENCH_BATCHING") != "0")

WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
DEVICE_SECONDS = 0.005
_device = threading.Lock()
_counts = {"matmul": [0, 0], "matmul-sync": [0, 0], "device": [0, 0]}  # model -> [calls, rows]
_counting = threading.Lock()  # unbatched calls run in several threads at once


def _count(model: str, x: np.ndarray) -> None:
    with _counting:
        counts = _counts[model]
        counts[0] += 1
        counts[1] += len(x)


@app.model("matmul")
async def matmul(x: TensorInput[np.float32, "batch", 4]) -> TensorOutput[np.float32, "batch", 3]:
    # Microseconds of numpy: on the event loop, as the hand-written servicer runs it.
    _count("matmul", x)
    return x @ WEIGHTS


@app.model("matmul-sync")
def matmul_sync(x: TensorInput[np.float32, "batch", 4]) -> TensorOutput[np.float32, "batch", 3]:
    # The same as a plain `def`, which BlazeRPC runs in its thread pool.
    _count("matmul-sync", x)
    return x @ WEIGHTS


@app.model("device")
def device(x: TensorInput[np.float32, "batch", 4]) -> TensorOutput[np.float32, "batch", 3]:
    # One accelerator: calls take turns, and a call costs the same whatever its batch size.
    with _device:
        _count("device", x)
        time.sleep(DEVICE_SECONDS)
        return x @ WEIGHTS


@app.model("stats")
def stats(model: str) -> str:
    """'CALLS ROWS' of `model` since start-up."""
    with _counting:
        calls, rows = _counts[model]
    return f"{calls} {rows}"
