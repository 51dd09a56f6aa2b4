"""PyTriton serving a benchmark's model: Triton's C++ server and dynamic batcher in front of
the same Python function the other servers run, reached through KServe v2 gRPC.

``--model matmul``: the per-call benchmark's numpy matmul (``bench_percall.py``); ``--model
embed``: the model benchmark's all-MiniLM-L6-v2 (``embedder.py``, ``bench_models.py``), one
sentence (BYTES) in and 384 float32 out per request.

Runs in its own venv (``benchmarks/.work/pytriton-venv``, made from Debian's python3.11,
which Triton's Python stub needs); the benchmarks create it on first use. Triton's HTTP and
metrics ports are taken free at start-up, beside the gRPC port it is given.
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


def bind_matmul(triton: Triton) -> None:
    triton.bind(
        model_name="matmul",
        infer_func=matmul,
        inputs=[Tensor(name="x", dtype=np.float32, shape=(4,))],
        outputs=[Tensor(name="result", dtype=np.float32, shape=(3,))],
        # As BlazeRPC's defaults: batches of up to 32, gathered from what is queued.
        config=ModelConfig(max_batch_size=32, batcher=DynamicBatcher()),
    )


def bind_embed(triton: Triton) -> None:
    from embedder import DIM, Embedder  # torch and the model: only in the model benchmark

    embedder = Embedder()

    @batch
    def embed(text: np.ndarray) -> dict[str, np.ndarray]:
        return {"embedding": embedder([t.decode() for t in text[:, 0]])}

    triton.bind(
        model_name="embed",
        infer_func=embed,
        inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
        outputs=[Tensor(name="embedding", dtype=np.float32, shape=(DIM,))],
        config=ModelConfig(max_batch_size=32, batcher=DynamicBatcher()),
    )


MODELS = {"matmul": bind_matmul, "embed": bind_embed}


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="gRPC port")
    parser.add_argument("--model", choices=sorted(MODELS), default="matmul")
    args = parser.parse_args()
    config = TritonConfig(
        grpc_address=args.host,
        grpc_port=args.port,
        http_address=args.host,
        http_port=free_port(args.host),
        metrics_port=free_port(args.host),
    )
    with Triton(config=config) as triton:
        MODELS[args.model](triton)
        triton.serve()


if __name__ == "__main__":
    main()
