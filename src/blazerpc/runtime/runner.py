"""One object per model that every protocol calls: direct, batched or streaming.

Protocol adapters (native gRPC, KServe v2, JSON-RPC) only translate their wire format to
keyword arguments and back; how the model runs is decided here, once, at start-up.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from grpc import StatusCode

from ..exceptions import RPCError
from .batcher import Batcher, BatchObserver, BatchSettings
from .executor import RUNS_ATTRIBUTE, Executor, Invoke, SyncCalls
from .registry import ModelEntry

Predict = Callable[[dict[str, Any], "float | None"], Awaitable[Any]]
Stream = Callable[[dict[str, Any]], AsyncGenerator[Any, None]]


class ModelRunner:
    """Runs one model. `predict(kwargs, timeout)` answers a unary call, through the batcher when
    the model batches; `stream(kwargs)` iterates a streaming model's chunks.

    A model that does not batch admits at most `max_in_flight` calls at once (running, or
    waiting for a thread): past that, RESOURCE_EXHAUSTED at once rather than a wait that
    ends in DEADLINE_EXCEEDED. A batching model's queue is bounded by its batcher.
    """

    predict: Predict
    stream: Stream

    def __init__(
        self,
        entry: ModelEntry,
        executor: Executor,
        batching: BatchSettings | None,
        observer: BatchObserver | None = None,
        max_in_flight: int = BatchSettings.max_queue_size,
    ) -> None:
        self.entry = entry
        self.batcher: Batcher | None = None
        self.in_flight = 0
        self._max_in_flight = max_in_flight
        self.sync_calls: SyncCalls | None = None
        if entry.streaming:
            self.stream = self._bounded_stream(executor.streamer(entry.func))
            return
        invoke = executor.invoker(entry.func, inline=not entry.client_streaming)
        if isinstance(invoke, SyncCalls):
            self.sync_calls = invoke
        if batching is not None:
            self.batcher = Batcher(entry, invoke, batching, observer)
            self.predict = self.batcher.submit
        else:
            self.predict = self._bounded_predict(invoke)

    def runs_inline(self) -> bool:
        """Whether the model's calls run inline now: a plain `def` measured cheap, called on
        the loop, alone or in a batch, so a call's answer follows the model's start within
        microseconds (a batch of such calls: well under a millisecond)."""
        return self.sync_calls is not None and self.sync_calls.inline

    def _admit(self) -> None:
        if self.in_flight >= self._max_in_flight:
            raise RPCError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"model '{self.entry.name}' is overloaded: {self.in_flight} calls in flight "
                f"(max_queue_size={self._max_in_flight}); retry with backoff",
            )
        self.in_flight += 1

    def _bounded_predict(self, invoke: Invoke) -> Predict:
        sync = self.sync_calls

        async def predict(kwargs: dict[str, Any], timeout: float | None = None) -> Any:
            self._admit()
            try:
                if sync is not None and sync.inline:  # no future to wait for
                    return sync.now(kwargs)
                return await invoke(kwargs)
            finally:
                self.in_flight -= 1

        return predict

    def _bounded_stream(self, stream: Stream) -> Stream:
        return counted(stream, self._admit, self._release)

    def _release(self) -> None:
        self.in_flight -= 1

    @property
    def mode(self) -> str:
        """Where the model's calls run now: 'loop' (async), 'inline' (a plain `def` measured
        cheap, on the loop) or 'threads' (a plain `def` or sync generator in the pool, or an
        async wrapper that runs the model in a thread, as contrib.torch's capped models)."""
        if self.sync_calls is not None:
            return self.sync_calls.mode
        if self.entry.streaming and not inspect.isasyncgenfunction(self.entry.func):
            return "threads"
        if hasattr(self.entry.func, RUNS_ATTRIBUTE):  # awaited on the loop, run in a thread
            return "threads"
        return "loop"

    def start(self) -> None:
        if self.batcher is not None:
            self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()


def counted(stream: Stream, enter: Callable[[], None], leave: Callable[[], None]) -> Stream:
    """`stream` with `enter()` as each call starts and `leave()` once as it ends, fails or is
    closed: how a model's streams are admitted, and counted in flight."""

    def entered(kwargs: dict[str, Any]) -> AsyncGenerator[Any, None]:
        enter()
        try:
            return Counted(stream(kwargs), leave)
        except BaseException:
            leave()
            raise

    return entered


class Counted(AsyncGenerator[Any, None]):
    """A model's chunk generator that calls `release` once when it ends, fails or is closed.
    It hands `athrow` on unchanged, so the model sees the exception thrown at its yield (a
    generator wrapped in another generator would see GeneratorExit instead)."""

    __slots__ = ("_chunks", "_release")

    def __init__(self, chunks: AsyncGenerator[Any, None], release: Callable[[], None]) -> None:
        self._chunks = chunks
        self._release: Callable[[], None] | None = release

    def _done(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None

    async def __anext__(self) -> Any:
        try:
            return await self._chunks.__anext__()
        except BaseException:
            self._done()
            raise

    async def asend(self, value: None) -> Any:
        try:
            return await self._chunks.asend(value)
        except BaseException:
            self._done()
            raise

    async def athrow(self, *args: Any) -> Any:
        try:
            return await self._chunks.athrow(*args)
        except BaseException:
            self._done()
            raise

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            self._done()
