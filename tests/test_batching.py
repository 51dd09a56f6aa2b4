"""Adaptive batching over the wire: real servers, real clients, models that record what they saw.

Where a test needs requests to pile up, the model blocks on a gate the test controls and the
test waits until the batcher reports them queued, so which requests share a batch is decided by
the test, never by timing.
"""

import asyncio
import itertools
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from blazerpc import (
    BlazeApp,
    BlazeClient,
    BlazeRPCError,
    ConfigurationError,
    InferenceError,
    Server,
    TensorInput,
    TensorOutput,
    ValidationError,
)
from blazerpc.codec import Codec

from .support import client_for, path, running

INVALID = grpc.StatusCode.INVALID_ARGUMENT
INTERNAL = grpc.StatusCode.INTERNAL
ROOT = Path(__file__).resolve().parent.parent

Rows = TensorInput[np.float32, "batch", 3]
OutRows = TensorOutput[np.float32, "batch", 3]


def rows_of(client_id: int, n: int) -> np.ndarray:
    """`n` rows that name their sender: row r of client c is [c, r, 1000 * c + r]."""
    r = np.arange(n, dtype=np.float32)
    return np.stack([np.full(n, client_id, np.float32), r, 1000 * client_id + r], axis=1)


def transform(x: np.ndarray) -> np.ndarray:
    """An id-dependent answer: a row misrouted to another client can never look right."""
    return x * 2 + x[:, :1] ** 2


class Probe:
    """What a model saw: the ids in each call, each call's input shape, and how many calls
    overlapped. Calls that carry `BLOCK` in their ids wait for `release()`."""

    BLOCK = -1.0

    def __init__(self) -> None:
        self.calls: list[list[float]] = []
        self.shapes: list[tuple[int, ...]] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._gate = threading.Event()
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    @property
    def ids(self) -> set[float]:
        return {i for call in self.calls for i in call}

    def enter(self, x: np.ndarray, ids: list[float] | None = None) -> None:
        with self._lock:
            self.calls.append(ids if ids is not None else [float(v) for v in x[:, 0]])
            self.shapes.append(x.shape)
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def leave(self) -> None:
        with self._lock:
            self.active -= 1

    def blocked(self) -> bool:
        return bool(self.calls) and self.BLOCK in self.calls[-1] and not self._gate.is_set()

    def wait_in_thread(self) -> None:
        if self.BLOCK in self.calls[-1]:
            self._gate.wait(10)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


def queued(server: Server, model: str) -> int:
    return server.stats()[model].queue_depth


@pytest.fixture
def probe() -> Probe:
    return Probe()


def tensor_app(
    probe: Probe, *, delay: float = 0.0, enable_batching: bool = True, **options: Any
) -> BlazeApp:
    """A sync (thread-pool) tensor model `tag`, with per-model `options`, that returns
    `transform(x)` after `delay` seconds."""
    app = BlazeApp(enable_batching=enable_batching)

    @app.model("tag", **options)
    def tag(x: Rows) -> OutRows:
        probe.enter(x)
        try:
            probe.wait_in_thread()
            time.sleep(delay)
            return transform(x)
        finally:
            probe.leave()

    return app


async def block_and_queue(
    server: Server, client: BlazeClient, probe: Probe, model: str, calls: list
) -> tuple[asyncio.Task, list[asyncio.Task]]:
    """Occupy `model` with a blocked call, then queue `calls` behind it (all of them)."""
    probe.hold()
    blocker = asyncio.create_task(client.predict(model, x=rows_of(Probe.BLOCK, 1)))
    await eventually(probe.blocked)
    tasks = [asyncio.create_task(c) for c in calls]
    await eventually(lambda: queued(server, model) == len(calls))
    return blocker, tasks


@pytest.fixture
async def served(probe: Probe) -> AsyncIterator[Callable]:
    """`await served(app)` -> (server, client); both closed at the end of the test."""
    stack: list = []

    async def start(app: BlazeApp) -> tuple[Server, BlazeClient]:
        ctx = running(app)
        server = await ctx.__aenter__()
        client = BlazeClient("127.0.0.1", server.port, registry=app.registry)
        stack.append((ctx, client))
        return server, client

    yield start
    probe.release()
    for ctx, client in reversed(stack):
        await client.close()
        await ctx.__aexit__(None, None, None)


