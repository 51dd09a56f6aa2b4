"""Runs model functions without ever blocking the event loop.

Coroutine functions and async generators run on the loop; plain functions and plain generators
run in one bounded thread pool, a generator item by item, so a sleeping generator holds a
thread, never the loop.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

Invoke = Callable[[dict[str, Any]], Awaitable[Any]]
Stream = Callable[[dict[str, Any]], AsyncGenerator[Any, None]]

_EXHAUSTED = object()


class Executor:
    """Turns a model function into an awaitable (or async-iterable) call with keyword arguments."""

    def __init__(self, max_threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_threads, thread_name_prefix="blazerpc-model")

    def invoker(self, func: Callable[..., Any]) -> Invoke:
        if inspect.iscoroutinefunction(func):
            return lambda kwargs: func(**kwargs)
        pool = self._pool

        def call(kwargs: dict[str, Any]) -> Any:
            try:
                return func(**kwargs)
            finally:
                # The arguments die here, in the thread: freeing millions of objects (a list
                # of strings) would otherwise hold the event loop up when the call returns.
                kwargs.clear()

        def in_thread(kwargs: dict[str, Any]) -> Awaitable[Any]:
            return asyncio.get_running_loop().run_in_executor(pool, call, kwargs)

        return in_thread

    def streamer(self, func: Callable[..., Any]) -> Stream:
        if inspect.isasyncgenfunction(func):
            return lambda kwargs: func(**kwargs)
        return lambda kwargs: self._iterate_in_thread(func(**kwargs))

    async def _iterate_in_thread(self, gen: Iterator[Any]) -> AsyncGenerator[Any, None]:
        """Pull a sync generator one item per thread hop; on cancel, close it once it yields."""
        step: Future[Any] | None = None
        try:
            while True:
                step = self._pool.submit(next, gen, _EXHAUSTED)
                item = await asyncio.wrap_future(step)
                step = None
                if item is _EXHAUSTED:
                    return
                yield item
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                if step is None:
                    self._pool.submit(close)
                else:  # next() is still running in its thread: close as soon as it returns
                    step.add_done_callback(lambda _: close())

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
