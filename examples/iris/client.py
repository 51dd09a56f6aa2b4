"""Ask the iris server about three flowers, once as a batch tensor and once per flower.

The client needs no generated code and no copy of the server's types: ``BlazeClient``
reads the schema from the server over gRPC reflection when it connects.

    python examples/iris/client.py --host 127.0.0.1 --port 50051
"""

import argparse
import asyncio

import numpy as np

from blazerpc import BlazeClient

# sepal length, sepal width, petal length, petal width (cm): one typical flower per species.
FLOWERS = np.array(
    [
        [5.1, 3.5, 1.4, 0.2],
        [6.0, 2.9, 4.5, 1.5],
        [6.9, 3.1, 5.4, 2.1],
    ],
    dtype=np.float32,
)


async def main(host: str, port: int) -> None:
    """Call ``iris`` once for the whole batch, then ``iris-species`` once per flower."""
    async with BlazeClient(host, port) as client:
        classes = await client.predict("iris", features=FLOWERS)
        print(f"iris: {len(FLOWERS)} flowers in one request -> classes {np.asarray(classes)}")

        print("iris-species: one request per flower")
        for sl, sw, pl, pw in FLOWERS.tolist():
            species = await client.predict(
                "iris-species", sepal_length=sl, sepal_width=sw, petal_length=pl, petal_width=pw
            )
            print(f"  sepal {sl:.1f} x {sw:.1f}, petal {pl:.1f} x {pw:.1f} -> {species}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Query the iris example server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
