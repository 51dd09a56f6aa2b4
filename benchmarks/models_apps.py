"""The model benchmark's BlazeRPC app: all-MiniLM-L6-v2 on strings, as a user writes it.

A plain `def` with `batched=True` on `list[str]` (the tokenizer runs in the server), one
384-float32 tensor back per sentence, weights loaded by a start-up hook, the app's default
batching, a `batch_key` of each sentence's token count, so that when more sentences wait
than one batch holds, a batch takes sentences of nearby lengths and pads little, and a
`max_batch_tokens` of 256, so that a batch padded past 256 tokens runs as a few calls over its
sentences sorted by length: on this CPU a forward costs about the tokens it computes plus
some 9 ms a call, and 256 tokens (4 to 5 sentences) computed the least per sentence of the
budgets `padding_cost.py` measured. The model code is `embedder.py`, the same for every server
of `bench_models.py`.
"""

import os

import numpy as np
from embedder import DIM, Embedder

from blazerpc import BlazeApp, TensorOutput

# 32 like the peers; bench_models' `blazerpc-nobudget` serves it without max_batch_tokens.
app = BlazeApp(name="bench-models", max_batch_size=32)
MAX_BATCH_TOKENS = int(os.environ.get("BENCH_MAX_BATCH_TOKENS", 256)) or None


@app.on_startup
def load() -> None:
    app.state.embedder = Embedder()


def tokens(text: str) -> int:
    return app.state.embedder.token_count(text)


@app.model("embed", batched=True, batch_key=tokens, max_batch_tokens=MAX_BATCH_TOKENS)
def embed(text: list[str]) -> list[TensorOutput[np.float32, DIM]]:
    return app.state.embedder(text)
