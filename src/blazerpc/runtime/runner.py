"""One object per model that every protocol calls: direct, batched or streaming.

Protocol adapters (native gRPC, KServe v2, JSON-RPC) only translate their wire format to
keyword arguments and back; how the model runs is decided here, once, at start-up.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .batcher import Batcher, BatchObserver, BatchSettings
from .executor import Executor, SyncCalls
from .registry import ModelEntry

Predict = Callable[[dict[str, Any], "float | None"], Awaitable[Any]]
Stream = Callable[[dict[str, Any]], AsyncIterator[Any]]


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
        self.sync_calls: SyncCalls | None = None
        if entry.streaming:
            self.stream = executor.streamer(entry.func)
            return
        invoke = executor.invoker(entry.func)
        if isinstance(invoke, SyncCalls):
            self.sync_calls = invoke
        if batching is not None:
            self.batcher = Batcher(entry, invoke, batching, observer)
            self.predict = self.batcher.submit
        else:
            self.predict = lambda kwargs, timeout=None: invoke(kwargs)

    @property
    def mode(self) -> str:
        """Where the model's calls run now: 'loop' (async), 'inline' (a plain `def` measured
        cheap, on the loop) or 'threads' (a plain `def` or sync generator, in the pool)."""
        if self.sync_calls is not None:
            return self.sync_calls.mode
        if self.entry.streaming and not inspect.isasyncgenfunction(self.entry.func):
            return "threads"
        return "loop"

    def start(self) -> None:
        if self.batcher is not None:
            self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
