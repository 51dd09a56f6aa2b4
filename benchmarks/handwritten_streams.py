"""Hand-written grpcio asyncio servicer of streams.proto's bidirectional echo: what a user
writes without BlazeRPC (generated stubs, an async generator over the request iterator,
grpc.aio.server with default options, uvloop when installed)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import handwritten


async def serve(host: str, port: int, gen_dir: Path) -> None:
    sys.path.insert(0, str(gen_dir))
    import streams_pb2 as pb2  # type: ignore[import-not-found]
    import streams_pb2_grpc as pb2_grpc  # type: ignore[import-not-found]

    class Servicer(pb2_grpc.InferenceServiceServicer):  # type: ignore[misc]
        async def PredictEchoStream(
            self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async for request in requests:
                yield pb2.EchoStreamResponse(result=request.texts)

    server = grpc.aio.server()
    pb2_grpc.add_InferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    handwritten.main(serve)
