"""The per-call benchmark's models, written as users write them: plain `def`, no extras.

``matmul`` has a named leading axis, so BlazeRPC batches it (app defaults); ``image`` and
``blob`` have fixed shapes and run call by call, one large tensor each. ``BENCH_INLINE_US=0``
keeps every call in the thread pool (as before plain `def` models could run inline).
"""

import os

import numpy as np

from blazerpc import BlazeApp, TensorInput, TensorOutput

# float64: `blob` answers a double, as percall.proto (the hand-written servicer's) declares.
app = BlazeApp(
    name="bench-percall",
    inline_limit_us=float(os.environ.get("BENCH_INLINE_US", 100)),
    float64=True,
)

WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
BLOB_SHAPE = (4096, 1024)  # 4M float32: 16 MiB


@app.model("echo")
def echo(text: str) -> str:
    return text


@app.model("matmul")
def matmul(x: TensorInput[np.float32, "batch", 4]) -> TensorOutput[np.float32, "batch", 3]:
    return x @ WEIGHTS


@app.model("image")
def image(x: TensorInput[np.float32, 3, 224, 224]) -> TensorOutput[np.float32, 3]:
    """Per-channel means of one 3x224x224 image (about 600 KB in, 12 bytes out)."""
    return x.mean(axis=(1, 2))


@app.model("blob")
def blob(x: TensorInput[np.float32, 4096, 1024]) -> float:
    """The sum of a 16 MiB tensor: the payload dominates, the answer is one double."""
    return float(x.sum(dtype=np.float64))
