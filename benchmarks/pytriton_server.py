"""PyTriton serving the per-call benchmark's ``matmul`` model: Triton's C++ server and dynamic
batcher in front of the same numpy function, reached through KServe v2 gRPC.

Runs in its own venv (``benchmarks/.work/pytriton-venv``, made from Debian's python3.11,
which Triton's Python stub needs); ``bench_percall.py`` creates it on first use. Triton's
HTTP and metrics ports are taken free at start-up, beside the gRPC port it is given.
"""

from __future__ import annotations

import argparse
import socket

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10  # as in percall_apps.py


@batch
def matmul(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"result": x @ WEIGHTS}


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="gRPC port")
    args = parser.parse_args()
    config = TritonConfig(
        grpc_address=args.host,
        grpc_port=args.port,
        http_address=args.host,
        http_port=free_port(args.host),
        metrics_port=free_port(args.host),
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="matmul",
            infer_func=matmul,
            inputs=[Tensor(name="x", dtype=np.float32, shape=(4,))],
            outputs=[Tensor(name="result", dtype=np.float32, shape=(3,))],
            # As BlazeRPC's defaults: batches of up to 32, gathered from what is queued.
            config=ModelConfig(max_batch_size=32, batcher=DynamicBatcher()),
        )
        triton.serve()


if __name__ == "__main__":
    main()
