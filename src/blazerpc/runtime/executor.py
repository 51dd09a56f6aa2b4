"""Runs model functions without ever letting a slow one block the event loop.

Coroutine functions and async generators run on the loop. Plain generators run in one bounded
thread pool, item by item, so a sleeping generator holds a thread, never the loop.

Plain functions start in the pool too, where each call is timed. Once a model's recent calls
have all been cheaper than the hop to a thread costs (`inline_limit_s` of CPU, and no waiting
beyond what getting the GIL back explains), its calls run inline on the loop. An inline call
that holds the loop longer sends the model back to the pool (a rare short stall excepted),
and it must then prove itself cheap over twice as many calls (up to MAX_PROOF) before it runs
inline again. So a model that is always slow (a network call, a big matmul, a sleep) never
touches the loop; one that turns slow stalls the loop once, or up to STALLS_FORGIVEN + 1
times if each stall is short enough to pass for noise; one that is slow now and then, a few
times in its life.
A call that only looked slow because the OS gave the core to another process meanwhile (it
was preempted, and never slept or waited on its own) is not held against the model: on a busy
machine that would otherwise send every cheap model back to threads. Nor is a cheap call whose
time a virtual machine's host took unseen, or the time the garbage collector ran during the
call: a collection runs inside whichever call allocates when one is due, and on a busy server
a young-generation collection (100-300 µs) lands in a cheap model's call every few dozen calls.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import math
import sys
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from time import perf_counter, thread_time
from typing import Any

Invoke = Callable[[dict[str, Any]], Awaitable[Any]]
# Lists longer than this are freed a slice at a time (see `drop_gradually`).
_LONG_LIST = 65536
Stream = Callable[[dict[str, Any]], AsyncGenerator[Any, None]]

_EXHAUSTED = object()

# A thread hop costs tens of microseconds of loop time plus a wake-up; calls cheaper than
# this gain nothing from a thread, and at this size 256 of them (the default stream limit)
# queued on the loop delay anything else by at most ~25 ms.
DEFAULT_INLINE_LIMIT_S = 100e-6
# An inline call may stall the loop up to two switch intervals now and then without counting
# as slow: one such stall is forgiven on going inline, and one more for every this many
# inline calls, saved up to STALLS_FORGIVEN at once. Under load on a 2-core VM, about one
# call in 400 of a 2 µs model ran over 100 µs with no context switch and no collection.
RARE_STALL_CALLS = 100
STALLS_FORGIVEN = 4
# How much more CPU than the limit a preempted inline call may show before it counts as slow.
PREEMPTED_MARGIN = 4
# A brief stall (within PREEMPTED_MARGIN times the limit) holds the loop no longer than a few
# thread hops would: one more is forgiven for every this many inline calls. Under a benchmark
# beside other servers on a 2-core VM, a 2 µs matmul's CPU time ran over 100 µs (up to 340)
# about once in 100 calls, in bursts, which the rarer rate took for a model turned slow.
BRIEF_STALL_CALLS = 10
Usage = Callable[[], tuple[float, int, int]]


if sys.platform == "linux":
    from resource import RUSAGE_THREAD, getrusage

    def thread_usage() -> tuple[float, int, int]:
        """CPU seconds of this thread, how often the OS preempted it (involuntary context
        switches) and how often it gave up the core itself (voluntary: a sleep, I/O, a lock,
        the GIL). CPU time from the thread clock: getrusage's is only updated at ticks."""
        usage = getrusage(RUSAGE_THREAD)
        return thread_time(), usage.ru_nivcsw, usage.ru_nvcsw

    SWITCHES_COUNTED = True

else:
    SWITCHES_COUNTED = False

    def thread_usage() -> tuple[float, int, int]:
        """CPU seconds of this thread; elsewhere than Linux, no count of preemptions."""
        return thread_time(), 0, 0


# Seconds the garbage collector has run in this process (while `collector_seconds` is hooked
# in), and when the collection running now started.
_collections = [0.0, 0.0]