# --------------------------------------------------------------------------- tensor stacking


async def test_concurrent_clients_get_exactly_their_own_rows(probe: Probe, served) -> None:
    app = tensor_app(probe, delay=0.003)
    server, _ = await served(app)
    clients = [BlazeClient("127.0.0.1", server.port, registry=app.registry) for _ in range(40)]
    try:

        async def call(client_id: int) -> None:
            x = rows_of(client_id, 1 + client_id % 4)  # 1 to 4 rows per request
            got = await clients[client_id].predict("tag", x=x)
            np.testing.assert_array_equal(got, transform(x))

        for _ in range(3):
            await asyncio.gather(*(call(i) for i in range(40)))
    finally:
        for c in clients:
            await c.close()
    assert max(len(set(ids)) for ids in probe.calls) > 1, "no call ever served two clients"
    assert max(shape[0] for shape in probe.shapes) > 4, "no batch larger than one request"
    stats = server.stats()["tag"]
    assert stats.requests == 120
    assert stats.batches == len(probe.calls) < 120
    assert stats.mean_batch_size == pytest.approx(120 / len(probe.calls))


async def test_multi_row_requests_are_split_by_rows(probe: Probe, served) -> None:
    server, client = await served(tensor_app(probe))
    sizes = [3, 1, 5, 2, 4]
    calls = [client.predict("tag", x=rows_of(i, n)) for i, n in enumerate(sizes, start=1)]
    blocker, tasks = await block_and_queue(server, client, probe, "tag", calls)
    probe.release()
    await blocker
    for i, (n, task) in enumerate(zip(sizes, tasks, strict=True), start=1):
        got = await task
        assert got.shape == (n, 3)
        np.testing.assert_array_equal(got, transform(rows_of(i, n)))
    assert probe.shapes[1] == (sum(sizes), 3), "the queued requests were not one model call"
    # Each request's rows stay together. Concurrent calls may be admitted in any order: each
    # waits for its response headers to be sent before it reaches the batcher.
    runs = [(k, len(list(g))) for k, g in itertools.groupby(probe.calls[1])]
    assert sorted(runs) == [(float(i), n) for i, n in enumerate(sizes, start=1)]


async def test_requests_with_different_trailing_dims_never_share_a_batch(served) -> None:
    shapes: list[tuple[int, ...]] = []
    release = asyncio.Event()
    app = BlazeApp()

    @app.model("seq")
    async def seq(
        x: TensorInput[np.float32, "batch", "seq"],
    ) -> TensorOutput[np.float32, "batch", "seq"]:
        shapes.append(x.shape)
        if (x == -1).any():
            await release.wait()
        return x + 1

    server, client = await served(app)
    blocker = asyncio.create_task(client.predict("seq", x=np.full((1, 2), -1, np.float32)))
    await eventually(lambda: len(shapes) == 1)
    inputs = [np.full((1 + i % 2, 2 if i % 3 else 5), i, np.float32) for i in range(12)]
    tasks = [asyncio.create_task(client.predict("seq", x=x)) for x in inputs]
    await eventually(lambda: queued(server, "seq") == len(inputs))
    release.set()
    await blocker
    for x, task in zip(inputs, tasks, strict=True):
        np.testing.assert_array_equal(await task, x + 1)
    trailing = [shape[1:] for shape in shapes[1:]]
    assert sorted(set(trailing)) == [(2,), (5,)]
    assert len(trailing) == 2, "each trailing shape should be exactly one batch"
    assert sum(s[0] for s in shapes[1:]) == sum(x.shape[0] for x in inputs)


