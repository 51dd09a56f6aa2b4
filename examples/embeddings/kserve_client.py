"""Embed a sentence with Triton's stock client over KServe v2 REST (`--http-port`).

python examples/embeddings/kserve_client.py --url 127.0.0.1:8000 "A man plays guitar."
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.http as httpclient


def embed(url: str, sentence: str) -> np.ndarray:
    """One sentence's 384 floats: the input `text` is a BYTES tensor of one string, the output
    `result` an FP32 tensor of 384."""
    client = httpclient.InferenceServerClient(url)
    try:
        text = httpclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([sentence.encode()], dtype=np.object_))
        reply = client.infer("embed", [text], outputs=[httpclient.InferRequestedOutput("result")])
        return reply.as_numpy("result")
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="127.0.0.1:8000", help="host:port of --http-port")
    parser.add_argument("sentence", nargs="?", default="A man is playing a guitar on stage.")
    args = parser.parse_args()
    vector = embed(args.url, args.sentence)
    print(f"{vector.shape[0]} floats, norm {np.linalg.norm(vector):.3f}: {vector[:4]} ...")


if __name__ == "__main__":
    main()
