"""Plain `def` models: inline on the loop while measured cheap, in threads the moment one is slow.

The unit tests drive `SyncCalls` on a bare event loop with a model whose clock only its own
calls move, so which call is slow is exact; the server tests call real models over
gRPC and check the guarantee the inline mode must never trade away: a sync model that sleeps
200 ms per call does not delay calls to another model by more than 50 ms.
"""

from __future__ import annotations

import asyncio
import contextvars
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest

from blazerpc import BlazeApp, BlazeClient, Server, TensorInput, TensorOutput
from blazerpc.runtime.executor import (
    BRIEF_STALL_CALLS,
    FIRST_PROOF,
    MAX_PROOF,
    RARE_STALL_CALLS,
    STALLS_FORGIVEN,
    Executor,
    SyncCalls,
)

from .support import running

# Every guarantee holds on uvloop, which `blaze serve` runs on, and on asyncio's own loop.
pytestmark = pytest.mark.both_loops

SLOW_S = 0.2
MAX_DELAY_S = 0.05


def assert_not_delayed(delays: list[float]) -> None:
    """No echo call waited behind a sleeping model.

    A blocked loop would hold most calls for up to 200 ms. On a shared two-core machine a
    stray call can take longer than 50 ms for reasons of its own (the same outliers show with
    every sync model in threads, inline_limit_us=0), so up to 1% of the calls may.
    """
    late = [d for d in delays if d > MAX_DELAY_S]
    assert len(delays) >= 50, f"only {len(delays)} echo calls in the window"
    assert statistics.median(delays) < MAX_DELAY_S / 5
    assert len(late) <= len(delays) // 100, (
        f"{len(late)} of {len(delays)} echo calls waited over 50 ms: "
        + ", ".join(f"{d * 1000:.0f} ms" for d in late)
    )


LIMIT_S = 100e-6


class CostedModel:
    """A plain `def` model on clocks of its own, which only its calls move: each call costs
    `cost_s` of CPU plus `wait_s` asleep (and `collecting_s` of the garbage collector's CPU),
    so the tests decide exactly which calls are slow, whatever else the machine does."""

    def __init__(self) -> None:
        self.now = self.cpu = self.collected = 0.0
        self.cost_s = 10e-6
        self.wait_s = 0.0
        self.collecting_s = 0.0
        self.preemptions = self.waits = 0
        self.preempted_s = 0.0
        self.stolen_s = 0.0  # time the thread lost unseen: a virtual machine's host ran others
        self.fail = False
        self.threads: list[int] = []

    def __call__(self, x: int) -> int:
        self.threads.append(threading.get_ident())
        self.now += self.cost_s + self.wait_s + self.preempted_s + self.collecting_s + self.stolen_s
        self.cpu += self.cost_s + self.collecting_s
        self.collected += self.collecting_s
        self.preemptions += self.preempted_s > 0
        self.waits += self.wait_s > 0
        if self.fail:
            raise ValueError(f"bad x {x}")
        return x + 1

    def calls(self, pool: ThreadPoolExecutor) -> SyncCalls:
        usage = lambda: (self.cpu, self.preemptions, self.waits)  # noqa: E731
        return SyncCalls(
            self,
            pool,
            LIMIT_S,
            clock=lambda: self.now,
            usage=usage,
            collected=lambda: self.collected,
        )

    @property
    def on_the_loop(self) -> bool:
        return self.threads[-1] == threading.get_ident()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as threads:
        yield threads


async def test_cheap_sync_model_moves_inline_after_proving_itself_in_threads(
    pool: ThreadPoolExecutor,
) -> None:
    model = CostedModel()
    call = model.calls(pool)
    for i in range(FIRST_PROOF):
        assert call.mode == "threads"
        assert await call({"x": i}) == i + 1
    assert call.mode == "inline"
    assert await call({"x": 41}) == 42
    loop_thread = threading.get_ident()
    assert loop_thread not in model.threads[:FIRST_PROOF]  # unproven: in the pool
    assert model.threads[-1] == loop_thread  # proven cheap: on the loop's own thread


