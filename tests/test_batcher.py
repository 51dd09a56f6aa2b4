"""The Batcher on its own: no server, no sockets; a fake model and, where time matters, a
clock the test moves."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from blazerpc.runtime.batcher import Batcher, BatchSettings
from blazerpc.runtime.executor import Executor
from blazerpc.runtime.registry import ModelRegistry


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


async def test_a_cancelled_caller_keeps_its_thread_slot_until_the_model_returns() -> None:
    release, lock = threading.Event(), threading.Lock()
    running = peak = 0

    def model(x: list[int]) -> list[int]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(10)
        with lock:
            running -= 1
        return x

    entry = ModelRegistry().register("m", model, batched=True)
    executor = Executor(4)
    settings = BatchSettings(max_batch_size=1, max_concurrent_batches=1)
    batcher = Batcher(entry, executor.invoker(model), settings)
    batcher.start()
    try:
        first = asyncio.create_task(batcher.submit({"x": 1}))
        await _until(lambda: running == 1)
        first.cancel()  # the idle fast path ran it in this task; its thread runs on
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.create_task(batcher.submit({"x": 2}))
        await asyncio.sleep(0.2)
        assert peak == 1, "a second model call ran while the first still held the only slot"
        assert not second.done()
        release.set()
        assert await asyncio.wait_for(second, 5) == 2
        assert peak == 1
        assert batcher.stats.batches == 2
    finally:
        release.set()
        await batcher.stop()
        executor.shutdown()
