"""Calls the compat app the way blazerpc 2.2.1's documentation does, and prints what came back
as JSON. Run by 2.2.1's Python and by this package's, against either server:

    python -m tests.compat221.client GRPC_PORT HTTP_PORT [--no-health-check]
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np

from blazerpc import BlazeClient, JsonRpcClient
from tests.compat221.app import app


async def main(grpc_port: int, http_port: int, *options: str) -> dict:
    # The one option that is not 2.2.1's: `--no-health-check`, for this package's client
    # calling a 2.2.1 server, whose gRPC health service fails (see docs/migrating.md).
    extra = {"health_check": False} if "--no-health-check" in options else {}
    out: dict = {}
    async with BlazeClient("127.0.0.1", grpc_port, registry=app.registry, **extra) as client:
        out["echo"] = await client.predict("echo", text="hello")
        out["add"] = await client.predict(model_name="add", a=0.5, b=0.25)
        out["lengths"] = list(await client.predict("lengths", text=["ab", "abcdef"]))
        out["words"] = [w async for w in client.stream("words", sentence="to be or not")]
        out["whoami"] = await client.predict("whoami", text="hi")
        out["greet"] = await client.predict("greet")
    unawaited = BlazeClient("127.0.0.1", grpc_port, registry=app.registry, **extra)
    out["echo_again"] = await unawaited.predict("echo", text="bye")
    unawaited.close()  # as 2.2.1 documents it: no await

    async with JsonRpcClient(f"http://127.0.0.1:{http_port}/jsonrpc") as rpc:
        out["rpc_echo"] = await rpc.predict("echo", text="hello")
        out["rpc_add"] = await rpc.predict("add", a=0.5, b=0.25)
        features = np.array([[1, 2, 3, 4], [0, 0, 0, 1]], dtype=np.float32)
        projected = await rpc.predict("project", features=features)
        out["rpc_project"] = [str(projected.dtype), projected.tolist()]
        out["rpc_words"] = [w async for w in rpc.stream("words", sentence="to be or not")]
        out["rpc_whoami"] = await rpc.predict("whoami", text="hi")
        out["rpc_greet"] = await rpc.predict("greet")
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:]))))
