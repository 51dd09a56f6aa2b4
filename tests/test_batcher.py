"""The Batcher on its own: no server, no sockets; a fake model and, where time matters, a
clock the test moves."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from grpc import StatusCode

from blazerpc import (
    BlazeApp,
    ConfigurationError,
    InferenceError,
    RPCError,
    TensorInput,
    TensorOutput,
)
from blazerpc.runtime.batcher import (
    BUSY_TURN_S,
    GATHER_TURNS,
    PROBE_EVERY,
    Batcher,
    BatchSettings,
)
from blazerpc.runtime.executor import Executor, SyncCalls
from blazerpc.runtime.registry import BatchOverrides, ModelEntry, ModelRegistry


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


class Clock:
    """Seconds that only move when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class GatedModel:
    """An async fake model: records each call's inputs, and holds every call until `open()`,
    so requests pile up in the queue behind the first while the test looks on."""

    def __init__(self, output: Callable[[dict[str, Any]], Any]) -> None:
        self.calls: list[dict[str, Any]] = []
        self.running = self.peak = 0
        self._gate = asyncio.Event()
        self._output = output

    def open(self) -> None:
        self._gate.set()

    async def __call__(self, kwargs: dict[str, Any]) -> Any:
        self.calls.append(kwargs)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self._gate.wait()
        finally:
            self.running -= 1
        return self._output(kwargs)


def tensor_entry() -> ModelEntry:
    def rows(x: TensorInput[np.float32, "batch", "n"]) -> TensorOutput[np.float32, "batch", "n"]:
        return x

    return ModelRegistry().register("rows", rows)


def list_entry() -> ModelEntry:
    def double(n: list[int]) -> list[int]:
        return [2 * v for v in n]

    return ModelRegistry().register("double", double, batched=True)


@asynccontextmanager
async def batching(
    entry: ModelEntry, model: GatedModel, clock: Clock | None = None, **settings: Any
) -> AsyncIterator[Batcher]:
    batcher = Batcher(entry, model, BatchSettings(**settings), clock=clock or Clock())
    batcher.start()
    try:
        yield batcher
    finally:
        model.open()
        await batcher.stop()


async def _queued(batcher: Batcher, depth: int) -> None:
    await _until(lambda: batcher.queue_depth == depth)


async def test_requests_share_a_batch_only_with_requests_of_their_shape() -> None:
    model = GatedModel(lambda kwargs: kwargs["x"])
    async with batching(tensor_entry(), model, max_batch_size=8) as batcher:
        first = asyncio.create_task(batcher.submit({"x": np.ones((1, 4), np.float32)}))
        await _until(lambda: model.running == 1)  # the idle model took it at once
        shapes = [(2, 4), (1, 3), (3, 4), (1, 3)]
        rest = [
            asyncio.create_task(batcher.submit({"x": np.full(s, i, np.float32)}))
            for i, s in enumerate(shapes)
        ]
        await _queued(batcher, 4)
        model.open()
        results = await asyncio.gather(first, *rest)
    # the 4-wide requests went in one call (5 rows), the 3-wide in another (2 rows)
    assert [call["x"].shape for call in model.calls] == [(1, 4), (5, 4), (2, 3)]
    for result, shape, i in zip(results[1:], shapes, range(4), strict=True):
        assert result.shape == shape
        assert (result == i).all()  # each caller gets its own rows back
    assert batcher.stats.batch_sizes == {1: 1, 2: 2}


async def test_a_batch_holds_at_most_max_batch_size_rows() -> None:
    model = GatedModel(lambda kwargs: kwargs["x"])
    async with batching(tensor_entry(), model, max_batch_size=4) as batcher:
        first = asyncio.create_task(batcher.submit({"x": np.zeros((1, 2), np.float32)}))
        await _until(lambda: model.running == 1)
        rest = [
            asyncio.create_task(batcher.submit({"x": np.full((rows, 2), rows, np.float32)}))
            for rows in (3, 2, 2, 1)
        ]
        await _queued(batcher, 4)
        model.open()
        await asyncio.gather(first, *rest)
    # Oldest first, and a request too big for what is left waits while a smaller one fills it.
    assert [call["x"][:, 0].tolist() for call in model.calls[1:]] == [
        [3, 3, 3, 1],
        [2, 2, 2, 2],
    ]