async def test_one_slow_call_in_threads_restarts_the_proof(pool: ThreadPoolExecutor) -> None:
    model = CostedModel()
    call = model.calls(pool)
    for i in range(FIRST_PROOF - 1):
        await call({"x": i})
    model.cost_s = 2 * LIMIT_S
    await call({"x": 0})
    model.cost_s = 10e-6
    for i in range(FIRST_PROOF - 1):
        await call({"x": i})
        assert not call.inline
    await call({"x": 0})
    assert call.inline


async def test_one_slow_inline_call_sends_the_model_back_to_threads_for_longer(
    pool: ThreadPoolExecutor,
) -> None:
    model = CostedModel()
    call = model.calls(pool)
    for i in range(FIRST_PROOF):
        await call({"x": i})
    assert call.inline
    model.cost_s = 0.2
    assert await call({"x": 7}) == 8  # ran inline, found slow
    assert model.on_the_loop
    assert not call.inline and call.demotions == 1
    for i in range(10 * FIRST_PROOF):  # slow calls never earn the loop back
        await call({"x": i})
        assert not model.on_the_loop
    model.cost_s = 10e-6
    for i in range(2 * FIRST_PROOF - 1):  # cheap again: twice the proof, this time
        await call({"x": i})
        assert not call.inline
    await call({"x": 0})
    assert call.inline


async def test_the_proof_doubles_at_each_demotion_up_to_a_cap(pool: ThreadPoolExecutor) -> None:
    """However often noise sends a cheap model back to threads over a long life, it earns the
    loop back within MAX_PROOF calls."""
    model = CostedModel()
    call = model.calls(pool)
    proof = FIRST_PROOF
    for demotion in range(1, 9):
        model.cost_s = 10e-6
        calls = 0
        while not call.inline:
            await call({"x": 0})
            calls += 1
        assert calls == proof
        model.cost_s = 0.2
        await call({"x": 0})
        assert call.demotions == demotion
        proof = min(2 * proof, MAX_PROOF)
    assert proof == MAX_PROOF


async def test_a_model_that_waits_never_runs_inline(pool: ThreadPoolExecutor) -> None:
    model = CostedModel()
    model.wait_s = SLOW_S  # asleep, or waiting on I/O: no CPU, and far beyond a GIL hand-back
    call = model.calls(pool)
    for i in range(10 * FIRST_PROOF):
        await call({"x": i})
        assert not model.on_the_loop
    assert call.demotions == 0


async def test_a_short_wait_is_forgiven_in_threads_but_not_on_the_loop(
    pool: ThreadPoolExecutor,
) -> None:
    model = CostedModel()
    model.wait_s = 0.002  # within the time a thread may wait to get the GIL back
    call = model.calls(pool)
    for i in range(FIRST_PROOF):
        await call({"x": i})
    assert call.inline
    await call({"x": 0})
    assert model.on_the_loop and call.inline  # one 2 ms stall on the loop: maybe noise
    await call({"x": 0})
    assert model.on_the_loop  # the second, at once: a pattern
    assert not call.inline and call.demotions == 1


async def test_an_inline_call_slowed_by_preemption_is_not_held_against_the_model(
    pool: ThreadPoolExecutor,
) -> None:
    model = CostedModel()
    call = model.calls(pool)
    for i in range(FIRST_PROOF):
        await call({"x": i})
    model.preempted_s = 0.02  # the OS ran another process meanwhile: not the model's doing
    for i in range(5):
        await call({"x": i})
        assert model.on_the_loop and call.inline
    model.cost_s = 5 * LIMIT_S  # preempted, but it also computed for too long itself
    await call({"x": 0})
    assert not call.inline and call.demotions == 1


async def test_time_taken_from_a_cheap_call_unseen_is_not_held_against_the_model(
    pool: ThreadPoolExecutor,
) -> None:
    """On a virtual machine the host can run something else on the core a call is using: the
    call's wall time grows, with no context switch the guest can see. A call that never
    waited and used little CPU did not hold the loop itself."""
    model = CostedModel()
    call = model.calls(pool)
    for i in range(FIRST_PROOF):
        await call({"x": i})
    model.stolen_s = 0.02
    for i in range(5 * STALLS_FORGIVEN):  # one after another, far beyond any forgiven stall
        await call({"x": i})
        assert model.on_the_loop and call.inline
    model.cost_s = 2 * LIMIT_S  # time taken from it, but it also computed for too long itself
    for _ in range(STALLS_FORGIVEN + 1):
        await call({"x": 0})
    assert not call.inline and call.demotions == 1


