"""max_batch_tokens: a batch padded past the budget runs as consecutive calls over it sorted by
key. The Batcher on its own with a fake model (and, end to end, one test over real gRPC)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from blazerpc import (
    BlazeApp,
    BlazeClient,
    ConfigurationError,
    InferenceError,
    TensorInput,
    TensorOutput,
)
from blazerpc.runtime.batcher import Batcher, BatchSettings
from blazerpc.runtime.registry import ModelEntry, ModelRegistry

from .support import running
from .test_batcher import BusyModel, Clock, GatedModel, _queued, _until, batching
from .test_batching import list_app, queue_list_calls


def keyed_entry() -> ModelEntry:
    """A batched model whose requests' batch_key is their own value."""

    def lengths(n: list[int]) -> list[int]:
        return n

    return ModelRegistry().register("lengths", lengths, batched=True, batch_key=lambda n: n)


class SteppedModel:
    """An async fake model whose calls end one at a time, when the test says `step()`; it
    answers each request with ten times its value."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.running = self.peak = 0
        self._steps = asyncio.Semaphore(0)

    def step(self) -> None:
        self._steps.release()

    async def __call__(self, kwargs: dict[str, Any]) -> Any:
        self.calls.append(list(kwargs["n"]))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self._steps.acquire()
        finally:
            self.running -= 1
        if 666 in kwargs["n"]:
            raise RuntimeError("this call fell over")
        return [10 * n for n in kwargs["n"]]


async def calls_behind_a_busy_model(
    keys: list[int], budget: int, max_batch_size: int = 32
) -> tuple[list[list[int]], list[Any], Batcher]:
    """Each model call's requests, and each request's result (or error), when `keys` queue
    behind a call running a request of key 1 and then run as one taken batch."""
    model = SteppedModel()
    settings = BatchSettings(max_batch_size=max_batch_size, max_batch_tokens=budget)
    batcher = Batcher(keyed_entry(), model, settings, clock=Clock())
    batcher.start()
    try:
        busy = asyncio.create_task(batcher.submit({"n": 1}))
        await _until(lambda: model.running == 1)
        queued = [asyncio.create_task(batcher.submit({"n": k})) for k in keys]
        await _queued(batcher, len(keys))
        while not all(t.done() for t in [busy, *queued]):
            model.step()
            await asyncio.sleep(0.01)
        assert await busy == 10
        results = await asyncio.gather(*queued, return_exceptions=True)
    finally:
        await batcher.stop()
    return model.calls[1:], results, batcher


async def test_a_batch_over_the_budget_runs_as_sorted_calls_within_it() -> None:
    keys = [50, 5, 51, 6, 52, 7, 53, 8]
    calls, results, batcher = await calls_behind_a_busy_model(keys, budget=120)
    # one taken batch (8 fit max_batch_size), sorted by key, each call filled up to 120
    assert calls == [[5, 6, 7, 8], [50, 51], [52, 53]]
    assert all(len(call) * max(call) <= 120 for call in calls)
    assert results == [10 * k for k in keys]  # each caller its own row
    stats = batcher.stats
    # batches count model calls: the lone first one and three for the taken batch
    assert stats.batches == 4 and stats.batch_sizes == {1: 1, 4: 1, 2: 2}
    assert stats.keys_needed == 1 + sum(keys)
    assert stats.keys_computed == 1 + 4 * 8 + 2 * 51 + 2 * 53
    assert stats.padding_waste == pytest.approx(1 - (1 + sum(keys)) / (1 + 32 + 102 + 106))
    assert batcher._running == 0


async def test_with_a_budget_batches_are_taken_oldest_first_and_cut_by_key() -> None:
    """More wait than one batch holds: without a budget the batch would take the keys nearest
    the oldest's (5, 6, 7, 8); with one it takes the four oldest, and the cut groups them."""
    keys = [5, 50, 6, 51, 7, 52, 8, 53]
    calls, results, _ = await calls_behind_a_busy_model(keys, budget=110, max_batch_size=4)
    assert calls == [[5, 6], [50, 51], [7, 8], [52, 53]]
    assert results == [10 * k for k in keys]