async def test_inputs_disagreeing_on_rows_are_invalid(served) -> None:
    app = BlazeApp()

    @app.model("pair")
    def pair(
        x: TensorInput[np.float32, "batch", 2], w: TensorInput[np.float32, "batch"]
    ) -> TensorOutput[np.float32, "batch"]:
        return x.sum(axis=1) * w

    _, client = await served(app)
    ok = await client.predict("pair", x=np.ones((3, 2), np.float32), w=np.arange(3, dtype="f4"))
    np.testing.assert_array_equal(ok, [0, 2, 4])
    with pytest.raises(ValidationError) as err:
        await client.predict("pair", x=np.ones((3, 2), np.float32), w=np.ones(2, np.float32))
    assert err.value.code is INVALID
    assert "has 2 rows" in str(err.value) and "has 3" in str(err.value)


async def test_wrong_row_count_fails_the_whole_batch(served) -> None:
    release = asyncio.Event()
    app = BlazeApp()

    @app.model("short")
    async def short(x: Rows) -> OutRows:
        if (x == -1).any():
            await release.wait()
            return x
        return x[:-1]  # one row too few

    server, client = await served(app)
    blocker = asyncio.create_task(client.predict("short", x=np.full((1, 3), -1, np.float32)))
    await eventually(lambda: server.stats()["short"].requests == 1)
    tasks = [asyncio.create_task(client.predict("short", x=rows_of(i, 2))) for i in range(3)]
    await eventually(lambda: queued(server, "short") == 3)
    release.set()
    await blocker
    for task in tasks:
        with pytest.raises(InferenceError) as err:
            await task
        assert err.value.code is INTERNAL
        assert "returned 5 rows for a batch of 6 rows" in str(err.value)


# --------------------------------------------------------------------------- batched=True


def list_app(seen: list[list[str]], release: asyncio.Event, **options: Any) -> BlazeApp:
    app = BlazeApp()

    @app.model("shout", batched=True, **options)
    async def shout(text: list[str], times: list[int]) -> list[str]:
        seen.append(list(text))
        if "block" in text:
            await release.wait()
        if "explode" in text:
            raise RuntimeError("the batch fell over")
        if "short" in text:
            return ["x"]
        results: list = []
        for t, n in zip(text, times, strict=True):
            if t == "invalid":
                results.append(ValidationError(f"{t!r} is not allowed"))
            elif t == "broken":
                results.append(KeyError(t))
            else:
                results.append(t.upper() * n)
        return results

    return app


async def queue_list_calls(
    server: Server, client: BlazeClient, release: asyncio.Event, texts: list[str]
) -> tuple[asyncio.Task, list[asyncio.Task]]:
    blocker = asyncio.create_task(client.predict("shout", text="block", times=1))
    await eventually(lambda: server.stats()["shout"].requests == 1)
    tasks = [
        asyncio.create_task(client.predict("shout", text=t, times=i + 1))
        for i, t in enumerate(texts)
    ]
    await eventually(lambda: queued(server, "shout") == len(texts))
    release.set()
    assert await blocker == "BLOCK"
    return blocker, tasks


async def test_batched_model_gets_lists_and_per_item_errors_stay_per_item(served) -> None:
    seen: list[list[str]] = []
    release = asyncio.Event()
    server, client = await served(list_app(seen, release))
    texts = ["a", "invalid", "b", "broken", "c"]
    _, tasks = await queue_list_calls(server, client, release, texts)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert seen == [["block"], texts], "the queued requests were not one call of lists"
    assert results[0] == "A" and results[2] == "BBB" and results[4] == "CCCCC"
    assert isinstance(results[1], ValidationError) and results[1].code is INVALID
    assert str(results[1]) == "'invalid' is not allowed"
    assert isinstance(results[3], InferenceError) and results[3].code is INTERNAL
    assert str(results[3]) == "KeyError: 'broken'"
    assert server.stats()["shout"].batch_sizes == {1: 1, 5: 1}