async def test_the_garbage_collectors_time_in_a_call_is_not_held_against_the_model(
    pool: ThreadPoolExecutor,
) -> None:
    """A collection runs in whichever call allocates when one is due: under load a cheap
    model's call holds one every few dozen calls, and would otherwise be sent to threads."""
    model = CostedModel()
    call = model.calls(pool)
    model.collecting_s = 0.001  # in threads too: every call collects, yet proves itself cheap
    for i in range(FIRST_PROOF):
        await call({"x": i})
    assert call.inline
    for i in range(5):  # one collection after another, far beyond any forgiven stall
        await call({"x": i})
        assert model.on_the_loop and call.inline
    model.cost_s = 0.02  # collecting, but also computing for too long itself
    await call({"x": 0})
    assert not call.inline and call.demotions == 1


async def test_a_sleeping_call_that_was_also_preempted_still_sends_the_model_to_threads(
    pool: ThreadPoolExecutor,
) -> None:
    model = CostedModel()
    call = model.calls(pool)
    for i in range(FIRST_PROOF + RARE_STALL_CALLS):
        await call({"x": i})
    model.wait_s, model.preempted_s = SLOW_S, 0.001
    await call({"x": 0})
    assert not call.inline and call.demotions == 1
    for i in range(10 * FIRST_PROOF):  # nor does it earn the loop back
        await call({"x": i})
        assert not model.on_the_loop


async def test_rare_short_stalls_are_forgiven_but_not_a_run_of_them(
    pool: ThreadPoolExecutor,
) -> None:
    """A stall of a few ms now and then (another thread held the GIL numpy had let go of, or
    the machine interrupted the call) is forgiven: one per RARE_STALL_CALLS inline calls,
    saved up to STALLS_FORGIVEN. A run of them is a model that has turned slow."""
    model = CostedModel()
    call = model.calls(pool)
    for i in range(FIRST_PROOF):
        await call({"x": i})
    model.wait_s = 0.002
    await call({"x": 0})  # one is forgiven on going inline
    assert call.inline
    await call({"x": 0})  # but not a second, so soon
    assert not call.inline and call.demotions == 1
    model.wait_s = 0.0
    for i in range(2 * FIRST_PROOF):
        await call({"x": i})
    assert call.inline
    for _ in range(10):  # stalls at half the forgiven rate: all forgiven
        for i in range(2 * RARE_STALL_CALLS - 1):
            await call({"x": i})
        model.wait_s = 0.002
        await call({"x": 0})
        model.wait_s = 0.0
        assert call.inline
    for i in range(STALLS_FORGIVEN * RARE_STALL_CALLS):  # credit saved up to the full
        await call({"x": i})
    model.wait_s = 0.002  # now one after another: the credit saved up runs out
    stalls = 0
    while call.inline:
        await call({"x": 0})
        stalls += 1
    assert stalls == STALLS_FORGIVEN + 1 and call.demotions == 2


async def test_brief_stalls_are_forgiven_more_often_than_longer_ones(
    pool: ThreadPoolExecutor,
) -> None:
    """A call over the limit but within a few thread hops' time (PREEMPTED_MARGIN times it)
    costs the loop little: one per BRIEF_STALL_CALLS inline calls is forgiven, where a longer
    one needs RARE_STALL_CALLS. A model that turns slow still goes back to threads."""

    async def cheap_then_one(cost_s: float) -> None:
        for i in range(2 * BRIEF_STALL_CALLS - 1):
            await call({"x": i})
        model.cost_s = cost_s
        await call({"x": 0})
        model.cost_s = 10e-6

    model = CostedModel()
    call = model.calls(pool)
    for i in range(FIRST_PROOF):
        await call({"x": i})
    for _ in range(10):  # brief stalls at half their forgiven rate: all forgiven
        await cheap_then_one(2 * LIMIT_S)
        assert call.inline
    stalls = 0
    while call.inline and stalls < 100:  # 2 ms stalls at that rate: the credit runs out
        await cheap_then_one(0.002)
        stalls += 1
    assert stalls == STALLS_FORGIVEN and call.demotions == 1  # 3 saved up, and some earned
    for i in range(2 * FIRST_PROOF):
        await call({"x": i})
    assert call.inline
    model.cost_s = 2 * LIMIT_S  # every call now over the limit: brief, but a pattern
    stalls = 0
    while call.inline and stalls < 100:
        await call({"x": 0})
        stalls += 1
    assert stalls <= STALLS_FORGIVEN + 1 and call.demotions == 2


