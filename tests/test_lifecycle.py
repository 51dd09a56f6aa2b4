"""Start-up, hooks and graceful drain, against `blaze serve` processes and in-process servers."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blazerpc import BlazeApp, BlazeClient, BlazeRPCError, ConfigurationError, Context

from .processes import (
    NOT_SERVING,
    SERVING,
    blaze_serve,
    exits_within,
    health,
    wait_serving,
    wait_until,
)
from .protocol_servers import Reply, http
from .support import free_port


async def _refused(port: int, model: str = "echo", **inputs: object) -> grpc.StatusCode:
    """The status a new connection's call gets; fails the test if the call succeeds."""
    async with BlazeClient("127.0.0.1", port, timeout=2) as client:
        with pytest.raises(BlazeRPCError) as info:
            await client.predict(model, **(inputs or {"text": "x"}))
    return info.value.code


async def _until_refused(port: int) -> grpc.StatusCode:
    """Poll health with a Check on a new connection, as a probe does, until the drain has
    closed the listener; it must never answer SERVING meanwhile."""
    for _ in range(100):
        status = await asyncio.to_thread(health, port)
        assert status != SERVING
        if status == grpc.StatusCode.UNAVAILABLE:
            return status
        await asyncio.sleep(0.02)
    raise AssertionError("the listener stayed open during the drain")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_drains_32_calls_in_flight(signum: int) -> None:
    port, grace = free_port(), 10.0
    with blaze_serve("--port", str(port), "--grace-period", str(grace)) as proc:
        wait_serving(port, proc)
        async with (
            BlazeClient("127.0.0.1", port) as client,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == SERVING
            assert await client.predict("echo", text="warm") == "warm"
            calls = [asyncio.create_task(client.predict("slow", seconds=1.5)) for _ in range(32)]
            await asyncio.sleep(0.3)

            signalled = time.monotonic()
            proc.send_signal(signum)
            update = await asyncio.wait_for(watch.read(), 1.0)
            assert update.status == NOT_SERVING
            watch.cancel()  # a watcher that stays would hold the drain open (see test below)

            # What a Kubernetes probe and a new client see once the listener has closed (a call
            # racing the GOAWAY on an old connection may end CANCELLED: see docs/deployment.md).
            assert await _until_refused(port) == grpc.StatusCode.UNAVAILABLE
            assert await _refused(port) == grpc.StatusCode.UNAVAILABLE
            assert not any(c.done() for c in calls), "the drain ran while calls were in flight"
            assert await asyncio.gather(*calls) == ["done"] * 32

        assert exits_within(proc, grace) == 0
        assert time.monotonic() - signalled < grace


async def collect(chunks: AsyncIterator[int]) -> list[int]:
    return [chunk async for chunk in chunks]


async def test_sigterm_drains_streams_in_flight() -> None:
    port = free_port()
    with blaze_serve("--port", str(port), "--grace-period", "10") as proc:
        wait_serving(port, proc)
        async with BlazeClient("127.0.0.1", port) as client:
            streams = [client.stream("count", n=6, delay=0.2) for _ in range(4)]
            firsts = [await s.__anext__() for s in streams]
            proc.send_signal(signal.SIGTERM)
            rests = [await collect(s) for s in streams]
        assert [[first, *rest] for first, rest in zip(firsts, rests, strict=True)] == [
            list(range(6))
        ] * 4
        assert exits_within(proc, 10) == 0


async def test_sigterm_drains_requests_queued_for_a_batch() -> None:
    port = free_port()
    with blaze_serve("--port", str(port), "--grace-period", "10") as proc:
        wait_serving(port, proc)
        async with BlazeClient("127.0.0.1", port) as client:
            await client.predict("echo", text="warm")
            first = asyncio.create_task(client.predict("batch-size", seconds=1.0))
            await asyncio.sleep(0.2)  # the model is busy with `first`; these queue behind it
            queued = [
                asyncio.create_task(client.predict("batch-size", seconds=0.2)) for _ in range(15)
            ]
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            assert await first == 1
            assert await asyncio.gather(*queued) == [15] * 15
        assert exits_within(proc, 10) == 0


@pytest.mark.parametrize("model", ["slow", "slow-sync"])
async def test_calls_still_running_after_the_grace_period_are_cancelled(model: str) -> None:
    port = free_port()
    with blaze_serve("--port", str(port), "--grace-period", "0.5") as proc:
        wait_serving(port, proc)
        async with BlazeClient("127.0.0.1", port) as client:
            await client.predict("echo", text="warm")
            calls = [asyncio.create_task(client.predict(model, seconds=30)) for _ in range(3)]
            await asyncio.sleep(0.2)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, BlazeRPCError) for r in results), results
        assert {r.code for r in results} == {grpc.StatusCode.UNAVAILABLE}
        assert time.monotonic() - signalled < 3
        # A model thread that is still sleeping must not keep the process alive.
        assert exits_within(proc, 5) == 0