def _time_collection(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _collections[1] = perf_counter()
    else:
        _collections[0] += perf_counter() - _collections[1]


def collector_seconds() -> float:
    """Seconds the garbage collector has run since the first Executor was made."""
    return _collections[0]


def preempted_only(before: tuple[float, int, int], after: tuple[float, int, int]) -> bool:
    """Whether the OS preempted the thread in between and the thread never waited itself."""
    return after[1] != before[1] and after[2] == before[2]


# Fast calls measured in threads before a model first runs inline; doubled at each demotion,
# up to MAX_PROOF, so that noise over a long life never keeps a cheap model off the loop.
FIRST_PROOF = 32
MAX_PROOF = 1024


def drop_gradually(items: list[Any]) -> None:
    """Empty a long list a slice at a time. Freeing millions of objects is one C call that
    holds the GIL throughout, even in a thread; between slices, the event loop gets it."""
    if len(items) > _LONG_LIST:
        while items:
            del items[-_LONG_LIST:]


class SyncCalls:
    """The calls of one plain `def` model: in the pool while it is slow or unproven, inline on
    the loop while its recent calls were all under `limit_s`. `inline` says which."""

    __slots__ = (
        "_clock",
        "_collected",
        "_func",
        "_inline_calls",
        "_pool",
        "_proof",
        "_short_stall_s",
        "_stall_credit",
        "_streak",
        "_timed",
        "_usage",
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
        usage: Usage = thread_usage,
        collected: Callable[[], float] = collector_seconds,
    ) -> None:
        self._func = func
        self._pool = pool
        self._clock = clock
        self._usage = usage
        self._collected = collected
        self.limit_s = limit_s
        self.inline = False
        self.demotions = 0
        self._proof: float = FIRST_PROOF if limit_s > 0 else math.inf  # 0: never inline
        self._streak = 0
        self._inline_calls = 0
        self._stall_credit = 0.0

        # In a thread, a call's wall time also holds its wait to get the GIL back from the loop
        # (up to a switch interval each time numpy or I/O lets go of it), which inline it would
        # not pay: there, CPU time must be cheap, and wall time under that wait's bound.
        wall_limit = self._short_stall_s = limit_s + 2 * sys.getswitchinterval()

        def timed(kwargs: dict[str, Any], verdict: list[bool | None]) -> Any:
            """The result; `verdict` says whether the call was cheap (None: it was preempted,
            or failed, so it cannot tell)."""
            before = usage()
            start = clock()
            collected_before = collected()
            try:
                result = func(**kwargs)
            finally:
                # The arguments die here, in the thread: freeing millions of objects (a list
                # of strings) would otherwise hold the event loop up when the call returns.
                for value in kwargs.values():
                    # Only a list nothing else holds (the model did not keep or return it):
                    # the dict, this loop, and getrefcount's own argument.
                    if type(value) is list and sys.getrefcount(value) <= 3:
                        drop_gradually(value)
                kwargs.clear()
            wall = clock() - start - (collected() - collected_before)
            if wall <= wall_limit:  # cheap unless its own CPU time says otherwise
                verdict[0] = wall <= limit_s or usage()[0] - before[0] <= limit_s
            else:
                after = usage()
                preempted = after[0] - before[0] <= limit_s and preempted_only(before, after)
                verdict[0] = None if preempted else False
            return result

        self._timed = timed

    @property
    def mode(self) -> str:
        return "inline" if self.inline else "threads"

    def __call__(self, kwargs: dict[str, Any]) -> Awaitable[Any]:
        """The call's result, as a future. In a thread it is the executor's own future, so a
        caller that is cancelled can still tell (and wait for) the thread it cannot stop."""
        loop = asyncio.get_running_loop()
        if self.inline:
            done = loop.create_future()
            try:
                done.set_result(self.now(kwargs))
            except Exception as exc:
                done.set_exception(exc)
            return done
        verdict: list[bool | None] = [None]
        # In the caller's context, as inline: what middleware set (a trace, a request id) holds.
        run = contextvars.copy_context().run
        call = loop.run_in_executor(self._pool, run, self._timed, kwargs, verdict)
        call.add_done_callback(lambda _: self._judged(verdict[0]))
        return call

    def now(self, kwargs: dict[str, Any]) -> Any:
        """The result of a call run here, on the loop, while `inline`: its caller need not
        wait for a future."""
        self._inline_calls += 1
        before = self._usage()
        start = self._clock()
        collected = self._collected()
        try:
            return self._func(**kwargs)
        finally:
            wall = self._clock() - start
            if wall > self.limit_s:
                collecting = self._collected() - collected
                own = wall - collecting
                if own > self.limit_s and self._held_the_loop(own, before, collecting):
                    self._demote()

    def _judged(self, cheap: bool | None) -> None:
        """On the loop, once a call in a thread has returned: count it toward going inline."""
        if cheap:
            self._streak += 1
            if self._streak == self._proof:
                self.inline = True
                self._stall_credit = 1.0  # proven cheap: one stall is noise, two a pattern
        elif cheap is not None:
            self._streak = 0

    def _held_the_loop(
        self, wall: float, before: tuple[float, int, int], collecting: float
    ) -> bool:
        """Whether an inline call that took too long (`wall`, less the `collecting` time of
        the garbage collector) did so itself, rather than because the OS gave the core away
        (preempted: its CPU time then also holds refilling the caches, hence the margin) or,
        now and then, because it let go of the GIL (numpy does) and another thread held it
        for a while (one switch interval, give or take), or the machine interrupted it. Such
        short stalls are forgiven while they stay rare (RARE_STALL_CALLS, BRIEF_STALL_CALLS,
        STALLS_FORGIVEN)."""
        after = self._usage()
        cpu = after[0] - before[0] - collecting
        if preempted_only(before, after) and cpu <= PREEMPTED_MARGIN * self.limit_s:
            return False
        if SWITCHES_COUNTED and after[2] == before[2] and cpu <= self.limit_s:
            # Cheap, and it never waited: the time was taken from the thread, not spent by
            # it (a virtual machine's host runs something else on its core, unseen as a
            # context switch).
            return False
        if wall <= self._short_stall_s:
            every = (
                BRIEF_STALL_CALLS if wall <= PREEMPTED_MARGIN * self.limit_s else RARE_STALL_CALLS
            )
            earned = self._stall_credit + self._inline_calls / every
            self._stall_credit = min(STALLS_FORGIVEN, earned)
            self._inline_calls = 0
            if self._stall_credit >= 1:  # forgiven; more, sooner, are a pattern
                self._stall_credit -= 1
                return False
        return True

    def _demote(self) -> None:
        self.inline = False
        self._inline_calls = 0
        self.demotions += 1
        self._streak = 0
        self._proof = min(2 * self._proof, MAX_PROOF)


# A model function may carry this attribute: where its calls really run, in words, when that
# is not what its kind says (contrib.torch's capped models: async def, forward in a thread).
RUNS_ATTRIBUTE = "__blazerpc_runs__"


def _next_item(gen: Iterator[Any]) -> Any:
    return next(gen, _EXHAUSTED)


class Executor:
    """Turns a model function into an awaitable (or async-iterable) call with keyword arguments.

    `inline_limit_s=0` keeps every plain `def` call in the pool.
    """

    def __init__(self, max_threads: int, inline_limit_s: float = DEFAULT_INLINE_LIMIT_S) -> None:
        if _time_collection not in gc.callbacks:
            gc.callbacks.append(_time_collection)
        self._pool = ThreadPoolExecutor(max_threads, thread_name_prefix="blazerpc-model")
        self._inline_limit_s = inline_limit_s

    def invoker(self, func: Callable[..., Any], *, inline: bool = True) -> Invoke:
        """`inline=False` keeps a plain `def` in the pool however cheap it is: a model that
        reads a stream of requests waits on the loop for each item, so on the loop it would
        wait forever."""
        if inspect.iscoroutinefunction(func):
            return lambda kwargs: func(**kwargs)
        return SyncCalls(func, self._pool, self._inline_limit_s if inline else 0)

    def streamer(self, func: Callable[..., Any]) -> Stream:
        if inspect.isasyncgenfunction(func):
            return lambda kwargs: func(**kwargs)
        return lambda kwargs: self._iterate_in_thread(func(**kwargs))

    async def _iterate_in_thread(self, gen: Iterator[Any]) -> AsyncGenerator[Any, None]:
        """Pull a sync generator one item per thread hop; on cancel, close it once it yields."""
        step: Future[Any] | None = None
        run = contextvars.copy_context().run  # the caller's context, for every step
        try:
            while True:
                step = self._pool.submit(run, _next_item, gen)
                item = await asyncio.wrap_future(step)
                step = None
                if item is _EXHAUSTED:
                    return
                yield item
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                if step is None:
                    # A thread of its own: queued in the pool, the close would be cancelled
                    # by a shutdown that starts meanwhile, and the generator's finally skipped.
                    threading.Thread(target=close, name="blazerpc-close", daemon=True).start()
                else:  # next() is still running in its thread: close as soon as it returns
                    step.add_done_callback(lambda _: close())

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