async def test_batched_model_raising_fails_every_request_of_its_batch(served) -> None:
    seen: list[list[str]] = []
    release = asyncio.Event()
    server, client = await served(list_app(seen, release))
    _, tasks = await queue_list_calls(server, client, release, ["a", "explode", "b"])
    for task in tasks:
        with pytest.raises(InferenceError) as err:
            await task
        assert err.value.code is INTERNAL
        assert str(err.value) == "RuntimeError: the batch fell over"
    assert await client.predict("shout", text="after", times=1) == "AFTER"


async def test_batched_model_returning_wrong_length_fails_the_batch(served) -> None:
    seen: list[list[str]] = []
    release = asyncio.Event()
    server, client = await served(list_app(seen, release))
    _, tasks = await queue_list_calls(server, client, release, ["a", "short", "b"])
    for task in tasks:
        with pytest.raises(InferenceError) as err:
            await task
        assert "returned 1 results for a batch of 3 requests" in str(err.value)


async def test_batched_max_batch_size_counts_requests(served) -> None:
    seen: list[list[str]] = []
    release = asyncio.Event()
    server, client = await served(list_app(seen, release, max_batch_size=2))
    texts = ["a", "b", "c", "d", "e"]
    _, tasks = await queue_list_calls(server, client, release, texts)
    assert await asyncio.gather(*tasks) == [t.upper() * (i + 1) for i, t in enumerate(texts)]
    assert seen[1:] == [["a", "b"], ["c", "d"], ["e"]]


async def test_wrong_batched_usage_is_a_configuration_error() -> None:
    app = BlazeApp()
    with pytest.raises(ConfigurationError, match=r"parameter 'text'.*list\[T\]"):

        @app.model("plain-param", batched=True)
        def plain_param(text: str) -> list[str]:
            return [text]

    with pytest.raises(ConfigurationError, match=r"return annotation.*list\[T\]"):

        @app.model("plain-result", batched=True)
        def plain_result(text: list[str]) -> str:
            return text[0]

    with pytest.raises(ConfigurationError, match="streaming models are never batched"):

        @app.model("streamed", batched=True, streaming=True)
        async def streamed(text: list[str]) -> AsyncIterator[list[str]]:
            yield text

    assert len(app.registry) == 0


# --------------------------------------------------------------------------- adaptive dispatch


async def test_lone_request_is_not_held(probe: Probe, served) -> None:
    server, client = await served(tensor_app(probe, batch_timeout_ms=1000))
    start = time.perf_counter()
    got = await client.predict("tag", x=rows_of(1, 2))
    # Far below the 1 s it would be held; the first call also connects and checks health.
    assert time.perf_counter() - start < 0.5
    np.testing.assert_array_equal(got, transform(rows_of(1, 2)))
    assert server.stats()["tag"].queue_seconds < 0.01  # ran in its caller's task, unqueued


async def test_idle_model_after_a_burst_does_not_wait(probe: Probe, served) -> None:
    server, client = await served(tensor_app(probe, batch_timeout_ms=300))
    calls = [client.predict("tag", x=rows_of(10 + i, 1)) for i in range(8)]
    blocker, tasks = await block_and_queue(server, client, probe, "tag", calls)
    probe.release()
    await asyncio.gather(blocker, *tasks)
    stats = server.stats()["tag"]
    assert stats.batch_sizes == {1: 1, 8: 1}
    # Once batch_timeout_ms has passed without the burst's callers coming back, the model is
    # idle again: the next lone request runs at once.
    await asyncio.sleep(0.35)
    queued_before, start = stats.queue_seconds, time.perf_counter()
    await client.predict("tag", x=rows_of(1, 1))
    assert time.perf_counter() - start < 0.15
    assert stats.queue_seconds - queued_before < 0.01


async def test_wait_for_returning_callers_is_bounded_by_batch_timeout(probe: Probe, served) -> None:
    server, client = await served(tensor_app(probe, delay=0.1, batch_timeout_ms=200))
    calls = [client.predict("tag", x=rows_of(10 + i, 1)) for i in range(8)]
    blocker, tasks = await block_and_queue(server, client, probe, "tag", calls)
    probe.release()
    await eventually(lambda: len(probe.calls) == 2)  # the batch of 8 is running
    start = time.perf_counter()
    await client.predict("tag", x=rows_of(1, 1))  # queued behind it, and nobody follows
    elapsed = time.perf_counter() - start
    await asyncio.gather(blocker, *tasks)
    assert [len(ids) for ids in probe.calls] == [1, 8, 1]
    # At most: the rest of the running batch (0.1 s), the wait for the batch's 8 callers to
    # send again (batch_timeout_ms, 0.2 s), and its own call (0.1 s).
    assert elapsed < 0.6