async def test_in_threads_a_preempted_call_neither_proves_nor_disproves_anything(
    pool: ThreadPoolExecutor,
) -> None:
    model = CostedModel()
    call = model.calls(pool)
    for i in range(FIRST_PROOF - 1):
        await call({"x": i})
    model.preempted_s = 0.05  # far beyond a GIL wait, but the OS ran another process
    for i in range(10):
        await call({"x": i})
        assert not call.inline
    model.preempted_s = 0.0
    await call({"x": 0})
    assert call.inline  # the streak of 31 cheap calls survived, and this one completed it


async def test_errors_of_inline_and_threaded_calls_reach_the_caller(
    pool: ThreadPoolExecutor,
) -> None:
    model = CostedModel()
    call = model.calls(pool)
    model.fail = True
    with pytest.raises(ValueError, match="bad x 3"):
        await call({"x": 3})  # in a thread
    model.fail = False
    for i in range(FIRST_PROOF):
        assert await call({"x": i}) == i + 1
    assert call.inline
    model.fail = True
    with pytest.raises(ValueError, match="bad x 4"):
        await call({"x": 4})  # inline
    assert call.inline  # a fast failure is still a fast call
    model.cost_s = 0.2
    with pytest.raises(ValueError, match="bad x 5"):
        await call({"x": 5})
    assert not call.inline  # a slow failure is a slow call


async def test_inline_limit_zero_keeps_every_call_in_threads() -> None:
    executor = Executor(max_threads=2, inline_limit_s=0)
    seen: list[int] = []

    def model(x: int) -> int:
        seen.append(threading.get_ident())
        return x

    call = executor.invoker(model)
    try:
        for i in range(3 * FIRST_PROOF):
            await call({"x": i})
    finally:
        executor.shutdown()
    assert threading.get_ident() not in seen


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


async def test_calls_and_streams_in_threads_see_the_callers_context_variables() -> None:
    """Middleware sets a trace or request id in the caller's context; a plain `def` model and
    a sync generator in the pool see it as an inline call or an async model would."""
    executor = Executor(max_threads=2, inline_limit_s=0)

    def model() -> str:
        return request_id.get()

    def chunks() -> Iterator[str]:
        yield request_id.get()
        yield request_id.get()

    try:
        request_id.set("r-1")
        assert await executor.invoker(model)({}) == "r-1"
        assert [c async for c in executor.streamer(chunks)({})] == ["r-1", "r-1"]
    finally:
        executor.shutdown()


# --- over gRPC ---------------------------------------------------------------------------


def two_models_app() -> BlazeApp:
    """`echo` (cheap, plain def) and `sleepy` (plain def, slow on demand)."""
    app = BlazeApp()
    app.state.sleep_s = 0.0
    app.state.threads = {}
    app.state.sleepy_threads = set()

    @app.model("echo")
    def echo(text: str) -> str:
        app.state.threads["echo"] = threading.get_ident()
        return text

    @app.model("sleepy")
    def sleepy(n: int) -> int:
        app.state.threads["sleepy"] = threading.get_ident()
        app.state.sleepy_threads.add(threading.get_ident())
        if app.state.sleep_s:  # even sleep(0) lets go of the GIL, and getting it back is slow
            time.sleep(app.state.sleep_s)
        return n

    @app.model("scale")
    def scale(x: TensorInput[np.float32, "batch", 4]) -> TensorOutput[np.float32, "batch", 4]:
        return x * 2

    return app


async def until_inline(server: Server, model: str, call: Callable[[], Awaitable[Any]]) -> int:
    """Call a cheap model until it runs inline, and once more there; how many calls it took.
    (A call preempted by other work on the machine restarts the proof, hence the loop.)"""
    for calls in range(1, 20 * FIRST_PROOF):
        await call()
        if server.modes()[model] == "inline":
            await call()
            return calls
    raise AssertionError(f"{model} never ran inline")


