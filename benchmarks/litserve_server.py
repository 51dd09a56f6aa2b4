"""LitServe serving the model benchmark's embedder (``embedder.py``), batched as LitServe's users
batch: ``LitAPI(max_batch_size=32, batch_timeout=0.01)``, JSON over HTTP/1.1 at ``/predict``.

Runs in its own venv (``benchmarks/.work/litserve-venv``: ``pip install litserve`` beside the
model's packages); ``bench_models.py`` creates it on first use. A ``batch_timeout`` of 0 would
make LitServe poll its queue without blocking, spinning a core of this two-core machine; 10 ms
is BlazeRPC's default ``batch_timeout_ms`` too.
"""

from __future__ import annotations

import argparse

import litserve as ls
import numpy as np
from embedder import Embedder


class EmbedAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.embedder = Embedder()

    def decode_request(self, request: dict) -> str:
        return request["text"]

    def predict(self, texts: list[str]) -> np.ndarray:
        return self.embedder(texts)

    def encode_response(self, output: np.ndarray) -> dict:
        return {"embedding": output.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    api = EmbedAPI(max_batch_size=32, batch_timeout=0.01)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host=args.host, port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