async def test_a_request_whose_deadline_passed_in_the_queue_never_reaches_the_model() -> None:
    clock = Clock()
    model = GatedModel(lambda kwargs: kwargs["n"])
    async with batching(list_entry(), model, clock) as batcher:
        busy = asyncio.create_task(batcher.submit({"n": 1}))
        await _until(lambda: model.running == 1)
        late = asyncio.create_task(batcher.submit({"n": 2}, timeout=0.5))
        patient = asyncio.create_task(batcher.submit({"n": 3}, timeout=60))
        await _queued(batcher, 2)
        clock.now += 1.0  # past the first one's deadline, well within the second's
        model.open()
        with pytest.raises(RPCError) as info:
            await late
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED
        assert await busy == 1
        assert await patient == 3
    assert [call["n"] for call in model.calls] == [[1], [3]]
    assert batcher.stats.dropped == 1


async def test_a_cancelled_request_is_dropped_from_the_queue() -> None:
    model = GatedModel(lambda kwargs: kwargs["n"])
    async with batching(list_entry(), model) as batcher:
        busy = asyncio.create_task(batcher.submit({"n": 1}))
        await _until(lambda: model.running == 1)
        gone = asyncio.create_task(batcher.submit({"n": 2}))
        kept = asyncio.create_task(batcher.submit({"n": 3}))
        await _queued(batcher, 2)
        gone.cancel()
        await asyncio.sleep(0)
        model.open()
        assert await busy == 1
        assert await kept == 3
        assert gone.cancelled()
    assert [call["n"] for call in model.calls] == [[1], [3]]
    assert batcher.stats.dropped == 1


async def test_concurrent_batches_never_exceed_the_setting_and_all_slots_come_back() -> None:
    model = GatedModel(lambda kwargs: kwargs["n"])
    async with batching(list_entry(), model, max_batch_size=1, max_concurrent_batches=2) as batcher:
        calls = [asyncio.create_task(batcher.submit({"n": i})) for i in range(6)]
        await _until(lambda: model.running == 2)
        await asyncio.sleep(0.05)
        assert model.running == 2 and batcher.queue_depth == 4
        model.open()
        assert await asyncio.gather(*calls) == list(range(6))
        assert model.peak == 2
        assert batcher._running == 0
        assert batcher.stats.batches == 6


async def test_a_full_queue_refuses_at_once_with_resource_exhausted() -> None:
    model = GatedModel(lambda kwargs: kwargs["n"])
    async with batching(list_entry(), model, max_queue_size=2) as batcher:
        busy = asyncio.create_task(batcher.submit({"n": 0}))
        await _until(lambda: model.running == 1)
        queued = [asyncio.create_task(batcher.submit({"n": i})) for i in (1, 2)]
        await _queued(batcher, 2)
        with pytest.raises(RPCError) as info:
            await batcher.submit({"n": 3})
        assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
        assert batcher.stats.rejected == 1
        model.open()
        assert await asyncio.gather(busy, *queued) == [0, 1, 2]


async def test_a_model_failure_reaches_every_request_of_its_batch() -> None:
    def broken(kwargs: dict[str, Any]) -> Any:
        raise ValueError("weights missing")

    model = GatedModel(broken)
    async with batching(list_entry(), model) as batcher:
        calls = [asyncio.create_task(batcher.submit({"n": i})) for i in range(3)]
        await _queued(batcher, 2)
        model.open()
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert [str(r) for r in results] == ["weights missing"] * 3
    assert batcher._running == 0


async def test_a_lone_request_waits_for_no_one_even_just_after_a_batch() -> None:
    clock = Clock()
    model = GatedModel(lambda kwargs: kwargs["n"])
    model.open()
    async with batching(list_entry(), model, clock, batch_timeout_ms=10_000) as batcher:
        # idle: runs at once, in the caller's task, whatever batch_timeout_ms says
        assert await asyncio.wait_for(batcher.submit({"n": 1}), 1) == [1][0]
        # a batch of one just ended: nobody else is expected, so the next runs at once too
        assert await asyncio.wait_for(batcher.submit({"n": 2}), 1) == 2
        assert batcher.stats.batch_sizes == {1: 2}


async def closed_loop(batcher: Batcher, clients: int, rounds: int) -> None:
    """`clients` callers that each send their next request when the last one is answered."""

    async def client(i: int) -> None:
        for r in range(rounds):
            assert await batcher.submit({"n": i * 1000 + r}) == i * 1000 + r

    await asyncio.gather(*(client(i) for i in range(clients)))