async def test_health_watch_does_not_hold_the_drain_open() -> None:
    """gRPC clients with client-side health checking keep a Watch open for good; the drain
    must not wait the whole grace period for those streams."""
    port = free_port()
    with blaze_serve("--port", str(port), "--grace-period", "5") as proc:
        wait_serving(port, proc)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == SERVING
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert (await asyncio.wait_for(watch.read(), 0.5)).status == NOT_SERVING
            exits_within(proc, 10)
        assert time.monotonic() - signalled < 3


async def test_hooks_run_and_health_waits_for_startup(tmp_path: Path) -> None:
    port = free_port()
    env = {"BLAZE_TEST_HOOK_DIR": str(tmp_path), "BLAZE_TEST_STARTUP_DELAY": "1.5"}
    with blaze_serve("--port", str(port), env=env) as proc:
        answered = wait_until(
            lambda: (s := health(port)) != grpc.StatusCode.UNAVAILABLE and s,
            what="the health service to answer",
        )
        assert answered == NOT_SERVING  # bound, but the start-up hook is still loading
        assert await _refused(port) == grpc.StatusCode.UNAVAILABLE
        wait_serving(port, proc)
        pid = proc.pid  # `blaze serve` without workers serves in its own process
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            f"startup-async-{pid}",
            f"startup-sync-{pid}",
        ]
        async with BlazeClient("127.0.0.1", port) as client:
            assert await client.predict("pid") == pid
        proc.send_signal(signal.SIGTERM)
        assert exits_within(proc, 10) == 0
        assert {p.name for p in tmp_path.iterdir()} >= {
            f"shutdown-async-{pid}",
            f"shutdown-sync-{pid}",
        }


async def _health_when_answered(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(200):
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.02)
                continue
            return reply.status
    raise AssertionError("the health service never answered")


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_model_calls_refused_while_a_startup_hook_runs(kind: str) -> None:
    app = BlazeApp()
    calls: list[str] = []
    release_sync, release_async = threading.Event(), asyncio.Event()

    @app.model("echo")
    async def echo(text: str) -> str:
        calls.append(text)
        return text

    if kind == "sync":

        @app.on_startup
        def load() -> None:
            assert release_sync.wait(10)

    else:

        @app.on_startup
        async def load() -> None:
            await release_async.wait()

    port = free_port()
    starting = asyncio.create_task(app.start(port=port))
    try:
        assert await _health_when_answered(port) == NOT_SERVING
        assert await _refused(port) == grpc.StatusCode.UNAVAILABLE
        assert not starting.done() and calls == []
    finally:
        release_sync.set()
        release_async.set()
        server = await starting
    try:
        assert await _health_when_answered(port) == SERVING
        async with BlazeClient("127.0.0.1", port) as client:
            assert await client.predict("echo", text="hi") == "hi"
        assert calls == ["hi"]
    finally:
        await server.stop(1)


async def test_in_process_stop_drains_then_runs_shutdown_hooks() -> None:
    app = BlazeApp()
    events: list[str] = []

    @app.model("slow")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        events.append("call finished")
        return "done"

    @app.on_shutdown
    def closed() -> None:
        events.append("shutdown hook")

    server = await app.start(port=0)
    async with BlazeClient("127.0.0.1", server.port) as client:
        calls = [asyncio.create_task(client.predict("slow", seconds=0.5)) for _ in range(8)]
        await asyncio.sleep(0.2)
        await server.stop(5)
        assert await asyncio.gather(*calls) == ["done"] * 8
    assert events == ["call finished"] * 8 + ["shutdown hook"]


