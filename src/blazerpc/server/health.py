"""grpc.health.v1.Health: NOT_SERVING until the models are ready, and again while draining."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..schema import SERVICE_FULL_NAME

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
SERVICE_NAME = health.SERVICE_NAME


class Health(health_pb2_grpc.HealthServicer):
    """Check and Watch for the server ('') and the InferenceService, which share one status.

    Our own servicer on the generated base, not grpcio's, whose state is private: its Watch
    streams would stay open through a drain, as gRPC clients with client-side health checking
    leave them, and hold the drain for its whole grace. Ours end once they report it.
    """

    def __init__(self) -> None:
        self._status: dict[str, int] = dict.fromkeys(("", SERVICE_FULL_NAME), NOT_SERVING)
        self._changed = asyncio.Condition()
        self._draining = False
        self.watchers = 0  # open Watch streams: clients balancing on this server's health

    async def set_all(self, status: int, *, draining: bool = False) -> None:
        async with self._changed:
            for service in self._status:
                self._status[service] = status
            self._draining = draining
            self._changed.notify_all()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND)
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        last = None
        self.watchers += 1
        try:
            async with self._changed:
                while True:
                    status = self._status.get(request.service, SERVICE_UNKNOWN)
                    if status != last:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                        last = status
                    if self._draining:
                        return
                    await self._changed.wait()
        finally:
            self.watchers -= 1
