"""Raw wire helpers: call a server with bytes on a plain grpc.aio channel, no BlazeRPC client."""

from dataclasses import dataclass

import grpc


@dataclass
class Reply:
    code: grpc.StatusCode
    details: str
    data: bytes | None


async def raw_call(port: int, method: str, request: bytes, *, timeout: float = 10.0) -> Reply:
    """Send `request` bytes as-is (no serializer) and report the status, details and reply."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            data = await channel.unary_unary(method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return Reply(exc.code(), exc.details() or "", None)
        return Reply(grpc.StatusCode.OK, "", data)