async def test_lifespan_wraps_the_hooks_and_serving() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: BlazeApp) -> AsyncIterator[None]:
        events.append("lifespan start-up")
        app.state.greeting = "hello"
        yield
        events.append("lifespan shut-down")

    app = BlazeApp(lifespan=lifespan)

    @app.model("greet")
    async def greet(name: str, context: Context) -> str:
        return f"{context.app_state.greeting} {name}"

    app.on_startup(lambda: events.append("on_startup"))
    app.on_shutdown(lambda: events.append("on_shutdown"))
    server = await app.start(port=0)
    async with BlazeClient("127.0.0.1", server.port) as client:
        assert await client.predict("greet", name="ada") == "hello ada"
    events.append("served")
    await server.stop(1)
    assert events == [
        "lifespan start-up",
        "on_startup",
        "served",
        "on_shutdown",
        "lifespan shut-down",
    ]


async def test_every_shutdown_step_runs_and_the_first_failure_is_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = BlazeApp()
    ran: list[str] = []

    @app.on_shutdown
    def first() -> None:
        ran.append("first")
        raise RuntimeError("first hook broke")

    @app.on_shutdown
    async def second() -> None:
        ran.append("second")
        raise ValueError("second hook broke")

    @app.on_shutdown
    def third() -> None:
        ran.append("third")

    server = await app.start(port=0)
    with pytest.raises(RuntimeError, match="first hook broke"):
        await server.stop(1)
    assert ran == ["first", "second", "third"]
    assert "second hook broke" in caplog.text
    assert _port_is_free(server.port)  # the earlier failure stopped nothing after it


async def test_a_failed_startup_raises_its_own_error_not_the_shutdowns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = BlazeApp()
    port = free_port()
    ran: list[str] = []

    @app.on_startup
    def load() -> None:
        raise FileNotFoundError("weights.bin")

    @app.on_shutdown
    def release() -> None:
        ran.append("release")
        raise RuntimeError("nothing to release")

    with pytest.raises(FileNotFoundError, match=r"weights\.bin"):
        await app.start(port=port)
    assert ran == ["release"]
    assert "nothing to release" in caplog.text
    assert _port_is_free(port)


async def test_a_failed_http_bind_leaves_no_grpc_server_behind() -> None:
    app = BlazeApp()
    shut_down: list[bool] = []
    app.on_shutdown(lambda: shut_down.append(True))

    @app.model("echo")
    async def echo(text: str) -> str:
        return text

    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigurationError, match="HTTP"):
            await app.start(port=port, http_port=taken.getsockname()[1])
    assert _port_is_free(port)
    assert shut_down == []  # start-up never ran, so there is nothing to shut down


@pytest.mark.parametrize("grace", [None, 0])
async def test_no_grace_cancels_grpc_and_http_calls_at_once(grace: float | None) -> None:
    app = BlazeApp()
    started = asyncio.Event()

    @app.model("hang")
    async def hang(n: int) -> int:
        started.set()
        await asyncio.sleep(60)
        return n

    server = await app.start(port=0, http_port=0)
    call = {"jsonrpc": "2.0", "method": "predict.hang", "params": {"n": 1}, "id": 1}
    async with BlazeClient("127.0.0.1", server.port) as client:
        over_grpc = asyncio.create_task(client.predict("hang", n=1))
        over_http = asyncio.create_task(http(f"http://127.0.0.1:{server.http_port}/jsonrpc", call))
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(0.1)
        begun = time.monotonic()
        await asyncio.wait_for(server.stop(grace), 10)
        assert time.monotonic() - begun < 5
        results = await asyncio.gather(over_grpc, over_http, return_exceptions=True)
    assert isinstance(results[0], BlazeRPCError)
    assert not isinstance(results[1], Reply) or results[1].status != 200


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_a_failed_grpc_bind_leaves_no_http_server_behind() -> None:
    app = BlazeApp()
    http_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigurationError, match="cannot listen"):
            await app.start(port=taken.getsockname()[1], http_port=http_port)
    assert _port_is_free(http_port)
