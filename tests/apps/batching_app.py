"""An app with one model of each kind, for `blaze serve`'s banner."""

from collections.abc import AsyncIterator

import numpy as np

from blazerpc import BlazeApp, TensorInput, TensorOutput

app = BlazeApp(name="batching")


@app.model("classify", max_batch_size=16)
def classify(x: TensorInput[np.float32, "batch", 4]) -> TensorOutput[np.int64, "batch"]:
    return x.argmax(axis=1)


@app.model("sentiment", batched=True)
def sentiment(text: list[str]) -> list[float]:
    return [float(len(t)) for t in text]


@app.model("echo")
async def echo(text: str) -> str:
    return text


@app.model("words", streaming=True)
async def words(text: str) -> AsyncIterator[str]:
    for w in text.split():
        yield w
