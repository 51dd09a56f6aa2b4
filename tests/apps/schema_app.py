"""An app using every kind of field, for `blaze proto` + protoc + stock stubs."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from blazerpc import BlazeApp, TensorInput, TensorOutput

app = BlazeApp()


@dataclass
class Point:
    x: float
    y: float


@dataclass
class Detection:
    label: str
    score: float
    corners: list[Point]


@dataclass
class Sentiment:
    label: str
    score: float


@app.model("echo")
async def echo(text: str) -> str:
    return text


@app.model("sentiment-v2", version="2")
def sentiment_v2(text: str, threshold: float = 0.5, max_len: int = 512) -> Sentiment:
    score = min(1.0, len(text[:max_len]) / 10)
    return Sentiment("positive" if score >= threshold else "negative", score)


@app.model("classify")
def classify(
    features: TensorInput[np.float32, "batch", 4],
) -> TensorOutput[np.int64, "batch"]:
    return features.argmax(axis=1).astype(np.int64)


@app.model("detect")
async def detect(
    image: TensorInput[np.uint8, "h", "w", 3],
    labels: list[str],
    word_counts: dict[str, int],
    hint: Point | None = None,
    flag: bool = False,
    raw: bytes = b"",
) -> list[Detection]:
    h, w, _ = image.shape
    return [
        Detection(label, float(word_counts.get(label, 0)), [Point(0.0, 0.0), Point(w, h)])
        for label in labels
    ]


@app.model("generate", streaming=True)
async def generate(prompt: str, delay: float = 0.0) -> AsyncIterator[str]:
    for token in prompt.split():
        if delay:
            await asyncio.sleep(delay)
        yield token
