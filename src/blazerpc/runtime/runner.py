"""One object per model that every protocol calls: direct, batched or streaming.

Protocol adapters (native gRPC, KServe v2, JSON-RPC) only translate their wire format to
keyword arguments and back; how the model runs is decided here, once, at start-up.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from .batcher import Batcher, BatchObserver, BatchSettings
from .executor import Executor
from .registry import ModelEntry

Predict = Callable[[dict[str, Any], "float | None"], Awaitable[Any]]
Stream = Callable[[dict[str, Any]], AsyncGenerator[Any, None]]


class ModelRunner:
    """Runs one model. `predict(kwargs, timeout)` answers a unary call, through the batcher when
    the model batches; `stream(kwargs)` iterates a streaming model's chunks."""

    predict: Predict
    stream: Stream

    def __init__(
        self,
        entry: ModelEntry,
        executor: Executor,
        batching: BatchSettings | None,
        observer: BatchObserver | None = None,
    ) -> None:
        self.entry = entry
        self.batcher: Batcher | None = None
        if entry.streaming:
            self.stream = executor.streamer(entry.func)
        elif batching is not None:
            self.batcher = Batcher(entry, executor.invoker(entry.func), batching, observer)
            self.predict = self.batcher.submit
        else:
            invoke = executor.invoker(entry.func)

            def predict(kwargs: dict[str, Any], timeout: float | None = None) -> Awaitable[Any]:
                return invoke(kwargs)

            self.predict = predict

    def start(self) -> None:
        if self.batcher is not None:
            self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
