"""The HTTP server that carries KServe v2 REST, JSON-RPC and the OpenAI-compatible API, started
and stopped with the gRPC server and calling the same runners.

It is aiohttp: it runs on the event loop grpc.aio already uses, so one process has one loop
and one set of runners (and batchers) for every protocol; it parses HTTP in C (llhttp) and
streams responses, which server-sent events need; and aio-libs keep it maintained. An ASGI
stack (uvicorn plus a framework) would add a layer per request and wants to own the loop.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from ..exceptions import ConfigurationError
from ..policy import CallPolicy
from ..runtime.runner import ModelRunner


class HttpServer:
    """A running HTTP server: its bound `port`, and `stop()`."""

    def __init__(self, runner: Any, port: int, in_flight: set[asyncio.Task[Any]]) -> None:
        self._runner = runner
        self._in_flight = in_flight
        self.port = port

    async def stop(self, grace: float) -> None:
        """Stop listening, let requests in flight (event streams too) finish within `grace`
        seconds (0: none), cancel the rest, close every connection."""
        for site in list(self._runner.sites):
            await site.stop()
        if self._in_flight:
            _, late = await asyncio.wait(set(self._in_flight), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._runner.cleanup()


async def start_http_server(
    runners: dict[str, ModelRunner],
    policy: CallPolicy,
    *,
    host: str,
    port: int,
    max_body_bytes: int,
    max_json_bytes: int,
    max_jsonrpc_batch: int,
    reuse_port: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpServer:
    """Listen on `host:port` (0 picks a free port) for KServe REST and JSON-RPC; calls go
    through the same call policy (gate, middleware) and the same TLS as gRPC ones."""
    try:
        from aiohttp import web
    except ImportError:
        raise ConfigurationError(
            "serving HTTP needs aiohttp: pip install 'blazerpc[http]'"
        ) from None
    from .jsonrpc import add_jsonrpc_routes
    from .kserve_rest import add_kserve_routes
    from .openai import add_openai_routes

    web_handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

    # The handlers running now, so stop() gives them the gRPC calls' grace period and no more
    # (aiohttp's own shutdown waits up to twice its timeout for a response that never ends).
    in_flight: set[asyncio.Task[Any]] = set()

    @web.middleware
    async def track(request: web.Request, handler: web_handler) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None  # aiohttp runs each request in a task of its own
        in_flight.add(task)
        try:
            return await handler(request)
        finally:
            in_flight.discard(task)

    async def health(request: web.Request) -> web.Response:
        """2.2.1's `GET /health`, answered from the same gate as gRPC health (issue 13)."""
        if policy.gate.reason is None:
            return web.json_response({"status": "ok"})
        return web.json_response(
            {"status": "unavailable", "reason": policy.gate.reason}, status=503
        )

    app = web.Application(client_max_size=max_body_bytes, middlewares=[track])
    app.router.add_get("/health", health)
    add_kserve_routes(app, runners, policy, max_json_bytes)
    add_jsonrpc_routes(
        app, runners, policy, max_json_bytes=max_json_bytes, max_batch_calls=max_jsonrpc_batch
    )
    add_openai_routes(app, runners, policy, max_json_bytes)
    # A client that disconnects cancels its handler, so a model generating for it stops at
    # once, as on gRPC, not at its next write.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(
            runner, host, port, reuse_port=reuse_port, ssl_context=ssl_context
        ).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigurationError(f"cannot listen on {host}:{port} for HTTP: {exc}") from None
    return HttpServer(runner, runner.addresses[0][1], in_flight)
