"""Runs model functions without ever letting a slow one block the event loop.

Coroutine functions and async generators run on the loop. Plain generators run in one bounded
thread pool, item by item, so a sleeping generator holds a thread, never the loop.

Plain functions start in the pool too, where each call is timed. Once a model's recent calls
have all been cheaper than the hop to a thread costs (`inline_limit_s` of CPU, and no waiting
beyond what getting the GIL back explains), its calls run inline on the loop; the first
inline call that takes longer (wall time) sends it back to the pool, and it must then prove
itself cheap over twice as many calls before it runs inline again. A model that is always
slow (a network call, a big matmul, a sleep) therefore never touches the loop, and one that
turns slow stalls the loop for that one call; one that is slow now and then, a few times in
its life (the proof doubles each time).
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from time import perf_counter, thread_time
from typing import Any

Invoke = Callable[[dict[str, Any]], Awaitable[Any]]
Stream = Callable[[dict[str, Any]], AsyncIterator[Any]]

_EXHAUSTED = object()

# A thread hop costs tens of microseconds of loop time plus a wake-up; calls cheaper than
# this gain nothing from a thread, and at this size 256 of them (the default stream limit)
# queued on the loop delay anything else by at most ~25 ms.
DEFAULT_INLINE_LIMIT_S = 100e-6
# Fast calls measured in threads before a model first runs inline; doubled at each demotion.
FIRST_PROOF = 32


class SyncCalls:
    """The calls of one plain `def` model: in the pool while it is slow or unproven, inline on
    the loop while its recent calls were all under `limit_s`. `inline` says which."""

    __slots__ = (
        "_clock",
        "_func",
        "_pool",
        "_proof",
        "_streak",
        "_timed",
        "demotions",
        "inline",
        "limit_s",
    )

    def __init__(
        self,
        func: Callable[..., Any],
        pool: ThreadPoolExecutor,
        limit_s: float,
        clock: Callable[[], float] = perf_counter,
        cpu_clock: Callable[[], float] = thread_time,
    ) -> None:
        self._func = func
        self._pool = pool
        self._clock = clock
        self.limit_s = limit_s
        self.inline = False
        self.demotions = 0
        self._proof = FIRST_PROOF
        self._streak = 0

        # In a thread, a call's wall time also holds its wait to get the GIL back from the loop
        # (up to a switch interval each time numpy or I/O lets go of it), which inline it would
        # not pay: there, CPU time must be cheap, and wall time under that wait's bound.
        wall_limit = limit_s + 2 * sys.getswitchinterval()

        def timed(kwargs: dict[str, Any]) -> tuple[Any, bool]:
            start, start_cpu = clock(), cpu_clock()
            result = func(**kwargs)
            cheap = cpu_clock() - start_cpu <= limit_s and clock() - start <= wall_limit
            return result, cheap

        self._timed = timed

    @property
    def mode(self) -> str:
        return "inline" if self.inline else "threads"

    async def __call__(self, kwargs: dict[str, Any]) -> Any:
        if self.inline:
            start = self._clock()
            try:
                return self._func(**kwargs)
            finally:
                if self._clock() - start > self.limit_s:
                    self._demote()
        loop = asyncio.get_running_loop()
        result, cheap = await loop.run_in_executor(self._pool, self._timed, kwargs)
        if not cheap:
            self._streak = 0
        else:
            self._streak += 1
            if self._streak == self._proof:
                self.inline = True
        return result

    def _demote(self) -> None:
        self.inline = False
        self.demotions += 1
        self._streak = 0
        self._proof *= 2


class Executor:
    """Turns a model function into an awaitable (or async-iterable) call with keyword arguments.

    `inline_limit_s=0` keeps every plain `def` call in the pool.
    """

    def __init__(self, max_threads: int, inline_limit_s: float = DEFAULT_INLINE_LIMIT_S) -> None:
        self._pool = ThreadPoolExecutor(max_threads, thread_name_prefix="blazerpc-model")
        self._inline_limit_s = inline_limit_s

    def invoker(self, func: Callable[..., Any]) -> Invoke:
        if inspect.iscoroutinefunction(func):
            return lambda kwargs: func(**kwargs)
        return SyncCalls(func, self._pool, self._inline_limit_s)

    def streamer(self, func: Callable[..., Any]) -> Stream:
        if inspect.isasyncgenfunction(func):
            return lambda kwargs: func(**kwargs)
        return lambda kwargs: self._iterate_in_thread(func(**kwargs))

    async def _iterate_in_thread(self, gen: Iterator[Any]) -> AsyncIterator[Any]:
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