class BusyModel:
    """An async fake model that yields to the loop a few times per call, long enough for
    every other caller to queue behind it, and records each batch's size."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    async def __call__(self, kwargs: dict[str, Any]) -> Any:
        self.sizes.append(len(kwargs["n"]))
        for _ in range(3):
            await asyncio.sleep(0)
        return kwargs["n"]


@pytest.mark.parametrize(("clients", "max_batch_size"), [(16, 32), (9, 32), (40, 16)])
async def test_batches_grow_to_the_load_within_two_batches(
    clients: int, max_batch_size: int
) -> None:
    model = BusyModel()
    # the first caller finishes a round ahead of the rest, who then wait out one timeout
    settings = {"max_batch_size": max_batch_size, "batch_timeout_ms": 100}
    batcher = Batcher(list_entry(), model, BatchSettings(**settings), clock=Clock())
    batcher.start()
    try:
        await asyncio.wait_for(closed_loop(batcher, clients, rounds=6), 5)
    finally:
        await batcher.stop()
    # The first request finds the model idle and runs alone; the next batch takes the queue
    # plus that caller's next request; from then on every batch holds every caller (or is full).
    steady = min(clients, max_batch_size)
    assert model.sizes[0] == 1
    assert model.sizes[1:-2] == [steady] * (len(model.sizes) - 3)
    assert sum(model.sizes) == clients * 6


async def test_callers_of_a_slow_batch_are_awaited_for_a_fifth_of_its_time() -> None:
    """A batch that took the model ten seconds: its caller coming back 100 ms later (well
    past batch_timeout_ms) still joins the next batch instead of leaving it a remainder."""
    clock = Clock()

    def ten_seconds(kwargs: dict[str, Any]) -> Any:
        clock.now += 10.0
        return kwargs["n"]

    model = GatedModel(ten_seconds)
    async with batching(list_entry(), model, clock, batch_timeout_ms=10) as batcher:
        first = asyncio.create_task(batcher.submit({"n": 0}))
        await _until(lambda: model.running == 1)
        queued = [asyncio.create_task(batcher.submit({"n": i})) for i in (1, 2, 3)]
        await _queued(batcher, 3)
        model.open()
        assert await first == 0
        await asyncio.sleep(0.05)  # the dispatcher is waiting for that caller by now
        clock.now += 0.1  # who sends again, 100 ms after its batch ended
        again = asyncio.create_task(batcher.submit({"n": 4}))
        assert await asyncio.gather(*queued, again) == [1, 2, 3, 4]
    assert [call["n"] for call in model.calls] == [[0], [1, 2, 3, 4]]


async def test_batches_shrink_to_a_smaller_load_after_one_timeout() -> None:
    model = BusyModel()
    batcher = Batcher(list_entry(), model, BatchSettings(batch_timeout_ms=50), clock=time_clock())
    batcher.start()
    try:
        await asyncio.wait_for(closed_loop(batcher, 12, rounds=4), 5)
        grown = len(model.sizes)
        await asyncio.wait_for(closed_loop(batcher, 5, rounds=6), 5)
    finally:
        await batcher.stop()
    assert model.sizes[1 : grown - 1] == [12] * (grown - 2)
    # The first batch of the new load may wait out one timeout for callers who left; then
    # batches match the 5 callers that remain.
    assert model.sizes[grown + 1 : -1] == [5] * (len(model.sizes) - grown - 2)
    assert len(model.sizes) - grown <= 7


def time_clock() -> Callable[[], float]:
    return time.perf_counter


def keyed_entry() -> ModelEntry:
    def lengths(n: list[int]) -> list[int]:
        return n

    return ModelRegistry().register("lengths", lengths, batched=True, batch_key=lambda n: n)


async def batches_behind_a_busy_model(
    entry: ModelEntry, first: int, keys: list[int], max_batch_size: int
) -> tuple[list[list[int]], Batcher]:
    """Each model call's requests, when `keys` queue behind a call running `first`."""
    model = GatedModel(lambda kwargs: kwargs["n"])
    async with batching(entry, model, max_batch_size=max_batch_size) as batcher:
        busy = asyncio.create_task(batcher.submit({"n": first}))
        await _until(lambda: model.running == 1)
        queued = [asyncio.create_task(batcher.submit({"n": k})) for k in keys]
        await _queued(batcher, len(keys))
        model.open()
        assert await asyncio.gather(busy, *queued) == [first, *keys]
    return [call["n"] for call in model.calls], batcher


