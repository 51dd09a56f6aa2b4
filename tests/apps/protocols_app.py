"""The app of docs/protocols.md's examples (the docs show this file below its docstring)."""

from collections.abc import AsyncIterator

import numpy as np

from blazerpc import BlazeApp, TensorInput, TensorOutput

app = BlazeApp(name="protocols")
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3)


@app.model("project")
def project(features: TensorInput[np.float32, "batch", 4]) -> TensorOutput[np.float32, "batch", 3]:
    return features @ WEIGHTS


@app.model("echo")
async def echo(text: str) -> str:
    return text.upper()


@app.model("tokens", streaming=True)
async def tokens(prompt: str) -> AsyncIterator[str]:
    for word in prompt.split():
        yield word
