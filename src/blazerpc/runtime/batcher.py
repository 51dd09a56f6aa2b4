"""Adaptive batching: many concurrent requests, one model call, each caller gets its own rows.

Dispatch is demand-driven. A request that finds the model idle runs at once, in the caller's
own task. While the model is busy, requests queue. A plain `def` model that runs inline is
never busy when a request arrives, since each call ends before the loop reads the next, so
under load its calls would never meet: every PROBE_EVERY-th request that finds it idle queues
instead, and any calls that arrive with it share its batch. Its batches take no time either,
so no one queues while they run: a batch (the probe's, or once a batch's expected callers are
back) keeps gathering while the loop's turns are busy reading other calls and requests keep
arriving, and stops at the first idle turn. Under load, batches so grow to dozens, and each
call's share of the server's own work shrinks (the responses of a batch go out together).

When a batch finishes, its callers are about to send again, so the batcher expects them
back: the next batch waits (at most `batch_timeout_ms`, or a fifth of the finished batch's
model time if longer) for what is queued plus the batch that just ended, and a request
arriving meanwhile joins it rather than running alone. Under a steady load of N callers,
batches so grow to N within two batches instead of freezing at whatever size came first.

When more requests wait than one batch holds and the model declares a `batch_key` (a length,
such as a token count), the batch is the oldest request plus those of the nearest keys, so
a batch padded to its longest member pads little. With `max_batch_tokens` as well, batches
are taken oldest first, and one whose padded size (rows x longest key) is over that budget
runs as consecutive model calls over it sorted by key, each within the budget, in the same
slot; each caller is answered when its own call ends. The queue is bounded, and requests
whose caller gave up are dropped before they reach the model.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from grpc import StatusCode

from ..exceptions import InferenceError, RPCError, ValidationError
from ..types import Tensor
from .executor import Invoke, SyncCalls
from .registry import ModelEntry

# How long the next batch waits for the callers of one that just ended, as a share of that
# batch's time in the model, when that is longer than batch_timeout_ms.
PATIENCE = 0.2
# An inline model's requests that find it idle: one in this many queues, to see whether
# others arrive with it (at one client, a dispatcher hop for one call in this many).
PROBE_EVERY = 16
# An inline batch gathers while turns of the loop are busy with other calls' work (callers
# are on their way in) and stops at an idle one. On a 2-core VM an idle turn took 3-15 µs,
# one under a load of 64 calls in flight mostly 40-80 µs, on asyncio's loop and uvloop alike.
BUSY_TURN_S = 20e-6
# Busy turns an inline batch waits through without an arrival before it runs.
GATHER_TURNS = 8


@dataclass(frozen=True)
class BatchSettings:
    """How one model batches; app-wide defaults, overridable per model."""

    max_batch_size: int = 32
    batch_timeout_ms: float = 10.0
    max_queue_size: int = 1024
    max_concurrent_batches: int = 1
    # With a batch_key: the most padded key units (rows x longest key) one model call computes.
    # Per model only, never app-wide: its unit is that model's key.
    max_batch_tokens: int | None = None


@dataclass
class BatchStats:
    """What the batcher did, for tuning and metrics; all counters since start-up. `batches`
    and `batch_sizes` count model calls: a batch over `max_batch_tokens` counts once per call
    it ran as."""

    requests: int = 0
    batches: int = 0
    rejected: int = 0
    dropped: int = 0
    queue_depth: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)
    queue_seconds: float = 0.0
    model_seconds: float = 0.0
    # With a batch_key: the keys (e.g. tokens) the batches needed, and what they computed if
    # each batch is padded to its longest member.
    keys_needed: float = 0
    keys_computed: float = 0

    @property
    def padding_waste(self) -> float:
        """The share of computed tokens (batch_key units) that were padding; 0 without a key."""
        return 1 - self.keys_needed / self.keys_computed if self.keys_computed else 0.0

    @property
    def mean_batch_size(self) -> float:
        return self.requests_batched / self.batches if self.batches else 0.0

    @property
    def requests_batched(self) -> int:
        return sum(size * n for size, n in self.batch_sizes.items())

    @property
    def mean_queue_ms(self) -> float:
        served = self.requests_batched
        return 1000 * self.queue_seconds / served if served else 0.0

    @property
    def mean_model_ms(self) -> float:
        return 1000 * self.model_seconds / self.batches if self.batches else 0.0


class _Pending:
    """One request inside the batcher: its arguments, rows, shape key and batch_key value."""

    __slots__ = ("enqueued", "key", "kwargs", "length", "rows")

    def __init__(
        self, kwargs: dict[str, Any], rows: int, key: Any, length: float, enqueued: float
    ) -> None:
        self.kwargs, self.rows, self.key, self.length = kwargs, rows, key, length
        self.enqueued = enqueued


@dataclass(slots=True)
class _Taken:
    """A batch the dispatcher took, while it runs as several model calls in one slot."""

    size: int
    start: float
    last: bool = False  # the call running now is its last: the slot goes back after it
    early: int = 0  # callers answered by the calls before the last
    answered: float = math.inf  # when the first call ended


class _Queued(_Pending):
    """A request that waits in the queue, for its future's result, until its deadline."""

    __slots__ = ("deadline", "future")

    def __init__(
        self,
        kwargs: dict[str, Any],
        rows: int,
        key: Any,
        length: float,
        enqueued: float,
        deadline: float | None,
        future: asyncio.Future[Any],
    ) -> None:
        super().__init__(kwargs, rows, key, length, enqueued)
        self.deadline = deadline
        self.future = future


