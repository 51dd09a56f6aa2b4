"""Classify iris flowers with the served ONNX model: its fields (input `X`, outputs `label`
and `probabilities`) came from the graph.

    python examples/onnx/client.py --port 50051
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np

from blazerpc import BlazeClient

SPECIES = ["setosa", "versicolor", "virginica"]
FLOWERS = np.array([[5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 4.2, 1.5], [6.9, 3.1, 5.4, 2.1]], np.float32)


async def classify(host: str, port: int, flowers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The predicted class of each flower and the probability of every class."""
    async with BlazeClient(host, port) as client:
        reply = await client.predict("iris", X=flowers)
    return reply.label, reply.probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    args = parser.parse_args()
    labels, probabilities = asyncio.run(classify(args.host, args.port, FLOWERS))
    for flower, label, p in zip(FLOWERS, labels, probabilities, strict=True):
        sizes = ", ".join(f"{cm:.1f}" for cm in flower)
        print(f"[{sizes}] cm -> {SPECIES[label]} ({p[label]:.0%})")


if __name__ == "__main__":
    main()
