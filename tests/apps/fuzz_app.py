"""The app the fuzz suite attacks: one model of each kind of parameter, none of which fails
for any input that passes validation, so that any INTERNAL, UNKNOWN or 5xx is the server's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from blazerpc import BlazeApp, TensorInput, TensorOutput

app = BlazeApp(name="fuzz", max_message_mb=4)


@dataclass
class Point:
    x: float
    y: float


@app.model("echo", openai=True)
async def echo(text: str, times: int = 1) -> str:
    return text * max(0, min(times, 3))


@app.model("scalars")
def scalars(ratio: float, flag: bool, count: int, data: bytes) -> float:
    return float(ratio) if flag else float(count + len(data))


@app.model("collections")
async def collections(words: list[str], counts: dict[str, int], point: Point) -> int:
    return len(words) + len(counts)


@app.model("rows")
def rows(features: TensorInput[np.float32, "batch", 4]) -> TensorOutput[np.float32, "batch"]:
    return features.sum(axis=1)


@app.model("anything")
def anything(values: list[float]) -> list[float]:
    return values


@app.model("tokens", streaming=True, openai=True)
async def tokens(prompt: str) -> AsyncIterator[str]:
    for word in prompt.split()[:5]:
        yield word


@app.model("total")
async def total(numbers: AsyncIterator[int]) -> int:
    return sum([n async for n in numbers])


@app.model("live", streaming=True)
async def live(points: AsyncIterator[Point]) -> AsyncIterator[float]:
    async for point in points:
        yield point.x + point.y
