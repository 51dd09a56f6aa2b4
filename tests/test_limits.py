"""Transport limits: message size, concurrent streams per connection, keepalive."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from blazerpc import BlazeApp, BlazeClient, BlazeRPCError, StatusCode
from blazerpc.server.server import Limits

from .processes import blaze_serve, exits_within, wait_serving
from .support import client_for, free_port

MB = 1024 * 1024


def echo_app(**settings: float) -> BlazeApp:
    app = BlazeApp(**settings)
    app.state.running = app.state.peak = 0

    @app.model("echo")
    async def echo(text: str) -> str:
        return text

    @app.model("repeat")
    async def repeat(text: str, times: int) -> str:
        return text * times

    @app.model("slow")
    async def slow(seconds: float) -> str:
        app.state.running += 1
        app.state.peak = max(app.state.peak, app.state.running)
        await asyncio.sleep(seconds)
        app.state.running -= 1
        return "done"

    return app


async def code_of(call) -> StatusCode:
    try:
        await call
    except BlazeRPCError as exc:
        return exc.code
    return StatusCode.OK


async def test_oversized_messages_are_refused_and_the_server_keeps_serving() -> None:
    async with client_for(echo_app(max_message_mb=1)) as client:
        assert await code_of(client.predict("echo", text="x" * (2 * MB))) is (
            StatusCode.RESOURCE_EXHAUSTED
        )
        assert await code_of(client.predict("repeat", text="x", times=2 * MB)) is (
            StatusCode.RESOURCE_EXHAUSTED
        )
        assert await client.predict("echo", text="y" * (MB // 2)) == "y" * (MB // 2)
        assert await client.predict("echo", text="ok") == "ok"


async def test_the_default_message_limit_is_64_mb() -> None:
    assert BlazeApp().limits.max_message_bytes == 64 * MB
    async with client_for(echo_app()) as client:
        assert len(await client.predict("echo", text="z" * (8 * MB))) == 8 * MB


async def test_blaze_serve_max_message_mb() -> None:
    port = free_port()
    with blaze_serve("--port", str(port), "--max-message-mb", "1") as proc:
        wait_serving(port, proc)
        async with BlazeClient("127.0.0.1", port) as client:
            assert await code_of(client.predict("echo", text="x" * (2 * MB))) is (
                StatusCode.RESOURCE_EXHAUSTED
            )
            assert await client.predict("echo", text="still here") == "still here"
        proc.send_signal(signal.SIGTERM)
        assert exits_within(proc, 10) == 0


async def test_concurrent_streams_per_connection_are_capped() -> None:
    """Streams over the cap wait in the client or are refused with UNAVAILABLE (grpc-core
    answers REFUSED_STREAM, which is safe to retry); the model never sees more."""
    app = echo_app()
    app.limits = replace(app.limits, max_concurrent_streams=2)
    async with client_for(app) as client:  # one client, one HTTP/2 connection
        await client.predict("echo", text="warm")
        calls = [code_of(client.predict("slow", seconds=0.2)) for _ in range(8)]
        codes = await asyncio.gather(*calls)
        assert set(codes) <= {StatusCode.OK, StatusCode.UNAVAILABLE}
        assert codes.count(StatusCode.OK) >= 2
        # The client's health check (balancing.py) keeps a Watch stream open on the connection.
        assert app.state.peak == 2 - 1
        assert await client.predict("echo", text="after") == "after"


async def test_default_stream_cap_admits_a_busy_connection() -> None:
    app = echo_app()
    everyone_in = asyncio.Event()

    @app.model("together")
    async def together(n: int) -> int:
        app.state.running += 1
        if app.state.running == n:
            everyone_in.set()
        await asyncio.wait_for(everyone_in.wait(), 10)  # fails unless all n run at once
        return app.state.running

    async with client_for(app) as client:
        calls = [client.predict("together", n=64) for _ in range(64)]
        assert await asyncio.gather(*calls) == [64] * 64


@pytest.mark.parametrize("reuse_port", [False, True])
def test_default_limits_become_server_options(reuse_port: bool) -> None:
    options = dict(Limits().grpc_options(reuse_port))
    assert options == {
        "grpc.max_receive_message_length": 64 * MB,
        "grpc.max_send_message_length": 64 * MB,
        "grpc.max_concurrent_streams": 256,
        "grpc.keepalive_time_ms": 60_000,
        "grpc.keepalive_timeout_ms": 20_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.min_ping_interval_without_data_ms": 10_000,
        "grpc.so_reuseport": int(reuse_port),
    }


def overload_app() -> BlazeApp:
    app = BlazeApp(max_queue_size=4)
    app.state.release = None

    @app.model("sync-slow")
    def sync_slow(seconds: float) -> str:
        import time

        time.sleep(seconds)
        return "done"

    @app.model("async-slow")
    async def async_slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    @app.model("drip", streaming=True, max_queue_size=2)
    async def drip(seconds: float) -> AsyncIterator[str]:
        await asyncio.sleep(seconds)
        yield "done"

    return app


@pytest.mark.parametrize(("model", "limit"), [("sync-slow", 4), ("async-slow", 4), ("drip", 2)])
async def test_models_that_do_not_batch_refuse_calls_past_max_queue_size_at_once(
    model: str, limit: int
) -> None:
    """Past the bound, RESOURCE_EXHAUSTED comes at once, not after waiting for a deadline;
    the calls admitted all complete, and once they have, the model admits calls again."""
    async with client_for(overload_app()) as client:

        def call(seconds: float):
            if model == "drip":
                return client.stream(model, seconds=seconds).__anext__()
            return client.predict(model, seconds=seconds)

        loop = asyncio.get_running_loop()
        admitted = [asyncio.ensure_future(call(1.0)) for _ in range(limit)]
        await asyncio.sleep(0.3)  # every admitted call has reached the model
        start = loop.time()
        assert await code_of(call(1.0)) is StatusCode.RESOURCE_EXHAUSTED
        assert loop.time() - start < 0.5
        assert [await c for c in admitted] == ["done"] * limit
        assert await call(0) == "done"