async def test_a_batch_within_the_budget_is_one_call_in_arrival_order() -> None:
    calls, results, _ = await calls_behind_a_busy_model([9, 2, 30], budget=90)
    assert calls == [[9, 2, 30]]
    assert results == [90, 20, 300]


async def test_a_request_over_the_budget_runs_alone() -> None:
    calls, results, _ = await calls_behind_a_busy_model([10, 500, 12, 11], budget=100)
    assert calls == [[10, 11, 12], [500]]
    assert results == [100, 5000, 120, 110]


async def test_a_failing_call_fails_only_its_own_requests() -> None:
    calls, results, batcher = await calls_behind_a_busy_model([3, 666, 2, 700, 4], budget=1400)
    assert calls == [[2, 3, 4], [666, 700]]
    assert results[0] == 30 and results[2] == 20 and results[4] == 40
    assert [str(results[1]), str(results[3])] == ["this call fell over"] * 2
    assert batcher.stats.batches == 3 and batcher._running == 0


async def test_a_tensor_model_budget_counts_rows_times_the_longest_key() -> None:
    def rows(x: TensorInput[np.float32, "batch", 2]) -> TensorOutput[np.float32, "batch", 2]:
        return x

    # each request's rows all hold its key
    entry = ModelRegistry().register("rows", rows, batch_key=lambda x: float(x[0, 0]))
    model = GatedModel(lambda kwargs: kwargs["x"] * 10)
    async with batching(entry, model, max_batch_tokens=30) as batcher:
        busy = asyncio.create_task(batcher.submit({"x": np.ones((1, 2), np.float32)}))
        await _until(lambda: model.running == 1)
        requests = [(2, 10.0), (1, 5.0), (3, 6.0)]  # (rows, key): 6 rows x 10 is over 30
        queued = [
            asyncio.create_task(batcher.submit({"x": np.full((n, 2), key, np.float32)}))
            for n, key in requests
        ]
        await _queued(batcher, 3)
        model.open()
        results = await asyncio.gather(busy, *queued)
    # by key: 1 row of 5 and 3 of 6 (4 x 6 = 24), then 2 rows of 10 (20) on their own
    assert [call["x"][:, 0].tolist() for call in model.calls[1:]] == [[5, 6, 6, 6], [10, 10]]
    for result, (n, key) in zip(results[1:], requests, strict=True):
        assert result.shape == (n, 2) and (result == 10 * key).all()
    assert batcher.stats.keys_computed == 1 + 4 * 6 + 2 * 10


async def test_callers_are_answered_as_their_own_call_ends_within_one_slot() -> None:
    model = SteppedModel()
    settings = BatchSettings(max_batch_tokens=18, max_concurrent_batches=1)
    batcher = Batcher(keyed_entry(), model, settings, clock=Clock())
    batcher.start()
    try:
        busy = asyncio.create_task(batcher.submit({"n": 1}))
        await _until(lambda: model.running == 1)
        keys = [10, 2, 9, 3]
        queued = {k: asyncio.create_task(batcher.submit({"n": k})) for k in keys}
        await _queued(batcher, 4)
        model.step()  # the lone first call ends; the taken batch starts: [2, 3] first
        await _until(lambda: len(model.calls) == 2)
        assert model.calls[1] == [2, 3]
        late = asyncio.create_task(batcher.submit({"n": 4}))  # arrives while the batch runs
        model.step()
        await _until(lambda: queued[2].done() and queued[3].done())
        assert await queued[2] == 20 and await queued[3] == 30
        await _until(lambda: len(model.calls) == 3)
        # the short ones are answered while the long ones still run, in the same slot: the
        # request that arrived meanwhile waits for the whole taken batch to end
        assert model.calls[2] == [9] and not queued[9].done() and not queued[10].done()
        assert batcher._running == 1 and batcher.queue_depth == 1
        model.step()
        assert await queued[9] == 90
        await _until(lambda: len(model.calls) == 4)
        assert model.calls[3] == [10] and not late.done()
        model.step()
        assert await queued[10] == 100
        model.step()
        assert await late == 40 and await busy == 10
    finally:
        await batcher.stop()
    assert model.calls[4] == [4] and model.peak == 1


