"""Hand-written grpcio asyncio servicer for the batching benchmark's contract, unbatched.

What a user writes without BlazeRPC: the generated stubs of batching.proto, the cheap model
inline on the event loop (and, for PredictMatmulSync, in a thread as BlazeRPC runs a plain
`def`), the device model in a thread (it blocks, as a GPU call does), and uvloop when
installed.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import handwritten
import numpy as np

WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
DEVICE_SECONDS = 0.005
_device = threading.Lock()


def run_matmul(x: np.ndarray) -> np.ndarray:
    return x @ WEIGHTS


def run_device(x: np.ndarray) -> np.ndarray:
    with _device:
        time.sleep(DEVICE_SECONDS)
        return x @ WEIGHTS


async def serve(host: str, port: int, gen_dir: Path) -> None:
    sys.path.insert(0, str(gen_dir))
    import batching_pb2 as pb2  # type: ignore[import-not-found]
    import batching_pb2_grpc as pb2_grpc  # type: ignore[import-not-found]

    def decode(t: Any) -> np.ndarray:
        if t.dtype != "float":
            raise ValueError(f"expected float, got {t.dtype}")
        return np.frombuffer(t.data, np.float32).reshape(tuple(t.shape))

    def encode(y: np.ndarray) -> Any:
        return pb2.TensorProto(shape=y.shape, dtype="float", data=y.astype("<f4").tobytes())

    class Servicer(pb2_grpc.InferenceServiceServicer):  # type: ignore[misc]
        async def PredictMatmul(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            return pb2.MatmulResponse(result=encode(run_matmul(decode(request.x))))

        async def PredictMatmulSync(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            y = await asyncio.to_thread(run_matmul, decode(request.x))
            return pb2.MatmulSyncResponse(result=encode(y))

        async def PredictDevice(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            y = await asyncio.to_thread(run_device, decode(request.x))
            return pb2.DeviceResponse(result=encode(y))

    server = grpc.aio.server()
    pb2_grpc.add_InferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    handwritten.main(serve)
