"""Hand-written grpcio asyncio servicer for the per-call benchmark: what a user writes without
BlazeRPC, on grpcio alone.

The generated stubs of percall.proto, `grpc.aio.server()` with default options, each model
called directly in its `async def` method (the cheapest path there is), and the event loop
`--loop` names (asyncio, as a plain `pip install grpcio` has it, unless told otherwise).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
import handwritten
import numpy as np
from percall_apps import BLOB_SHAPE, WEIGHTS


async def serve(host: str, port: int, gen_dir: Path) -> None:
    sys.path.insert(0, str(gen_dir))
    import percall_pb2 as pb2  # type: ignore[import-not-found]
    import percall_pb2_grpc as pb2_grpc  # type: ignore[import-not-found]

    def decode(t: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if t.dtype != "float":
            raise ValueError(f"expected float, got {t.dtype}")
        x = np.frombuffer(t.data, np.float32).reshape(tuple(t.shape))
        if shape is not None and x.shape != shape:
            raise ValueError(f"expected shape {shape}, got {x.shape}")
        return x

    def encode(y: np.ndarray) -> Any:
        return pb2.TensorProto(shape=y.shape, dtype="float", data=y.astype("<f4").tobytes())

    class Servicer(pb2_grpc.InferenceServiceServicer):  # type: ignore[misc]
        async def PredictEcho(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            return pb2.EchoResponse(result=request.text)

        async def PredictMatmul(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            return pb2.MatmulResponse(result=encode(decode(request.x) @ WEIGHTS))

        async def PredictImage(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            x = decode(request.x, (3, 224, 224))
            return pb2.ImageResponse(result=encode(x.mean(axis=(1, 2))))

        async def PredictBlob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            x = decode(request.x, BLOB_SHAPE)
            return pb2.BlobResponse(result=float(x.sum(dtype=np.float64)))

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 * 2**20),
            ("grpc.max_send_message_length", 64 * 2**20),
        ]
    )
    pb2_grpc.add_InferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    handwritten.main(serve)
