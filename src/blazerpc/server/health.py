"""grpc.health.v1.Health: NOT_SERVING until the models are ready, and again while draining."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health, health_pb2

from ..schema import SERVICE_FULL_NAME

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
SERVICE_NAME = health.SERVICE_NAME


class Health(health.aio.HealthServicer):
    """The stock asyncio servicer, reporting the server ('') and the InferenceService together.

    Its Watch streams end once they have reported the drain: left open, as gRPC clients with
    client-side health checking leave them, they would hold the drain for its whole grace.
    """

    def __init__(self) -> None:
        super().__init__()
        self._services = ("", SERVICE_FULL_NAME)
        self._changed = asyncio.Condition()
        self._draining = False
        self.watchers = 0  # open Watch streams: clients balancing on this server's health
        for service in self._services:
            self._server_status[service] = NOT_SERVING

    async def set_all(self, status: int, *, draining: bool = False) -> None:
        async with self._changed:
            for service in self._services:
                self._server_status[service] = status
            self._draining = draining
            self._changed.notify_all()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context) -> None:
        last = None
        self.watchers += 1
        try:
            async with self._changed:
                while True:
                    status = self._server_status.get(request.service, SERVICE_UNKNOWN)
                    if status != last:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                        last = status
                    if self._draining:
                        return
                    await self._changed.wait()
        finally:
            self.watchers -= 1