def key_function(entry: ModelEntry) -> Callable[[dict[str, Any]], float] | None:
    """One request's batch_key value from its keyword arguments, or None without a key."""
    batch_key = entry.batch_key
    if batch_key is None:
        return None
    names = entry.batch_key_params
    where = f"model '{entry.name}': batch_key"

    def length(kwargs: dict[str, Any]) -> float:
        value = batch_key(**{n: kwargs[n] for n in names})
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise InferenceError(f"{where} returned {type(value).__name__}; expected a number")
        return float(value)

    return length


class TensorStacking:
    """Concatenate every tensor input along axis 0; split the output by each request's rows."""

    def __init__(self, entry: ModelEntry) -> None:
        self.name = entry.name
        self.inputs = [f.name for f in entry.signature.params]
        self.axis = {
            f.name: f.type.dims[0]
            for f in entry.signature.params
            if isinstance(f.type, Tensor) and f.type.dims
        }

    def prepare(self, kwargs: dict[str, Any]) -> tuple[int, Any]:
        """Rows in this request, and the key of requests it may share a batch with."""
        if len(self.inputs) == 1:
            shape = kwargs[self.inputs[0]].shape
            return shape[0], shape[1:]
        arrays = [kwargs[name] for name in self.inputs]
        rows = arrays[0].shape[0]
        for name, arr in zip(self.inputs, arrays, strict=True):
            if arr.shape[0] != rows:
                raise ValidationError(
                    f"field '{name}': has {arr.shape[0]} rows along '{self.axis[name]}', "
                    f"but '{self.inputs[0]}' has {rows}; batched inputs must agree",
                    field=name,
                )
        return rows, tuple(arr.shape[1:] for arr in arrays)

    def merge(self, batch: Sequence[_Pending]) -> dict[str, Any]:
        if len(batch) == 1:
            return batch[0].kwargs
        return {n: _read_only(np.concatenate([p.kwargs[n] for p in batch])) for n in self.inputs}

    def split(self, result: Any, batch: Sequence[_Pending]) -> list[Any]:
        result = np.asarray(result)
        rows = batch[0].rows if len(batch) == 1 else sum(p.rows for p in batch)
        if result.ndim == 0 or result.shape[0] != rows:
            got = "a scalar" if result.ndim == 0 else f"{result.shape[0]} rows"
            raise InferenceError(
                f"model '{self.name}' returned {got} for a batch of {rows} rows; "
                "a batched tensor model must return one output row per input row"
            )
        if len(batch) == 1:
            return [result]
        out, start = [], 0
        for p in batch:
            out.append(result[start : start + p.rows])
            start += p.rows
        return out


def _read_only(array: np.ndarray) -> np.ndarray:
    """A model sees read-only inputs whether its request ran alone (a view of the message's
    bytes) or merged into a batch, so an in-place edit fails the same way under any load."""
    array.flags.writeable = False
    return array


