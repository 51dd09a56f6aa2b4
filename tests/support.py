"""What every test that serves needs: free ports, service paths, and a server started on
127.0.0.1 for the length of a block (with a client, if asked)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from blazerpc import BlazeApp, BlazeClient, Server

SERVICE = "blazerpc.InferenceService"


def free_port() -> int:
    """A port nothing listens on right now (for servers whose port must be known up front)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def path(rpc: str) -> str:
    """The method path of a model's RPC, e.g. `path("Echo")`."""
    return f"/{SERVICE}/Predict{rpc}"


@asynccontextmanager
async def running(app: BlazeApp, *, http: bool = False) -> AsyncIterator[Server]:
    """Serve `app` on free ports of 127.0.0.1 for the duration of the block: gRPC, and with
    `http`, KServe REST and JSON-RPC on `server.http_port`."""
    server = await app.start(host="127.0.0.1", port=0, http_port=0 if http else None)
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


@asynccontextmanager
async def client_for(app: BlazeApp, *, registry: bool = False) -> AsyncIterator[BlazeClient]:
    """A running server for `app` and a BlazeClient connected to it."""
    async with (
        running(app) as server,
        BlazeClient(
            "127.0.0.1", server.port, registry=app.registry if registry else None
        ) as client,
    ):
        yield client


async def reflected_methods(
    channel: grpc.aio.Channel, symbol: str
) -> dict[str, descriptor_pb2.MethodDescriptorProto]:
    """The methods, by name, of the files server reflection returns for `symbol`."""
    call = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)]))
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        async for r in call
        for raw in r.file_descriptor_response.file_descriptor_proto
    ]
    return {m.name: m for f in files for s in f.service for m in s.method}