async def echo_delays(client: BlazeClient, duration_s: float) -> list[float]:
    """Latencies of back-to-back echo calls for `duration_s`."""
    delays = []
    stop = time.perf_counter() + duration_s
    while time.perf_counter() < stop:
        start = time.perf_counter()
        assert await client.predict("echo", text="hi") == "hi"
        delays.append(time.perf_counter() - start)
    return delays


async def keep_sleeping(client: BlazeClient, until: asyncio.Event) -> int:
    calls = 0
    while not until.is_set():
        assert await client.predict("sleepy", n=calls) == calls
        calls += 1
    return calls


async def test_a_slow_sync_model_never_delays_another_model_by_more_than_50ms() -> None:
    app = two_models_app()
    app.state.sleep_s = SLOW_S
    async with running(app) as server, BlazeClient("127.0.0.1", server.port) as client:
        # echo earns its place on the loop
        assert await until_inline(server, "echo", lambda: client.predict("echo", text="w")) >= (
            FIRST_PROOF
        )
        done = asyncio.Event()
        sleepers = [asyncio.create_task(keep_sleeping(client, done)) for _ in range(3)]
        await asyncio.sleep(0.05)
        delays = await echo_delays(client, 1.0)
        done.set()
        slow_calls = sum(await asyncio.gather(*sleepers))
        sleepy_mode = server.modes()["sleepy"]
    assert slow_calls >= 3 * 3  # the sleepers really were sleeping all along, in parallel
    assert sleepy_mode == "threads"
    assert threading.get_ident() not in app.state.sleepy_threads  # never once on the loop
    assert_not_delayed(delays)


async def test_a_model_that_turns_slow_stalls_the_loop_once_then_runs_in_threads() -> None:
    app = two_models_app()
    async with running(app) as server, BlazeClient("127.0.0.1", server.port) as client:
        await until_inline(server, "sleepy", lambda: client.predict("sleepy", n=0))
        loop_thread = threading.get_ident()
        assert app.state.threads["sleepy"] == loop_thread
        app.state.sleep_s = SLOW_S
        app.state.sleepy_threads.clear()
        start = time.perf_counter()
        assert await client.predict("sleepy", n=1) == 1  # the one call found slow, inline
        assert time.perf_counter() - start >= SLOW_S
        assert server.modes()["sleepy"] == "threads"
        app.state.sleepy_threads.clear()
        done = asyncio.Event()
        sleepers = [asyncio.create_task(keep_sleeping(client, done)) for _ in range(2)]
        await asyncio.sleep(0.05)
        delays = await echo_delays(client, 0.8)
        done.set()
        await asyncio.gather(*sleepers)
        assert loop_thread not in app.state.sleepy_threads  # never again on the loop
    assert_not_delayed(delays)


async def test_batched_sync_tensor_model_runs_inline_once_cheap_and_stays_correct() -> None:
    app = two_models_app()
    async with running(app) as server, BlazeClient("127.0.0.1", server.port) as client:
        x = np.arange(8, dtype=np.float32).reshape(2, 4)

        async def scale() -> None:
            np.testing.assert_array_equal(await client.predict("scale", x=x), x * 2)

        await until_inline(server, "scale", scale)
        assert "scale" in server.stats()  # still batched, through the batcher
        results = await asyncio.gather(
            *(client.predict("scale", x=np.full((1, 4), i, np.float32)) for i in range(40))
        )
    for i, y in enumerate(results):
        np.testing.assert_array_equal(y, np.full((1, 4), 2 * i, np.float32))


async def test_stock_grpc_client_sees_the_same_answers_inline_and_in_threads() -> None:
    app = two_models_app()
    schema = app.schema
    request_cls, response_cls = schema.request_class("Echo"), schema.response_class("Echo")
    async with (
        running(app) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        call = channel.unary_unary(
            "/blazerpc.InferenceService/PredictEcho",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        modes = []
        for i in range(20 * FIRST_PROOF):
            reply = await call(request_cls(text=f"t{i}"), timeout=5)
            assert reply.result == f"t{i}"
            modes.append(server.modes()["echo"])
    assert modes[0] == "threads" and "inline" in modes
