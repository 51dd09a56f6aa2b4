"""Prometheus metrics on their own HTTP port, scraped for real with urllib.

Metric objects are process-wide, so each test here uses model names no other test uses.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable

import pytest

from blazerpc import BlazeApp, BlazeClient, BlazeRPCError, RPCError, StatusCode, ValidationError
from blazerpc.server.middleware import MetricsMiddleware

from .processes import blaze_serve, exits_within, sample, scrape, wait_serving
from .support import free_port, path


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def test_requests_durations_and_batches_are_counted() -> None:
    metrics_port = free_port()
    # The app adds MetricsMiddleware itself; one given explicitly must not count twice.
    app = BlazeApp(metrics_port=metrics_port, middleware=[MetricsMiddleware()])

    @app.model("metered")
    async def metered(text: str) -> str:
        if text == "bad":
            raise ValidationError("bad text")
        if text == "deny":
            raise RPCError(StatusCode.PERMISSION_DENIED, "no")
        return text

    @app.model("metered-stream", streaming=True)
    async def metered_stream(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @app.model("metered-batch", batched=True)
    async def metered_batch(seconds: list[float]) -> list[int]:
        await asyncio.sleep(max(seconds))
        return [len(seconds)] * len(seconds)

    server = await app.start(port=0)
    try:
        async with BlazeClient("127.0.0.1", server.port) as client:
            assert await client.predict("metered", text="a") == "a"
            assert await client.predict("metered", text="b") == "b"
            for text, code in [("bad", "INVALID_ARGUMENT"), ("deny", "PERMISSION_DENIED")]:
                with pytest.raises(BlazeRPCError) as info:
                    await client.predict("metered", text=text)
                assert info.value.code.name == code
            assert [x async for x in client.stream("metered-stream", n=3)] == [0, 1, 2]

            batch_stats = server.stats
            first = asyncio.create_task(client.predict("metered-batch", seconds=2.0))
            await until(lambda: batch_stats()["metered-batch"].requests == 1)
            queued = [
                asyncio.create_task(client.predict("metered-batch", seconds=0.0)) for _ in range(5)
            ]
            # Waited for, not slept on: on a loaded machine the five arrive late.
            await until(lambda: batch_stats()["metered-batch"].queue_depth == 5)
            during = await asyncio.to_thread(scrape, metrics_port)
            assert await first == 1
            assert await asyncio.gather(*queued) == [5] * 5
        after = await asyncio.to_thread(scrape, metrics_port)
    finally:
        await server.stop(1)

    metered_method = path("Metered")
    for status, count in [("OK", 2), ("INVALID_ARGUMENT", 1), ("PERMISSION_DENIED", 1)]:
        assert (
            sample(after, "blazerpc_requests_total", method=metered_method, status=status) == count
        ), status
    stream_ok = {"method": path("MeteredStream"), "status": "OK"}
    assert sample(after, "blazerpc_requests_total", **stream_ok) == 1

    assert sample(after, "blazerpc_request_duration_seconds_count", method=metered_method) == 4
    assert (
        sample(after, "blazerpc_request_duration_seconds_bucket", method=metered_method, le="+Inf")
        == 4
    )
    assert 0 < sample(after, "blazerpc_request_duration_seconds_sum", method=metered_method) < 1
    batch_method = path("MeteredBatch")
    assert (
        sample(after, "blazerpc_request_duration_seconds_sum", method=batch_method) >= 0.5 + 5 * 0.3
    )

    batch = {"model": "metered-batch"}
    assert sample(during, "blazerpc_queue_depth", **batch) == 5
    assert sample(after, "blazerpc_queue_depth", **batch) == 0
    assert sample(after, "blazerpc_batch_size_count", **batch) == 2  # one call of 1, one of 5
    assert sample(after, "blazerpc_batch_size_sum", **batch) == 6
    assert sample(after, "blazerpc_batch_size_bucket", le="1.0", **batch) == 1
    assert sample(after, "blazerpc_queue_wait_seconds_count", **batch) == 6
    assert sample(after, "blazerpc_queue_wait_seconds_sum", **batch) >= 5 * 0.3
    assert sample(after, "blazerpc_batch_duration_seconds_count", **batch) == 2


async def test_blaze_serve_metrics_port() -> None:
    port, metrics_port = free_port(), free_port()
    with blaze_serve("--port", str(port), "--metrics-port", str(metrics_port)) as proc:
        wait_serving(port, proc)
        async with BlazeClient("127.0.0.1", port) as client:
            for text in "abc":
                assert await client.predict("echo", text=text) == text
        metrics = scrape(metrics_port)
        ok = {"method": path("Echo"), "status": "OK"}
        assert sample(metrics, "blazerpc_requests_total", **ok) == 3
        proc.send_signal(signal.SIGTERM)
        assert exits_within(proc, 10) == 0


async def test_an_app_with_a_metrics_port_can_start_again_after_stopping() -> None:
    metrics_port = free_port()
    app = BlazeApp(metrics_port=metrics_port)

    @app.model("metered-restart")
    async def metered_restart(text: str) -> str:
        return text

    for _ in range(2):
        server = await app.start(port=0)
        try:
            async with BlazeClient("127.0.0.1", server.port) as client:
                assert await client.predict("metered-restart", text="x") == "x"
        finally:
            await server.stop(1)
    metrics = await asyncio.to_thread(scrape, metrics_port)
    ok = {"method": path("MeteredRestart"), "status": "OK"}
    assert sample(metrics, "blazerpc_requests_total", **ok) == 2


async def test_in_flight_counts_calls_queued_running_and_streaming_per_model() -> None:
    """The autoscaling signal: calls a model has admitted and not answered, per model, back to
    0 once they end, however they end (answered, failed, or a stream the client left)."""
    metrics_port = free_port()
    app = BlazeApp(metrics_port=metrics_port)
    release, generator_closed = asyncio.Event(), asyncio.Event()

    @app.model("inflight-held")
    async def held(fail: bool = False) -> str:
        await release.wait()
        if fail:
            raise ValueError("boom")
        return "ok"

    @app.model("inflight-batch", batched=True, max_batch_size=2)
    async def batch(seconds: list[float]) -> list[int]:
        await release.wait()
        return [len(seconds)] * len(seconds)

    @app.model("inflight-stream", streaming=True)
    async def stream(n: int) -> AsyncIterator[int]:
        try:
            for i in range(n):
                yield i
                await asyncio.sleep(10)
        finally:
            generator_closed.set()

    def in_flight(metrics: dict, model: str) -> float:
        return sample(metrics, "blazerpc_in_flight", model=f"inflight-{model}")

    server = await app.start(port=0)
    try:
        async with BlazeClient("127.0.0.1", server.port) as client:
            unary = [client.predict("inflight-held", fail=i == 0) for i in range(3)]
            batched = [client.predict("inflight-batch", seconds=0.0) for _ in range(5)]
            calls = [asyncio.ensure_future(c) for c in unary + batched]
            chunks = client.stream("inflight-stream", n=5)
            assert await chunks.__anext__() == 0
            await asyncio.sleep(0.3)
            during = await asyncio.to_thread(scrape, metrics_port)
            chunks.cancel()
            await asyncio.wait_for(generator_closed.wait(), 5)
            release.set()
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert isinstance(results[0], BlazeRPCError) and results[1:3] == ["ok", "ok"]
        after = await asyncio.to_thread(scrape, metrics_port)
    finally:
        await server.stop(1)

    assert in_flight(during, "held") == 3
    assert in_flight(during, "batch") == 5  # the first runs at once, alone; 4 wait for it
    assert sample(during, "blazerpc_queue_depth", model="inflight-batch") == 4
    assert in_flight(during, "stream") == 1
    for model in ("held", "batch", "stream"):
        assert in_flight(after, model) == 0, model
