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


async def raw_stream(
    port: int,
    method: str,
    requests: list[bytes],
    *,
    server_streaming: bool = True,
    client_streaming: bool = True,
    timeout: float = 10.0,
) -> Reply:
    """Like `raw_call` for the streaming kinds: the status, details and the last reply."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        if client_streaming:
            kind = channel.stream_stream if server_streaming else channel.stream_unary
            call = kind(method)(iter(requests), timeout=timeout)
        else:
            kind = channel.unary_stream if server_streaming else channel.unary_unary
            call = kind(method)(requests[0], timeout=timeout)
        data = None
        try:
            if server_streaming:
                async for item in call:
                    data = item
            else:
                data = await call
        except grpc.aio.AioRpcError as exc:
            return Reply(exc.code(), exc.details() or "", data)
        return Reply(grpc.StatusCode.OK, "", data)
