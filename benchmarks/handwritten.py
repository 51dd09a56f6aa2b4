"""Hand-written grpcio asyncio server for the benchmark contract: the floor BlazeRPC is held to.

It is what a user would write without BlazeRPC: the generated stubs of bench.proto,
grpc.aio.server with default options, and uvloop when installed (as BlazeRPC uses it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc


async def serve(host: str, port: int, gen_dir: Path) -> None:
    sys.path.insert(0, str(gen_dir))
    import bench_pb2  # type: ignore[import-not-found]
    import bench_pb2_grpc  # type: ignore[import-not-found]

    class Servicer(bench_pb2_grpc.InferenceServiceServicer):  # type: ignore[misc]
        async def PredictEcho(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            return bench_pb2.EchoResponse(result=request.text)

        async def PredictTokens(
            self, request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            for i in range(request.n):
                yield bench_pb2.TokensResponse(result=str(i))

    server = grpc.aio.server()
    bench_pb2_grpc.add_InferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


def main(serve: Callable[[str, int, Path], Coroutine[Any, Any, None]] = serve) -> None:
    """`--host --port --gen-dir [--loop]`, then serve on uvloop when installed (as BlazeRPC
    does) unless `--loop asyncio` asks for the loop a plain grpcio install has."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gen-dir", type=Path, required=True, help="protoc output for the proto")
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    args = parser.parse_args()
    coro = serve(args.host, args.port, args.gen_dir)
    if args.loop == "asyncio":
        asyncio.run(coro)
        return
    try:
        import uvloop
    except ImportError:
        if args.loop == "uvloop":
            raise
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main()
