"""How big the batches of a device-bound model are, against how many calls are in flight.

Serves `benchmarks/batching_apps.py`'s `device` model (5 ms per call under one lock, whatever
the batch size) in this process, keeps 1, 4, 16 and 64 `BlazeClient` calls in flight for a
while at each level, and records the batcher's own count of requests per model call
(`server.stats()`), which is what `benchmarks/plot.py` draws. The load comes from Python in
this process, which is fine for batch sizes (the batcher sees the same arrivals) but not for
throughput: that is what the h2load scripts measure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness
from benchmarks.batching_apps import app
from blazerpc import BlazeClient

LEVELS = (1, 4, 16, 64)


async def measure(seconds: float) -> dict[str, dict[str, int]]:
    server = await app.start(harness.HOST, 0)
    row = np.ones((1, 4), np.float32)
    sizes: dict[str, dict[str, int]] = {}
    try:
        async with BlazeClient(harness.HOST, server.port) as client:
            for level in LEVELS:
                before = Counter(server.stats()["device"].batch_sizes)
                deadline = asyncio.get_running_loop().time() + seconds

                async def caller(deadline: float = deadline) -> None:
                    while asyncio.get_running_loop().time() < deadline:
                        await client.predict("device", x=row)

                await asyncio.gather(*(caller() for _ in range(level)))
                seen = Counter(server.stats()["device"].batch_sizes) - before
                sizes[str(level)] = {str(size): calls for size, calls in sorted(seen.items())}
                print(f"{level} in flight: {sizes[str(level)]}", file=sys.stderr)
    finally:
        await server.stop(5)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="per level of concurrency")
    args = parser.parse_args()
    sizes = asyncio.run(measure(args.seconds))
    harness.write_data(
        "batch_sizes",
        {
            "model": "device (5 ms per call under one lock), max_batch_size=32",
            "batch_sizes": sizes,  # calls in flight -> {requests in a model call: model calls}
        },
    )


if __name__ == "__main__":
    main()
