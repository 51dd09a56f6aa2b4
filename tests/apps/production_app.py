"""The app the process tests serve with `blaze serve tests.apps.production_app:app`.

Hooks record that they ran by creating `<hook>-<pid>` files in $BLAZE_TEST_HOOK_DIR, so a test
can see which processes ran which hooks.
"""

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from blazerpc import BlazeApp
from blazerpc.server.middleware import MetricsMiddleware

_metrics_port = os.environ.get("BLAZE_TEST_APP_METRICS_PORT")
app = BlazeApp(
    batch_timeout_ms=5,
    metrics_port=int(_metrics_port) if _metrics_port else None,
    middleware=[MetricsMiddleware()] if os.environ.get("BLAZE_TEST_METRICS_MIDDLEWARE") else [],
)
app.state.batches = 0


def _mark(hook: str) -> None:
    directory = os.environ.get("BLAZE_TEST_HOOK_DIR")
    if directory:
        Path(directory, f"{hook}-{os.getpid()}").touch()


@app.on_startup
def load_weights() -> None:
    _mark("startup-sync")
    if os.environ.get("BLAZE_TEST_STARTUP_FAIL"):
        raise RuntimeError("weights not found")
    time.sleep(float(os.environ.get("BLAZE_TEST_STARTUP_DELAY", "0")))


@app.on_startup
async def open_pool() -> None:
    _mark("startup-async")


@app.on_shutdown
async def close_pool() -> None:
    _mark("shutdown-async")


@app.on_shutdown
def release_weights() -> None:
    _mark("shutdown-sync")


@app.model("pid")
def pid(x: int = 0) -> int:
    return os.getpid()


@app.model("slow")
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


@app.model("slow-sync")
def slow_sync(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


@app.model("count", streaming=True)
async def count(n: int, delay: float) -> AsyncIterator[int]:
    for i in range(n):
        await asyncio.sleep(delay)
        yield i


@app.model("batch-size", batched=True, max_batch_size=64)
async def batch_size(seconds: list[float]) -> list[int]:
    """Sleeps for the batch, then tells each request how many shared its model call."""
    await asyncio.sleep(max(seconds))
    return [len(seconds)] * len(seconds)


@app.model("echo")
async def echo(text: str) -> str:
    return text
