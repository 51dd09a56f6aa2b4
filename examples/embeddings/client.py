"""Embed sentences over native gRPC and show which are closest.

python examples/embeddings/client.py --port 50051
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np

from blazerpc import BlazeClient

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music in front of an audience.",
    "The stock market fell sharply this morning.",
    "Shares dropped as trading opened today.",
]


async def embed_all(host: str, port: int, sentences: list[str]) -> np.ndarray:
    """Every sentence's embedding, one request each, sent at once: the server batches them."""
    async with BlazeClient(host, port) as client:
        rows = await asyncio.gather(*(client.predict("embed", text=s) for s in sentences))
    return np.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    args = parser.parse_args()
    vectors = embed_all(args.host, args.port, SENTENCES)
    vectors = asyncio.run(vectors)
    similarity = vectors @ vectors.T  # unit vectors: the dot product is the cosine
    for i, sentence in enumerate(SENTENCES):
        nearest = max((j for j in range(len(SENTENCES)) if j != i), key=lambda j: similarity[i, j])
        print(f"{sentence!r}\n  nearest: {SENTENCES[nearest]!r} ({similarity[i, nearest]:.2f})")


if __name__ == "__main__":
    main()