class ListBatching:
    """batched=True models: one list per parameter in, one list of results out."""

    def __init__(self, entry: ModelEntry) -> None:
        self.name = entry.name
        self.inputs = [f.name for f in entry.signature.params]

    def prepare(self, kwargs: dict[str, Any]) -> tuple[int, Any]:
        return 1, None

    def merge(self, batch: Sequence[_Pending]) -> dict[str, Any]:
        return {n: [p.kwargs[n] for p in batch] for n in self.inputs}

    def split(self, result: Any, batch: Sequence[_Pending]) -> list[Any]:
        # An array's rows are its results: `return model.encode(texts)` works as written.
        rows = isinstance(result, np.ndarray) and result.ndim > 0
        if not (rows or isinstance(result, (list, tuple))) or len(result) != len(batch):
            got = (
                f"{len(result)} results"
                if isinstance(result, (list, tuple)) or rows
                else (f"a {type(result).__name__}")
            )
            raise InferenceError(
                f"model '{self.name}' returned {got} for a batch of {len(batch)} requests; "
                "a batched=True model must return a list (or an array) with one result per "
                "request"
            )
        return list(result)


class BatchObserver(Protocol):
    """Receives what a batcher does, e.g. to export it as metrics."""

    def queued(self, depth: int) -> None: ...

    def batch(self, size: int, waits: list[float], seconds: float) -> None: ...


