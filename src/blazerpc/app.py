"""BlazeApp: where models are registered, settings live, and servers are started."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import types
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from .runtime.batcher import BatchSettings
from .runtime.registry import ModelEntry, ModelRegistry
from .schema import Schema, build_schema
from .server.server import Server, start_server

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("blazerpc")


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
        middleware: list[Any] | None = None,
        *,
        max_queue_size: int = 1024,
        max_message_mb: float = 64,
        max_threads: int | None = None,
    ) -> None:
        self.name = name
        self.enable_batching = enable_batching
        self.max_batch_size = max_batch_size
        self.batch_timeout_ms = batch_timeout_ms
        self.max_queue_size = max_queue_size
        self.middleware = list(middleware or [])
        self.max_message_bytes = int(max_message_mb * 1024 * 1024)
        self.max_threads = max_threads or min(32, (os.cpu_count() or 1) + 4)
        self.registry = ModelRegistry()
        self.state = types.SimpleNamespace()
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
    ) -> Callable[[F], F]:
        """Register the decorated function as model `name`; the function is returned unchanged.

        `batched=True` makes the function take a list per parameter and return a list (tensor
        models with a named leading axis batch without it). The other keywords override the
        app's batching settings for this model.
        """

        def register(func: F) -> F:
            self.registry.register(
                name,
                func,
                version=version,
                streaming=streaming,
                batched=batched,
                max_batch_size=max_batch_size,
                batch_timeout_ms=batch_timeout_ms,
                max_queue_size=max_queue_size,
                max_concurrent_batches=max_concurrent_batches,
            )
            self._schema = None
            return func

        return register

    def batch_settings(self, entry: ModelEntry) -> BatchSettings | None:
        """How `entry` batches, or None when it runs call by call."""
        if entry.streaming or not (
            entry.batched or (self.enable_batching and entry.stacks_tensors)
        ):
            return None
        settings = BatchSettings(
            max_batch_size=self.max_batch_size if self.enable_batching else 1,
            batch_timeout_ms=self.batch_timeout_ms,
            max_queue_size=self.max_queue_size,
        )
        if not self.enable_batching:  # batched=True models still need their lists
            return replace(
                settings, **{k: v for k, v in entry.options.items() if k != "max_batch_size"}
            )
        return replace(settings, **entry.options)

    @property
    def schema(self) -> Schema:
        """The protobuf schema of every registered model, built on first use."""
        if self._schema is None:
            self._schema = build_schema(self.registry.list_models())
        return self._schema

    def proto(self) -> str:
        """The .proto source a client can compile with protoc."""
        return self.schema.proto_text()

    async def start(self, host: str = "127.0.0.1", port: int = 50051) -> Server:
        """Start serving in the background; `port=0` picks a free port (see `server.port`)."""
        return await start_server(
            self.registry.list_models(),
            self.schema,
            host=host,
            port=port,
            max_message_bytes=self.max_message_bytes,
            max_threads=self.max_threads,
            batching={
                m.name: settings
                for m in self.registry
                if (settings := self.batch_settings(m)) is not None
            },
        )

    async def serve(
        self, host: str = "0.0.0.0", port: int = 50051, grace_period: float = 30.0
    ) -> None:
        """Serve until SIGINT or SIGTERM, then drain calls in flight for up to `grace_period`."""
        server = await self.start(host, port)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        try:
            await stopping.wait()
            logger.info("shutting down: draining calls in flight (up to %ss)", grace_period)
        finally:
            await server.stop(grace_period)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
