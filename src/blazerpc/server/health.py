"""grpc.health.v1.Health: NOT_SERVING until the models are ready, and again while draining."""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2

from ..schema import SERVICE_FULL_NAME

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_NAME = health.SERVICE_NAME


class Health(health.aio.HealthServicer):
    """The stock asyncio servicer, reporting the server ('') and the InferenceService together."""

    def __init__(self) -> None:
        super().__init__()
        self._services = ("", SERVICE_FULL_NAME)
        for service in self._services:
            self._server_status[service] = NOT_SERVING

    async def set_all(self, status: int) -> None:
        for service in self._services:
            await self.set(service, status)