async def test_lone_request_latency_matches_the_unbatched_path(served) -> None:
    def ident_app(enable_batching: bool) -> BlazeApp:
        app = BlazeApp(enable_batching=enable_batching, batch_timeout_ms=1000)

        @app.model("ident")
        def ident(x: Rows) -> OutRows:
            return x

        return app

    on_server, on = await served(ident_app(True))
    off_server, off = await served(ident_app(False))
    assert "ident" in on_server.stats() and "ident" not in off_server.stats()
    x = rows_of(1, 1)
    latencies: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(200):  # alternate, so drift on a busy machine hits both alike
        for name, client in (("on", on), ("off", off)):
            start = time.perf_counter()
            await client.predict("ident", x=x)
            latencies[name].append(time.perf_counter() - start)
    on_ms = 1000 * statistics.median(latencies["on"][20:])
    off_ms = 1000 * statistics.median(latencies["off"][20:])
    assert on_ms < off_ms + 1.0, f"batched {on_ms:.3f} ms vs unbatched {off_ms:.3f} ms"
    assert on_server.stats()["ident"].batch_sizes == {1: 200}


# --------------------------------------------------------------------------- overload


async def test_full_queue_refuses_at_once_and_admitted_requests_succeed(
    probe: Probe, served
) -> None:
    server, client = await served(tensor_app(probe, max_queue_size=2))
    probe.hold()
    blocker = asyncio.create_task(client.predict("tag", x=rows_of(Probe.BLOCK, 1)))
    await eventually(probe.blocked)
    tasks = [asyncio.create_task(client.predict("tag", x=rows_of(i, 1))) for i in range(20)]
    depths = []
    await eventually(
        lambda: depths.append(queued(server, "tag")) or sum(t.done() for t in tasks) == 18
    )
    assert max(depths) <= 2
    refused = [t for t in tasks if t.done()]
    for task in refused:  # answered while the model is still busy: refused, not buffered
        err = task.exception()
        assert isinstance(err, BlazeRPCError) and err.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queue_size=2" in str(err)
    admitted = [t for t in tasks if not t.done()]
    probe.release()
    await blocker
    for task in admitted:
        await task
    assert len(admitted) == 2
    stats = server.stats()["tag"]
    assert (stats.rejected, stats.queue_depth) == (18, 0)
    assert probe.ids == {Probe.BLOCK} | {float(i) for i, t in enumerate(tasks) if t in admitted}


# --------------------------------------------------------------------------- deadlines, cancel


def request_bytes(app: BlazeApp, model: str, **inputs: object) -> bytes:
    entry = app.registry.get(model)
    codec = Codec(app.schema.request_class(entry.rpc), entry.signature.params)
    return codec.encode(inputs).SerializeToString()


async def test_expired_and_cancelled_requests_never_reach_the_model(probe: Probe, served) -> None:
    app = tensor_app(probe)
    server, client = await served(app)
    probe.hold()
    blocker = asyncio.create_task(client.predict("tag", x=rows_of(Probe.BLOCK, 1)))
    await eventually(probe.blocked)

    expiring = asyncio.create_task(client.with_options(timeout=0.2).predict("tag", x=rows_of(1, 1)))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.unary_unary(path("Tag"))(request_bytes(app, "tag", x=rows_of(2, 1)))
        kept = asyncio.create_task(client.predict("tag", x=rows_of(3, 1)))
        await eventually(lambda: queued(server, "tag") == 3)
        call.cancel()
        assert await call.code() is grpc.StatusCode.CANCELLED
        with pytest.raises(BlazeRPCError) as err:
            await expiring
        assert err.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    probe.release()
    await blocker
    np.testing.assert_array_equal(await kept, transform(rows_of(3, 1)))
    assert probe.ids == {Probe.BLOCK, 3.0}, "an expired or cancelled request reached the model"
    stats = server.stats()["tag"]
    assert (stats.dropped, stats.queue_depth) == (2, 0)


