"""Starting and stopping the grpcio asyncio server that carries every service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from ..exceptions import ConfigurationError
from ..runtime.executor import Executor
from ..runtime.registry import ModelEntry
from ..schema import SERVICE_FULL_NAME, Schema
from .handlers import model_handlers
from .health import NOT_SERVING, SERVING, Health
from .reflection import enable_reflection


class Server:
    """A running server: its bound `port`, and `stop()` to drain and close it."""

    def __init__(
        self, grpc_server: grpc.aio.Server, port: int, health: Health, executor: Executor
    ) -> None:
        self.port = port
        self._grpc = grpc_server
        self._health = health
        self._executor = executor

    async def stop(self, grace: float | None = 30.0) -> None:
        """Report NOT_SERVING, refuse new calls, let calls in flight finish within `grace`."""
        await self._health.set_all(NOT_SERVING)
        await self._grpc.stop(grace)
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
    reuse_port: bool = False,
) -> Server:
    executor = Executor(max_threads)
    server = grpc.aio.server(options=grpc_options(max_message_bytes, reuse_port))
    server.add_registered_method_handlers(
        SERVICE_FULL_NAME, model_handlers(list(models), schema, executor)
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
    await server.start()
    await health.set_all(SERVING)
    return Server(server, bound, health, executor)
