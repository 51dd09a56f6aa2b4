"""An app written against blazerpc 2.2.1's documented API only; served unchanged by 2.2.1 and
by this package (the compatibility tests import it under both)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from blazerpc import BlazeApp, Context, Depends, TensorInput, TensorOutput

app = BlazeApp(name="compat-221")
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3)


@app.model("echo")
def echo(text: str) -> str:
    return text.upper()


@app.model("add")
async def add(a: float, b: float) -> float:
    return a + b


@app.model("lengths")
def lengths(text: list[str]) -> list[float]:
    return [len(t) / 4 for t in text]


@app.model("project")
def project(
    features: TensorInput[np.float32, tuple[Literal["batch"], Literal[4]]],
) -> TensorOutput[np.float32, tuple[Literal["batch"], Literal[3]]]:
    return features @ WEIGHTS


@app.model("words", streaming=True)
async def words(sentence: str) -> str:
    for word in sentence.split():
        yield word


def caller_method(ctx: Context) -> str:
    return ctx.method


@app.model("whoami")
async def whoami(text: str, ctx: Context, method: str = Depends(caller_method)) -> str:
    return f"{text} via {method}"


app.state.greeting = "hello"


def greeting_of(ctx: Context) -> str:
    return ctx.app_state.greeting


def token_of(ctx: Context) -> str | None:
    return dict(ctx.metadata).get("authorization") if ctx.metadata else None


@app.model("greet")
def greet(
    ctx: Context,
    greeting: str = Depends(greeting_of),
    token: str | None = Depends(token_of),
) -> str:
    return f"{greeting} auth={'yes' if token else 'no'}"