# --------------------------------------------------------------------------- per-model settings


async def test_max_batch_size_caps_the_rows_a_model_sees(probe: Probe, served) -> None:
    server, client = await served(tensor_app(probe, max_batch_size=4))
    sizes = [1, 3, 2, 2, 1, 3, 1]
    calls = [client.predict("tag", x=rows_of(i, n)) for i, n in enumerate(sizes)]
    blocker, tasks = await block_and_queue(server, client, probe, "tag", calls)
    probe.release()
    await blocker
    for i, (n, task) in enumerate(zip(sizes, tasks, strict=True)):
        np.testing.assert_array_equal(await task, transform(rows_of(i, n)))
    rows = [shape[0] for shape in probe.shapes[1:]]
    assert max(rows) == 4 and sum(rows) == sum(sizes)
    assert len(rows) == 4  # oldest first: [1, 3], [2, 2], [1, 3], [1]


async def test_max_concurrent_batches_lets_batches_overlap(served) -> None:
    one, two = Probe(), Probe()

    def slow_app(p: Probe, **options: Any) -> BlazeApp:
        return tensor_app(p, delay=0.1, **options)

    _, c1 = await served(slow_app(one))
    _, c2 = await served(slow_app(two, max_concurrent_batches=2))
    await asyncio.gather(*(c1.predict("tag", x=rows_of(i, 1)) for i in range(4)))
    await asyncio.gather(*(c2.predict("tag", x=rows_of(i, 1)) for i in range(4)))
    assert one.max_active == 1
    assert two.max_active == 2


async def test_enable_batching_false_runs_tensor_models_unbatched(probe: Probe, served) -> None:
    server, client = await served(tensor_app(probe, delay=0.05, enable_batching=False))
    inputs = [rows_of(i, 1 + i % 3) for i in range(8)]
    results = await asyncio.gather(*(client.predict("tag", x=x) for x in inputs))
    for x, got in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(got, transform(x))
    assert server.stats() == {}
    assert sorted(len(ids) for ids in probe.calls) == sorted(x.shape[0] for x in inputs)
    assert all(len(set(ids)) == 1 for ids in probe.calls), "two requests shared a call"
    assert probe.max_active > 1, "unbatched calls should run concurrently"


def unbatchable_app(active: list[int]) -> BlazeApp:
    app = BlazeApp(enable_batching=True)

    async def track() -> None:
        active[0] += 1
        active[1] = max(active[1], active[0])
        await asyncio.sleep(0.1)
        active[0] -= 1

    @app.model("echo")
    async def echo(text: str) -> str:
        await track()
        return text

    @app.model("fixed")  # leading axis is a number, not a name
    async def fixed(x: TensorInput[np.float32, 2, 3]) -> TensorOutput[np.float32, 2, 3]:
        await track()
        return x

    @app.model("reshaped")  # output's leading axis differs from the input's
    async def reshaped(x: Rows) -> TensorOutput[np.float32, "n"]:
        await track()
        return x.ravel()

    @app.model("words", streaming=True)
    async def words(text: str) -> AsyncIterator[str]:
        await track()
        for w in text.split():
            yield w

    return app


async def test_models_that_cannot_batch_run_unbatched_and_concurrently(served) -> None:
    active = [0, 0]
    server, client = await served(unbatchable_app(active))
    assert server.stats() == {}

    async def collect(text: str) -> list[str]:
        return [w async for w in client.stream("words", text=text)]

    start = time.perf_counter()
    results = await asyncio.gather(
        *(client.predict("echo", text=f"t{i}") for i in range(5)),
        *(client.predict("fixed", x=np.full((2, 3), i, np.float32)) for i in range(5)),
        *(client.predict("reshaped", x=rows_of(i, 2)) for i in range(5)),
        *(collect(f"a b {i}") for i in range(5)),
    )
    elapsed = time.perf_counter() - start
    assert results[:5] == [f"t{i}" for i in range(5)]
    assert results[15:] == [["a", "b", str(i)] for i in range(5)]
    assert active[1] == 20 and elapsed < 1.0


