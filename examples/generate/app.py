"""Token streaming from a real transformer's generation loop.

A small GPT-2 (2 layers, 64 wide, characters as tokens) is built from a `transformers`
config and saved to a local directory the first time the server starts, then loaded from
there as a deployed model would be: nothing is downloaded. Its weights are random, so its
text is noise; what the example shows is the serving loop. Each generated token is one
message on a server-streaming RPC, and a client that goes away stops generation within one
token: the server closes the generator at its next `yield`.

    blaze serve examples.generate.app:app --port 50051
"""

from __future__ import annotations

import logging
import os
import string
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from blazerpc import BlazeApp
from blazerpc.contrib import thread_share

# Characters are the tokens. With random weights no token would mean "the end", so there is
# none: the text always runs to `max_tokens`.
VOCAB = string.ascii_letters + string.digits + string.punctuation + " "
MODEL_DIR = Path(os.environ.get("GENERATE_MODEL_DIR", Path(tempfile.gettempdir()) / "tiny-gpt2"))

app = BlazeApp(name="generate")
logger = logging.getLogger("examples.generate")
model: Any = None  # a GPT2LMHeadModel, once `load` has run


def build(directory: Path) -> None:
    """Save a seeded, randomly initialised GPT-2 to `directory`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(VOCAB),
        n_positions=1024,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=None,
        eos_token_id=None,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)


@app.on_startup
def load() -> None:
    """Build the model once, load it from disk in each worker, and run one token through it
    before the server admits calls."""
    import torch
    from transformers import DynamicCache, GPT2LMHeadModel

    global model
    torch.set_num_threads(thread_share())
    if not (MODEL_DIR / "config.json").exists():
        build(MODEL_DIR)
    model = GPT2LMHeadModel.from_pretrained(MODEL_DIR).eval()
    next_token(torch.tensor([encode("warm up")]), DynamicCache(), temperature=1.0)


def encode(text: str) -> list[int]:
    return [VOCAB.index(c) for c in text if c in VOCAB] or [VOCAB.index(" ")]


def next_token(ids: Any, cache: Any, temperature: float) -> int:
    """One forward step: the next token after `ids`, given the cache of everything before
    (which the step extends). Inference mode is entered per step, never across a `yield`:
    each step of a plain generator may run on a different pool thread."""
    import torch

    with torch.inference_mode():
        logits = model(ids, cache, use_cache=True).logits[0, -1]
        if temperature <= 0:
            return int(logits.argmax())
        return int(torch.multinomial(torch.softmax(logits / temperature, -1), 1))


@app.model("generate", streaming=True)
def generate(prompt: str, max_tokens: int = 64, temperature: float = 1.0) -> Iterator[str]:
    """`max_tokens` characters after `prompt`, each sent as soon as it is sampled."""
    import torch
    from transformers import DynamicCache

    cache, ids = DynamicCache(), torch.tensor([encode(prompt)])
    sent, finished = 0, False
    try:
        for _ in range(max_tokens):
            token = next_token(ids, cache, temperature)
            sent += 1
            yield VOCAB[token]
            ids = torch.tensor([[token]])
        finished = True
    finally:  # a client that disconnects closes the generator at the `yield` above
        logger.info(
            "generated %d tokens%s", sent, "" if finished else ": the client went away, stopped"
        )
