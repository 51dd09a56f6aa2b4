"""What every test that serves needs: free ports, service paths, and a server started on
127.0.0.1 for the length of a block (with a client, if asked)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
