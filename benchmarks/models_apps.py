"""The model benchmark's BlazeRPC app: all-MiniLM-L6-v2 on strings, as a user writes it.

A plain `def` with `batched=True` on `list[str]` (the tokenizer runs in the server), one
384-float32 tensor back per sentence, weights loaded by a start-up hook, the app's default
batching, and a `batch_key` of each sentence's token count, so that when more sentences wait
than one batch holds, a batch takes sentences of nearby lengths and pads little. The model
code is `embedder.py`, the same for every server of `bench_models.py`.
"""

import os

import numpy as np
from embedder import DIM, Embedder

from blazerpc import BlazeApp, TensorOutput

# 32 like the peers; bench_models' `blazerpc-b16` serves it with 16, below its 64 callers, so
# that the batch_key has sentences to choose from.
app = BlazeApp(name="bench-models", max_batch_size=int(os.environ.get("BENCH_MAX_BATCH", 32)))


@app.on_startup
def load() -> None:
    app.state.embedder = Embedder()


def tokens(text: str) -> int:
    return app.state.embedder.token_count(text)


@app.model("embed", batched=True, batch_key=tokens)
def embed(text: list[str]) -> list[TensorOutput[np.float32, DIM]]:
    return app.state.embedder(text)