class Batcher:
    """The queue and dispatcher of one model. `clock` (seconds) stamps arrivals, deadlines and
    batch times; tests pass one they move by hand."""

    def __init__(
        self,
        entry: ModelEntry,
        invoke: Invoke,
        settings: BatchSettings,
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.name = entry.name
        self._clock = clock
        self.observer = observer
        self.plan = TensorStacking(entry) if entry.stacks_tensors else ListBatching(entry)
        self.settings = settings
        self.stats = BatchStats()
        self._invoke = invoke
        # A plain `def` model: while it runs inline, an idle batcher calls it straight away.
        self._sync = invoke if isinstance(invoke, SyncCalls) else None
        self._length = key_function(entry)
        self._queue: deque[_Queued] = deque()
        self._running = 0
        # Set when a batch finishes: how many requests the next batch expects, and until when
        # it waits for them. While expecting, arrivals join the queue instead of running alone.
        self._want = 0
        self._expect_until = 0.0
        self._timeout = settings.batch_timeout_ms / 1000
        self._wakeup = asyncio.Event()
        # How many queued requests wake the dispatcher: one while it waits for any, the batch
        # it expects while it collects one (so it does not wake at every arrival).
        self._wake_at = 1
        self._until_probe = PROBE_EVERY
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch_forever())

    async def stop(self) -> None:
        for task in (self._dispatcher, *self._tasks):
            if task is not None:
                task.cancel()
        for p in self._queue:
            p.future.cancel()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def _expecting(self, now: float) -> bool:
        """Whether callers of a batch that just finished are still expected back."""
        return self._want > 1 and now < self._expect_until

    def _idle(self, now: float) -> bool:
        """Whether a request arriving now runs at once, alone, in its caller's task."""
        return (
            not self._queue
            and self._running < self.settings.max_concurrent_batches
            and not self._expecting(now)
        )

    async def submit(self, kwargs: dict[str, Any], timeout: float | None = None) -> Any:
        """The model's result for one request, computed in some batch."""
        rows, key = self.plan.prepare(kwargs)
        length = 0.0 if self._length is None else self._length(kwargs)
        if len(self._queue) >= self.settings.max_queue_size:
            self.stats.rejected += 1
            raise RPCError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"model '{self.name}' is overloaded: {len(self._queue)} requests queued "
                f"(max_queue_size={self.settings.max_queue_size}); retry with backoff",
            )
        now = self._clock()
        self.stats.requests += 1
        inline = self._sync if self._sync is not None and self._sync.inline else None
        if self._idle(now) and (inline is None or not self._probe_due()):
            # Idle model: run at once in this task, no queue and no dispatcher hop.
            pending = _Pending(kwargs, rows, key, length, now)
            if inline is not None:
                (result,) = self._call_inline(pending, inline)
            else:
                self._running += 1
                (result,) = await self._call([pending])
            if isinstance(result, Exception):
                raise result
            return result
        deadline = None if timeout is None else now + timeout
        future = asyncio.get_running_loop().create_future()
        pending = _Queued(kwargs, rows, key, length, now, deadline, future)
        self._queue.append(pending)
        if len(self._queue) >= self._wake_at:
            self._wakeup.set()
        if self.observer is not None:
            self.observer.queued(len(self._queue))
        try:
            return await pending.future
        except asyncio.CancelledError:
            pending.future.cancel()  # the dispatcher skips it; a running batch ignores it
            raise

    def _probe_due(self) -> bool:
        """Whether this request, which found an inline model idle, queues to probe for others."""
        self._until_probe -= 1
        if self._until_probe > 0:
            return False
        self._until_probe = PROBE_EVERY
        return True

    async def _dispatch_forever(self) -> None:
        while True:
            while not self._queue or self._running >= self.settings.max_concurrent_batches:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = await self._collect()
            if batch:
                self._running += 1  # _call gives it back
                task = asyncio.get_running_loop().create_task(self._run(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _collect(self) -> list[_Queued]:
        """Wait, until the expected callers are back or batch_timeout has passed since the
        last batch finished, then take a batch."""
        want = self._want if self._expecting(self._clock()) else 1
        remaining = self._expect_until - self._clock()
        if len(self._queue) < want and remaining > 0:
            waited = False

            def give_up() -> None:
                nonlocal waited
                waited = True
                self._wakeup.set()

            # One timer and one wake-up per batch, not a wait_for task per arrival.
            timer = asyncio.get_running_loop().call_later(remaining, give_up)
            self._wake_at = want
            try:
                while len(self._queue) < want and not waited:
                    self._wakeup.clear()
                    await self._wakeup.wait()
            finally:
                timer.cancel()
                self._wake_at = 1
        if self._sync is not None and self._sync.inline:
            await self._gather_while_busy()
        self._want = 0
        return self._take()

    async def _gather_while_busy(self) -> None:
        """An inline batch takes no time, so no one queues while it runs: left to the callers
        expected back, it would never grow. It takes turns of the loop while they are busy
        (over BUSY_TURN_S: the loop is reading other calls, which may be this model's) and
        requests keep arriving, until the batch is full or GATHER_TURNS busy turns bring none.
        An idle turn ends it at once: nobody else is on the way, and at a few callers it would
        only hold up the ones it has."""
        seen, quiet = len(self._queue), 0
        while seen < self.settings.max_batch_size and quiet < GATHER_TURNS:
            start = time.perf_counter()
            await asyncio.sleep(0)
            if len(self._queue) > seen:
                seen, quiet = len(self._queue), 0
            elif time.perf_counter() - start < BUSY_TURN_S:
                return
            else:
                quiet += 1

    def _live(self) -> deque[_Queued]:
        """The queue without requests whose caller gave up or whose deadline passed."""
        now = self._clock()
        live: deque[_Queued] = deque()
        for p in self._queue:
            if p.future.done():
                self.stats.dropped += 1
            elif p.deadline is not None and p.deadline <= now:
                self.stats.dropped += 1
                p.future.set_exception(
                    RPCError(
                        StatusCode.DEADLINE_EXCEEDED,
                        f"deadline passed while queued for model '{self.name}'",
                    )
                )
            else:
                live.append(p)
        return live

    def _take(self) -> list[_Queued]:
        """Up to max_batch_size rows of live requests of the oldest one's shape: oldest first,
        or, when a batch_key is declared and more wait than fit, nearest the oldest's key.
        With max_batch_tokens, oldest first: its calls group the batch by key (`_cut`), and a
        request of an outlying key is not passed over batch after batch."""
        queue = self._live()
        limit = self.settings.max_batch_size
        candidates = list(queue)
        by_key = self._length is not None and self.settings.max_batch_tokens is None
        if by_key and sum(p.rows for p in candidates) > limit:
            first = candidates[0].length
            candidates.sort(key=lambda p: abs(p.length - first))  # stable: oldest first on ties
        batch: list[_Queued] = []
        rows, key = 0, None
        for p in candidates:
            if batch and (p.key != key or rows + p.rows > limit):
                if rows >= limit:
                    break
                continue
            batch.append(p)
            rows, key = rows + p.rows, p.key
        taken = set(map(id, batch))
        self._queue = deque(p for p in queue if id(p) not in taken)
        if self.observer is not None:
            self.observer.queued(len(self._queue))
        return batch

    def _cut(self, batch: list[_Queued]) -> list[list[_Queued]]:
        """The batch as the model calls it runs as: one, or, when its padded size is over
        max_batch_tokens, consecutive slices of it sorted by key, each filled up to the budget
        (a request over the budget on its own runs alone)."""
        budget = self.settings.max_batch_tokens
        if budget is None or max(p.length for p in batch) * sum(p.rows for p in batch) <= budget:
            return [batch]
        parts: list[list[_Queued]] = [[]]
        rows = 0
        for p in sorted(batch, key=lambda p: p.length):  # each the longest of its slice so far
            if parts[-1] and (rows + p.rows) * p.length > budget:
                parts.append([])
                rows = 0
            parts[-1].append(p)
            rows += p.rows
        return parts

    async def _run(self, batch: list[_Queued]) -> None:
        """A batch the dispatcher took: each request's future gets its own result or error, as
        soon as the call that computed it ends."""
        parts = self._cut(batch)
        taken = None if len(parts) == 1 else _Taken(len(batch), self._clock())
        for i, part in enumerate(parts):
            if taken is not None and i == len(parts) - 1:
                taken.last = True
            try:
                results = await self._call(part, taken)
            except Exception as exc:
                results = [exc] * len(part)
            for p, result in zip(part, results, strict=True):
                if p.future.done():
                    continue
                if isinstance(result, Exception):
                    p.future.set_exception(result)
                else:
                    p.future.set_result(result)
            if taken is not None and not taken.last:
                taken.early += len(part)
                taken.answered = min(taken.answered, self._clock())

    def _started(self, batch: Sequence[_Pending]) -> tuple[float, list[float]]:
        """Account for a model call about to start: when, and how long each request waited."""
        start = self._clock()
        waits = [start - p.enqueued for p in batch]
        self.stats.queue_seconds += sum(waits)
        if self._length is not None:
            longest = max(p.length for p in batch)
            self.stats.keys_needed += sum(p.length * p.rows for p in batch)
            self.stats.keys_computed += longest * sum(p.rows for p in batch)
        return start, waits

    def _call_inline(self, pending: _Pending, sync: SyncCalls) -> list[Any]:
        """`_call` for a lone request to an idle model that runs inline: the same accounting,
        without a future, a coroutine or a slot, since nothing else runs on the loop until
        `sync.now` returns. The batcher's expectations stay as they are: it was not expecting
        anyone (or the request would have queued), and a lone call leaves nobody to expect."""
        batch = (pending,)
        start, waits = self._started(batch)
        try:
            return self.plan.split(sync.now(self.plan.merge(batch)), batch)
        finally:
            self._accounted(1, start, waits)

    async def _call(self, batch: Sequence[_Pending], taken: _Taken | None = None) -> list[Any]:
        """One model call, in a slot already taken: a result (or an Exception instance) per
        request, or the exception that fails them all. The slot goes back after it, unless it
        is not the last call of a `taken` batch."""
        start, waits = self._started(batch)
        deferred = False
        try:
            call = self._invoke(self.plan.merge(batch))
            if not isinstance(call, asyncio.Future):  # a coroutine: cancelling its caller stops it
                output = await call
            elif call.done():  # a cheap `def` that ran inline
                output = call.result()
            else:  # in a thread
                try:
                    output = await asyncio.shield(call)
                except asyncio.CancelledError:
                    # A thread cannot be stopped: the call keeps its slot (and counts against
                    # max_concurrent_batches) until it really returns.
                    if taken is not None:
                        taken.last = True  # no call of the batch follows this one
                    call.add_done_callback(
                        lambda _: self._finished(len(batch), start, waits, taken)
                    )
                    deferred = True
                    raise
            return self.plan.split(output, batch)
        except asyncio.CancelledError:
            if taken is not None:
                taken.last = True
            raise
        finally:
            if not deferred:
                self._finished(len(batch), start, waits, taken)

    def _accounted(self, size: int, start: float, waits: list[float]) -> float:
        """Account for a model call that just ended; when it ended."""
        finished = self._clock()
        stats = self.stats
        stats.batches += 1
        stats.batch_sizes[size] += 1
        stats.model_seconds += finished - start
        if self.observer is not None:
            self.observer.batch(size, waits, finished - start)
        return finished

    def _finished(self, size: int, start: float, waits: list[float], taken: _Taken | None) -> None:
        """Account for a model call; give back its slot unless more calls of its batch follow."""
        finished = self._accounted(size, start, waits)
        if taken is not None and not taken.last:
            return
        self._running -= 1
        # This batch's callers are about to send again: expect them beside those queued, for
        # batch_timeout, or a fifth of this batch's time if longer: a caller who just waited
        # 300 ms for the model loses little waiting 60 ms more for a full batch, and callers
        # on a busy machine take longer than 10 ms to send again.
        expected = size
        if taken is not None:
            # Callers answered by its earlier calls may be back already: those are queued, and
            # counted once. Which queued request is whose is unknown: later arrivals, at most
            # as many as were answered early, are taken as theirs.
            back = sum(p.enqueued >= taken.answered for p in self._queue)
            expected, start = taken.size - min(back, taken.early), taken.start
        self._want = min(self.settings.max_batch_size, len(self._queue) + expected)
        self._expect_until = finished + max(self._timeout, PATIENCE * (finished - start))
        if self._queue:
            self._wakeup.set()
