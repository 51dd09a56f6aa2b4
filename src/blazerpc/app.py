"""BlazeApp: where models are registered, settings live, and servers are started."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

from .exceptions import ConfigurationError
from .injection import injected_marker
from .policy import CallPolicy
from .protocols.openai_models import ChatTemplate, OpenAIModel, check_openai_model
from .runtime.batcher import BatchSettings
from .runtime.registry import BatchOverrides, ModelEntry, ModelRegistry, check_batching
from .schema import Schema, build_schema
from .server.metrics import BatchMetrics, count_in_flight, serve_metrics
from .server.middleware import MetricsMiddleware, Middleware, TransportMiddleware, as_middleware
from .server.server import Limits, Server, ServerTLS, run_every, start_server

F = TypeVar("F", bound=Callable[..., Any])
Hook = Callable[[], Any]
# `BlazeApp(lifespan=...)`: called with the app, its start-up runs up to `yield`.
Lifespan = Callable[["BlazeApp"], AbstractAsyncContextManager[None]]
logger = logging.getLogger("blazerpc")


async def _call(hook: Hook) -> None:
    if inspect.iscoroutinefunction(hook):
        await hook()
    else:  # in a thread, so health checks are answered while weights load
        await asyncio.to_thread(hook)


async def _quietly(step: Awaitable[None], what: str) -> None:
    """Clean up after a failure without hiding it: a failure here is logged, not raised."""
    try:
        await step
    except Exception:
        logger.exception("%s failed too", what)


class BlazeApp:
    """A set of models served together over one gRPC port.

    >>> app = BlazeApp()
    >>> @app.model("echo")
    ... async def echo(text: str) -> str:
    ...     return text
    """

    def __init__(
        self,
        name: str = "blazerpc",
        enable_batching: bool = True,
        max_batch_size: int = 32,
        batch_timeout_ms: float = 10.0,
        middleware: list[Middleware | TransportMiddleware] | None = None,
        *,
        max_queue_size: int = 1024,
        max_message_mb: float = 64,
        max_threads: int | None = None,
        inline_limit_us: float = 100.0,
        metrics_port: int | None = None,
        reflection: bool = True,
        float64: bool = False,
        lifespan: Lifespan | None = None,
    ) -> None:
        """Settings for every model of the app; the batching ones can be overridden per model.

        Args:
            name: The app's name, shown in the start-up banner and used to name what
                `blaze deploy` writes.
            enable_batching: `False` runs every tensor model call by call.
            max_batch_size: Most rows (tensor models) or requests (`batched=True`) per model
                call.
            batch_timeout_ms: Most wait, after a batch ends, for its callers to send again
                (or a fifth of that batch's model time, if longer), so batches grow to the
                load.
            middleware: Run around every model call, on every protocol: `on_request` in list
                order, `on_response` in reverse.
            max_queue_size: Requests that may wait for a batch, or calls in flight for a model
                that does not batch; beyond it, `RESOURCE_EXHAUSTED` at once.
            max_message_mb: Largest request or response message, each way.
            max_threads: Threads for plain `def` models (default `min(32, CPUs + 4)`).
            inline_limit_us: Plain `def` models whose calls stay under this run inline on the
                event loop; `0` keeps them in threads.
            metrics_port: Serve Prometheus metrics on this port.
            reflection: Serve gRPC reflection (it lists every model, without auth).
            float64: Python `float` values travel as protobuf `double` (64-bit) instead of
                `float` (32-bit, 2.2.1's wire contract and the default); see
                docs/migrating.md.
            lifespan: An async context manager factory taking the app: set-up before
                serving, tear-down after the drain (around the `on_startup`/`on_shutdown`
                hooks).
        """
        check_batching(
            "BlazeApp",
            {
                "max_batch_size": max_batch_size,
                "batch_timeout_ms": batch_timeout_ms,
                "max_queue_size": max_queue_size,
            },
        )
        self.name = name
        self.enable_batching = enable_batching
        self.max_batch_size = max_batch_size
        self.batch_timeout_ms = batch_timeout_ms
        self.max_queue_size = max_queue_size
        self.middleware = list(middleware or [])
        self.limits = Limits(max_message_bytes=int(max_message_mb * 1024 * 1024))
        self.max_threads = max_threads or min(32, (os.cpu_count() or 1) + 4)
        # Plain `def` models whose calls stay under this run on the loop (runtime/executor.py).
        self.inline_limit_us = inline_limit_us
        self.metrics_port = metrics_port
        self.reflection = reflection
        self.registry = ModelRegistry(float64=float64)
        self.state = types.SimpleNamespace()
        self._lifespan = lifespan
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._schema: Schema | None = None

    def model(
        self,
        name: str,
        version: str = "1",
        streaming: bool = False,
        *,
        batched: bool = False,
        max_batch_size: int | None = None,
        batch_timeout_ms: float | None = None,
        max_queue_size: int | None = None,
        max_concurrent_batches: int | None = None,
        batch_key: Callable[..., float] | None = None,
        max_batch_tokens: int | None = None,
        openai: bool = False,
        chat_template: ChatTemplate | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function as model `name`; the function is returned unchanged.

        Its annotations are the schema: each parameter a request field, the return annotation
        the response's `result`. Mistakes raise `ConfigurationError` here, not on a request.

        Args:
            name: The model's name; its RPC is `Predict` plus the name's words (split at `-`
                and `_`) capitalised: `sentiment-v2` is `PredictSentimentV2`.
            version: Several versions of one name are all served: each as
                `Predict<Name>V<version>` (KServe `model_version`, JSON-RPC
                `predict.<name>@<version>`), and the highest under the plain name too.
            streaming: The function is a generator and each `yield` is one message (server
                streaming; bidirectional when a parameter is a stream too).
            batched: The function takes a list per parameter and returns a list, one entry
                per request (tensor models with a named leading axis batch without it).
            max_batch_size: Overrides the app's: most rows or requests per model call.
            batch_timeout_ms: Overrides the app's: most extra wait to grow a batch.
            max_queue_size: Overrides the app's: requests that may wait, or calls in flight.
            max_concurrent_batches: Batches of this model that may run at once (default 1).
            batch_key: Takes one request's values (by parameter name) and returns a number,
                such as its token count: when more requests wait than one batch holds, a
                batch takes requests of nearby keys, so little of it is padding
                (`server.stats()` reports the padding waste).
            max_batch_tokens: With `batch_key`: the most padded key units (rows x the
                longest key, e.g. tokens) one model call computes. A larger batch runs as
                consecutive calls over it sorted by key, each caller answered when its own
                call ends: on a CPU, where a batch costs about the sum of its rows, that
                computes less padding; on a GPU it mostly caps memory. See docs/models.md.
            openai: Also serve this text model on the HTTP port's OpenAI-compatible
                endpoints (`/v1/completions`, `/v1/chat/completions`).
            chat_template: Folds chat messages into the prompt (default:
                `default_chat_template`); needs `openai=True`.
        """
        if chat_template is not None and not openai:
            raise ConfigurationError(f"model '{name}': chat_template needs openai=True")

        def register(func: F) -> F:
            entry = self.registry.register(
                name,
                func,
                version=version,
                streaming=streaming,
                batched=batched,
                is_injected=injected_marker,
                batching=BatchOverrides(
                    max_batch_size,
                    batch_timeout_ms,
                    max_queue_size,
                    max_concurrent_batches,
                    max_batch_tokens,
                ),
                batch_key=batch_key,
            )
            if batched and entry.signature.injected:
                raise ConfigurationError(
                    f"model '{name}': batched=True cannot take Context or Depends parameters "
                    "(one call serves many requests, each with its own context)"
                )
            if openai:
                check_openai_model(entry)
                entry.openai = OpenAIModel(entry, chat_template)
            self._schema = None
            return func

        return register

    def on_startup(self, hook: F) -> F:
        """Run `hook` (sync or async) in each worker before it admits traffic, e.g. to load
        weights; health stays NOT_SERVING until every start-up hook has finished. Sugar for
        the start-up half of `lifespan`."""
        self._startup.append(hook)
        return hook

    def on_shutdown(self, hook: F) -> F:
        """Run `hook` (sync or async) after the server has drained; every shut-down hook runs,
        even if an earlier one fails. Sugar for the shut-down half of `lifespan`."""
        self._shutdown.append(hook)
        return hook

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Start-up and shut-down around serving, as `start` and `Server.stop` run them.

        Start-up: the `lifespan` given to BlazeApp up to its `yield`, then each on_startup
        hook in order. Shut-down: each on_shutdown hook in order, then the rest of that
        `lifespan`. A start-up hook that fails still gets the shut-down hooks run (to release
        what earlier hooks loaded), and its own error is the one raised; an error of that
        clean-up is logged, never raised over it.
        """
        async with AsyncExitStack() as stack:
            if self._lifespan is not None:
                await stack.enter_async_context(self._lifespan(self))
            stack.push_async_exit(self._shut_down)
            for hook in self._startup:
                await _call(hook)
            yield

    async def _shut_down(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            await run_every((f"on_shutdown hook {h!r}", partial(_call, h)) for h in self._shutdown)
        except Exception:
            if exc is None:
                raise
            logger.exception("an on_shutdown hook failed while a failure was being handled")
        return False

    def batch_settings(self, entry: ModelEntry) -> BatchSettings | None:
        """How `entry` batches, or None when it runs call by call."""
        if entry.streaming or entry.client_streaming:
            return None
        auto = self.enable_batching and entry.stacks_tensors and not entry.signature.injected
        if not (entry.batched or auto):
            return None
        settings = BatchSettings(
            max_batch_size=self.max_batch_size,
            batch_timeout_ms=self.batch_timeout_ms,
            max_queue_size=self.max_queue_size,
        )
        settings = replace(settings, **entry.batching.given())
        if not self.enable_batching:  # batched=True models still get their lists, of one
            settings = replace(settings, max_batch_size=1)
        return settings

    @property
    def schema(self) -> Schema:
        """The protobuf schema of every registered model, built on first use."""
        if self._schema is None:
            self._schema = build_schema(self.registry.list_models(), self.registry.float64)
        return self._schema

    def proto(self) -> str:
        """The .proto source a client can compile with protoc."""
        return self.schema.proto_text()

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int | None = 50051,
        *,
        tls: ServerTLS | None = None,
        reuse_port: bool = False,
        http_port: int | None = None,
    ) -> Server:
        """Start serving in the background; `port=0` picks a free port (see `server.port`).
        With `http_port`, KServe v2 REST and JSON-RPC are served there too (0 picks a free
        one, see `server.http_port`); KServe v2 gRPC always shares the gRPC port.
        `port=None` serves HTTP alone (`http_port` is then required).

        Returns once start-up hooks have run and the server admits calls.
        """
        if port is None and http_port is None:
            raise ConfigurationError("nothing to serve: give a gRPC port, an http_port, or both")
        middleware = [as_middleware(m) for m in self.middleware]
        if self.metrics_port is not None:
            if not any(isinstance(m, MetricsMiddleware) for m in middleware):
                middleware.insert(0, MetricsMiddleware())
            serve_metrics(self.metrics_port, host)
        with_metrics = any(isinstance(m, MetricsMiddleware) for m in middleware)
        lifespan = AsyncExitStack()  # closed by server.stop, after the drain
        if reuse_port:
            # A worker sharing the port loads before it binds: once bound, the kernel hands
            # it new connections, and the other workers are serving them meanwhile.
            await lifespan.enter_async_context(self.lifespan())
        try:
            server = await start_server(
                self.registry.list_models(),
                self.schema,
                host=host,
                port=port,
                policy=CallPolicy(middleware=middleware, app_state=self.state),
                batching={
                    m.key: settings
                    for m in self.registry
                    if (settings := self.batch_settings(m)) is not None
                },
                max_threads=self.max_threads,
                inline_limit_s=self.inline_limit_us / 1e6,
                max_in_flight={
                    m.key: m.batching.max_queue_size or self.max_queue_size for m in self.registry
                },
                limits=self.limits,
                tls=tls,
                reuse_port=reuse_port,
                on_stop=lifespan.aclose,
                batch_observer=BatchMetrics if with_metrics else None,
                instrument=count_in_flight if with_metrics else None,
                http_port=http_port,
                reflection=self.reflection,
            )
        except BaseException:
            await _quietly(lifespan.aclose(), "shutting down after a failed start")
            raise
        try:
            if not reuse_port:
                await lifespan.enter_async_context(self.lifespan())
        except BaseException:
            await _quietly(server.stop(grace=0), "stopping after a failed start-up")
            raise
        await server.ready()
        return server

    async def serve(
        self,
        host: str = "0.0.0.0",
        port: int | None = 50051,
        *,
        grace_period: float = 30.0,
        tls: ServerTLS | None = None,
        reuse_port: bool = False,
        on_ready: Callable[[], Any] | None = None,
        http_port: int | None = None,
    ) -> None:
        """Serve until SIGINT or SIGTERM, then drain calls in flight for up to `grace_period`:
        health turns NOT_SERVING, new calls get UNAVAILABLE, calls in flight complete."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        try:
            began = time.perf_counter()
            server = await self.start(
                host, port, tls=tls, reuse_port=reuse_port, http_port=http_port
            )
            ports = [f"{host}:{p}" for p in (server.port, server.http_port) if p is not None]
            logger.info(
                "ready: %d model(s) take calls on %s (process %d, start-up took %.1f s)",
                len(self.registry),
                " and ".join(ports),
                os.getpid(),
                time.perf_counter() - began,
            )
            if on_ready is not None:
                on_ready()
            await stopping.wait()
            logger.info("draining calls in flight (up to %ss)", grace_period)
            await server.stop(grace_period)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def serve_jsonrpc(self, host: str = "0.0.0.0", port: int = 8080, **options: Any) -> None:
        """2.2.1's HTTP-only serving: JSON-RPC (and KServe v2 REST, `GET /health`) on `port`,
        no gRPC port; takes `serve`'s keywords."""
        await self.serve(host, None, http_port=port, **options)

    async def serve_both(
        self, host: str = "0.0.0.0", grpc_port: int = 50051, http_port: int = 8080, **options: Any
    ) -> None:
        """2.2.1's spelling of `serve(host, grpc_port, http_port=http_port)`."""
        await self.serve(host, grpc_port, http_port=http_port, **options)