async def test_a_batch_key_groups_nearby_keys_when_more_wait_than_fit() -> None:
    keys = [5, 50, 6, 51, 7, 52, 8, 53]
    calls, batcher = await batches_behind_a_busy_model(keyed_entry(), 30, keys, 4)
    assert calls == [[30], [5, 6, 7, 8], [50, 51, 52, 53]]
    stats = batcher.stats
    assert stats.keys_needed == 30 + 26 + 206
    assert stats.keys_computed == 30 + 4 * 8 + 4 * 53
    assert stats.padding_waste == pytest.approx(1 - 262 / 274)


async def test_without_a_batch_key_batches_take_the_oldest_first() -> None:
    keys = [5, 50, 6, 51, 7, 52, 8, 53]
    calls, batcher = await batches_behind_a_busy_model(list_entry(), 30, keys, 4)
    assert calls == [[30], [5, 50, 6, 51], [7, 52, 8, 53]]
    assert batcher.stats.padding_waste == 0.0


async def test_a_batch_key_never_splits_what_fits_in_one_batch() -> None:
    calls, _ = await batches_behind_a_busy_model(keyed_entry(), 1, [90, 2, 80], 8)
    assert calls == [[1], [90, 2, 80]]


def texts(t: list[str]) -> list[str]:
    return t


async def test_a_batch_key_that_returns_no_number_fails_that_request_by_name() -> None:
    entry = ModelRegistry().register("texts", texts, batched=True, batch_key=lambda t: "long")
    model = GatedModel(lambda kwargs: kwargs["t"])
    async with batching(entry, model) as batcher:
        with pytest.raises(InferenceError, match="'texts': batch_key returned str"):
            await batcher.submit({"t": "a"})


def test_batch_key_is_checked_at_registration() -> None:
    def echo(t: str) -> str:
        return t

    registry = ModelRegistry()
    with pytest.raises(ConfigurationError, match="needs a model that batches"):
        registry.register("one", echo, batch_key=lambda t: len(t))
    with pytest.raises(ConfigurationError, match=r"takes \['txt'\].*\['t'\]"):
        registry.register("two", texts, batched=True, batch_key=lambda txt: 1)


@pytest.mark.parametrize(
    ("setting", "bad", "what"),
    [
        ("max_batch_size", 0, "a positive int"),
        ("max_queue_size", -1, "a positive int"),
        # 0 slots: no batch would ever run, and every call would wait forever.
        ("max_concurrent_batches", 0, "a positive int"),
        ("max_concurrent_batches", 2.5, "a positive int"),
        ("batch_timeout_ms", -10, "a number of milliseconds >= 0"),
        ("batch_timeout_ms", float("nan"), "a number of milliseconds >= 0"),
    ],
)
def test_batching_settings_no_batcher_can_work_with_are_refused_by_name(
    setting: str, bad: object, what: str
) -> None:
    registry = ModelRegistry()
    with pytest.raises(ConfigurationError, match=rf"model 'm'.*{setting} must be {what}, got"):
        registry.register("m", texts, batched=True, batching=BatchOverrides(**{setting: bad}))
    app_wide = {"max_batch_size", "max_queue_size", "batch_timeout_ms"}
    if setting in app_wide:
        with pytest.raises(ConfigurationError, match=rf"BlazeApp: {setting} must be {what}"):
            BlazeApp(**{setting: bad})
    # The boundary values work.
    fine = BatchOverrides(batch_timeout_ms=0, max_concurrent_batches=1)
    registry.register("ok", texts, batched=True, batching=fine)


async def test_a_batched_model_may_return_an_array_with_a_row_per_request() -> None:
    model = GatedModel(lambda kwargs: np.array([[v, v] for v in kwargs["n"]], np.float32))
    async with batching(list_entry(), model) as batcher:
        calls = [asyncio.create_task(batcher.submit({"n": i})) for i in range(3)]
        await _queued(batcher, 2)
        model.open()
        rows = await asyncio.gather(*calls)
    assert [row.tolist() for row in rows] == [[0, 0], [1, 1], [2, 2]]