async def test_batches_still_grow_to_the_load_when_they_run_as_several_calls() -> None:
    """16 closed-loop callers of keys 1..16, a budget of 40: every taken batch holds all 16
    and runs as the calls [1..6] [7..10] [11..13] [14, 15] [16]. The early callers are back
    before the last call ends and are not counted twice: the dispatcher never waits out its
    (here ten second) batch_timeout for callers who are already queued."""
    model = BusyModel()

    def lengths(n: list[int]) -> list[int]:
        return n

    entry = ModelRegistry().register("lengths", lengths, batched=True, batch_key=lambda n: n % 1000)
    settings = BatchSettings(batch_timeout_ms=10_000, max_batch_tokens=40)
    batcher = Batcher(entry, model, settings, clock=Clock())
    batcher.start()
    try:
        await asyncio.wait_for(keyed_closed_loop(batcher, 16, rounds=5), 5)
    finally:
        await batcher.stop()
    assert model.sizes == [1] + [6, 4, 3, 2, 1] * 5


async def keyed_closed_loop(batcher: Batcher, clients: int, rounds: int) -> None:
    """`clients` callers, client i always sending key i + 1 (as n = round * 1000 + i + 1). The
    first, whose first request runs alone and who so stays a round ahead of the rest, sends
    one more, so that every batch after that first request holds every caller."""

    async def client(i: int) -> None:
        for r in range(rounds + (i == 0)):
            n = r * 1000 + i + 1
            assert await batcher.submit({"n": n}) == n

    await asyncio.gather(*(client(i) for i in range(clients)))


def test_max_batch_tokens_is_checked_at_registration() -> None:
    app = BlazeApp()

    def texts(t: list[str]) -> list[str]:
        return t

    def length(t: str) -> int:
        return len(t)

    needs_key = r"model 'plain'.*max_batch_tokens needs a batch_key"
    with pytest.raises(ConfigurationError, match=needs_key):
        app.model("plain", batched=True, max_batch_tokens=512)(texts)
    for bad in (0, -5, 1.5, True, "512"):
        positive = r"model 'keyed'.*max_batch_tokens must be a positive int.*got " + repr(bad)
        with pytest.raises(ConfigurationError, match=positive):
            app.model("keyed", batched=True, batch_key=length, max_batch_tokens=bad)(texts)
    app.model("keyed", batched=True, batch_key=length, max_batch_tokens=512)(texts)
    entry = app.registry.get("keyed")
    settings = app.batch_settings(entry)
    assert settings is not None and settings.max_batch_tokens == 512


async def test_over_grpc_each_caller_gets_its_own_answer_from_budgeted_calls() -> None:
    seen: list[list[str]] = []
    release = asyncio.Event()
    app = list_app(seen, release, batch_key=lambda text: len(text), max_batch_tokens=16)
    texts = ["aaaaaaaa", "b", "cc", "explode", "ddd", "eeeeeeeeeeee"]
    async with running(app) as server, BlazeClient("127.0.0.1", server.port) as client:
        _, tasks = await queue_list_calls(server, client, release, texts)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        stats = server.stats()["shout"]
    # sorted by length, cut at 16 padded characters; the call with "explode" fails alone
    assert seen == [["block"], ["b", "cc", "ddd"], ["explode", "aaaaaaaa"], ["eeeeeeeeeeee"]]
    assert results[1] == "B" * 2 and results[2] == "CC" * 3 and results[4] == "DDD" * 5
    assert results[5] == "E" * 12 * 6
    for failed in (results[0], results[3]):
        assert isinstance(failed, InferenceError)
        assert str(failed) == "RuntimeError: the batch fell over"
    assert stats.batch_sizes == {1: 2, 3: 1, 2: 1}
    assert stats.keys_computed == 5 + 3 * 3 + 2 * 8 + 12
