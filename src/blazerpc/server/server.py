"""Starting and stopping the grpcio asyncio server that carries every service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from ..exceptions import ConfigurationError
from ..runtime.batcher import BatchSettings, BatchStats
from ..runtime.executor import Executor
from ..runtime.registry import ModelEntry
from ..runtime.runner import ModelRunner
from ..schema import SERVICE_FULL_NAME, Schema
from .handlers import model_handlers
from .health import NOT_SERVING, SERVING, Health
from .reflection import enable_reflection


class Server:
    """A running server: its bound `port`, and `stop()` to drain and close it."""

    def __init__(
        self,
        grpc_server: grpc.aio.Server,
        port: int,
        health: Health,
        executor: Executor,
        runners: dict[str, ModelRunner],
    ) -> None:
        self.port = port
        self.runners = runners
        self._grpc = grpc_server
        self._health = health
        self._executor = executor
        self._batchers = {n: r.batcher for n, r in runners.items() if r.batcher is not None}

    def stats(self) -> dict[str, BatchStats]:
        """Batching statistics of each batched model, by model name."""
        for batcher in self._batchers.values():
            batcher.stats.queue_depth = batcher.queue_depth
        return {name: b.stats for name, b in self._batchers.items()}

    async def stop(self, grace: float | None = 30.0) -> None:
        """Report NOT_SERVING, refuse new calls, let calls in flight finish within `grace`."""
        await self._health.set_all(NOT_SERVING)
        await self._grpc.stop(grace)
        for runner in self.runners.values():
            await runner.stop()
        self._executor.shutdown()

    async def wait_for_termination(self) -> None:
        await self._grpc.wait_for_termination()


def grpc_options(max_message_bytes: int, reuse_port: bool) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # One process per port unless workers share it on purpose: a second server
        # silently sharing the port of a forgotten one is a classic deploy bug.
        ("grpc.so_reuseport", int(reuse_port)),
    ]


async def start_server(
    models: Sequence[ModelEntry],
    schema: Schema,
    *,
    host: str,
    port: int,
    max_message_bytes: int,
    max_threads: int,
    batching: dict[str, BatchSettings],
    reuse_port: bool = False,
) -> Server:
    executor = Executor(max_threads)
    runners = {m.name: ModelRunner(m, executor, batching.get(m.name)) for m in models}
    server = grpc.aio.server(options=grpc_options(max_message_bytes, reuse_port))
    server.add_registered_method_handlers(
        SERVICE_FULL_NAME, model_handlers(list(runners.values()), schema)
    )
    health = Health()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    enable_reflection(server, schema)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigurationError(f"cannot listen on {address}: {exc}") from None
    if bound == 0:
        raise ConfigurationError(f"cannot listen on {address}")
    for runner in runners.values():
        runner.start()
    await server.start()
    await health.set_all(SERVING)
    return Server(server, bound, health, executor, runners)