async def test_merged_inputs_are_read_only_like_a_lone_request() -> None:
    seen: list[bool] = []

    def record(kwargs: dict[str, Any]) -> Any:
        seen.append(kwargs["x"].flags.writeable)
        return kwargs["x"]

    model = GatedModel(record)
    async with batching(tensor_entry(), model) as batcher:
        lone = np.ones((1, 2), np.float32)
        lone.flags.writeable = False  # as codec decodes every tensor
        calls = [asyncio.create_task(batcher.submit({"x": lone})) for _ in range(3)]
        await _queued(batcher, 2)
        model.open()
        await asyncio.gather(*calls)
    assert seen == [False, False]


@asynccontextmanager
async def inline_doubler(settings: BatchSettings) -> AsyncIterator[tuple[Batcher, list[list[int]]]]:
    """A batcher over a batched `def` that runs inline, and the arguments of each of its
    calls."""
    calls: list[list[int]] = []

    def double(n: list[int]) -> list[int]:
        calls.append(list(n))
        return [2 * v for v in n]

    entry = ModelRegistry().register("double", double, batched=True)
    executor = Executor(2)
    invoke = executor.invoker(double)
    assert isinstance(invoke, SyncCalls)
    invoke.inline = True  # as if proven cheap
    batcher = Batcher(entry, invoke, settings)
    batcher.start()
    try:
        yield batcher, calls
    finally:
        await batcher.stop()
        executor.shutdown()


@pytest.mark.both_loops
async def test_an_inline_model_probes_now_and_then_so_calls_that_arrive_together_batch() -> None:
    """Each call of a model running inline ends before the loop reads the next, so it always
    finds the model idle and would run alone however many callers there are: one idle
    arrival in PROBE_EVERY queues, and those arriving with it join: at the first idle turn of
    the loop, it runs."""
    async with inline_doubler(BatchSettings(batch_timeout_ms=0)) as (batcher, calls):
        together = [asyncio.ensure_future(batcher.submit({"n": i})) for i in range(4)]
        assert await asyncio.gather(*together) == [0, 2, 4, 6]
        assert calls == [[0], [1], [2], [3]]  # at once, each alone, in its caller's task
        for i in range(PROBE_EVERY - 5):
            await batcher.submit({"n": i})
        together = [asyncio.ensure_future(batcher.submit({"n": i})) for i in range(4)]
        assert await asyncio.gather(*together) == [0, 2, 4, 6]
        assert calls[-1] == [0, 1, 2, 3]  # the probe, and the three that came with it
        assert len(calls) == PROBE_EVERY


def busy_for(seconds: float) -> None:
    """Hold the loop, as reading and answering other calls does under load."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.both_loops
async def test_an_inline_batch_gathers_while_the_loop_is_busy_with_arrivals() -> None:
    """Under load, callers come in one or two per turn of the loop, and every turn is busy
    reading calls. An inline batch keeps gathering while that lasts, so batches grow to the
    callers there are rather than to the few that came in its first turn."""
    async with inline_doubler(BatchSettings(batch_timeout_ms=0)) as (batcher, calls):

        async def caller(i: int) -> None:
            for k in range(3 * PROBE_EVERY):
                for _ in range((7 * i + k) % 16):  # about one caller back per turn
                    await asyncio.sleep(0)
                busy_for(2 * BUSY_TURN_S)
                assert await batcher.submit({"n": k}) == 2 * k

        await asyncio.gather(*(caller(i) for i in range(20)))
    sizes = [len(call) for call in calls]
    assert max(sizes) >= 15, sizes  # up to 11 if it ran at the first turn without an arrival


@pytest.mark.both_loops
async def test_an_inline_batch_runs_after_a_few_busy_turns_without_arrivals() -> None:
    """A busy loop that brings this model nothing holds its batch for GATHER_TURNS turns."""
    async with inline_doubler(BatchSettings()) as (batcher, calls):
        turns = 0
        done = False

        async def other_work() -> None:
            nonlocal turns
            while not done:
                busy_for(2 * BUSY_TURN_S)
                turns += 1
                await asyncio.sleep(0)

        for k in range(PROBE_EVERY - 1):
            assert await batcher.submit({"n": k}) == 2 * k
        busy = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        turns = 0
        assert await batcher.submit({"n": 7}) == 14  # the probe: it queues
        done = True
        await busy
    assert [len(call) for call in calls] == [1] * PROBE_EVERY
    assert GATHER_TURNS <= turns <= GATHER_TURNS + 3