def test_serve_banner_says_which_models_batch() -> None:
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("blaze")),
            "serve",
            "tests.apps.batching_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--app-dir",
            str(ROOT),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(6)]  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait(10)
    modes = {
        m.group(1): m.group(2).strip()
        for line in lines
        if (m := re.match(r"\s+(\S+)\s+v1\s+(.*)", line))
    }
    sync = "in threads, inline on the loop while calls take < 100 µs"
    assert modes == {
        "classify": f"unary, batched (up to 16), {sync}",
        "sentiment": f"unary, batched (up to 32), {sync}",
        "echo": "unary, on the event loop",
        "words": "streaming, on the event loop",
    }


# --------------------------------------------------------------------------- statistics


async def test_stats_describe_what_happened(probe: Probe, served) -> None:
    server, client = await served(tensor_app(probe, delay=0.02))
    calls = [client.predict("tag", x=rows_of(i, 2)) for i in range(6)]
    blocker, tasks = await block_and_queue(server, client, probe, "tag", calls)
    assert server.stats()["tag"].queue_depth == 6
    await asyncio.sleep(0.1)
    probe.release()
    await asyncio.gather(blocker, *tasks)
    stats = server.stats()["tag"]
    assert stats.requests == 7
    assert stats.batches == 2
    assert stats.batch_sizes == {1: 1, 6: 1}
    assert stats.mean_batch_size == 3.5
    assert stats.queue_depth == 0
    # Six requests waited >= 0.1 s behind the blocker, which itself never queued.
    assert 6 / 7 * 100 <= stats.mean_queue_ms < 6 / 7 * 1000
    # Two calls: the blocker's (>= 0.12 s) and the batch's (>= 0.02 s).
    assert 70 <= stats.mean_model_ms < 1000


# --- batching never applies to streaming models -------------------------------------------------


async def test_streaming_models_are_never_batched() -> None:
    """Batching is on and the model's tensors have a named leading axis, which would make a
    unary model batch; concurrent streams must still each run alone, side by side."""
    app = BlazeApp(enable_batching=True, max_batch_size=32, batch_timeout_ms=2000)
    calls: list[tuple[int, ...]] = []
    all_started = asyncio.Event()

    @app.model("scale", streaming=True)
    async def scale(
        x: TensorInput[np.float32, "batch", 2],
    ) -> TensorOutput[np.float32, "batch", 2]:
        calls.append(x.shape)
        if len(calls) == 8:
            all_started.set()
        # Every call waits here for all eight: calls run one after another would never finish.
        await asyncio.wait_for(all_started.wait(), 3)
        yield x * 2
        yield x * 3

    async with client_for(app) as client:

        async def one(i: int) -> list[np.ndarray]:
            x = np.array([[i, -i]], np.float32)
            return [a async for a in client.stream("scale", x=x)]

        start = time.monotonic()
        results = await asyncio.gather(*(one(i) for i in range(8)))
        elapsed = time.monotonic() - start
    assert calls == [(1, 2)] * 8  # one request per call, never stacked
    for i, (doubled, tripled) in enumerate(results):
        np.testing.assert_array_equal(doubled, [[2 * i, -2 * i]])
        np.testing.assert_array_equal(tripled, [[3 * i, -3 * i]])
    assert elapsed < 1.5  # no batch window (2 s) was waited for


def test_batched_streaming_model_is_a_configuration_error() -> None:
    app = BlazeApp()
    with pytest.raises(ConfigurationError, match="never batched"):

        @app.model("both", streaming=True, batched=True)  # type: ignore[call-arg]
        async def both(x: list[str]) -> list[str]:
            yield x
