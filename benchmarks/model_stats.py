"""What ``embedder.py`` counts inside every server of ``bench_models.py``, and how it is read.

One file of int64 per server, memory-mapped by the model's process and by the benchmark:
calls, sentences, tokens needed (the sentences' own) and tokens computed (batch size x the
longest sentence of the batch), then a ring of the batch sizes in order. No torch here: the
benchmark's own venv reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CALLS, ROWS, TOKENS_NEEDED, TOKENS_COMPUTED = range(4)
HEADER = 4
RING = 1 << 15
"""Batch sizes kept, in order: far more batches than one benchmark run makes."""
ENV = "BENCH_STATS_FILE"
"""The variable that tells a server's model where its counters live."""


def open_counters(path: str | Path, *, create: bool = False) -> np.memmap:
    """The counters and the ring of batch sizes; ``create`` makes a zeroed file."""
    return np.memmap(path, np.int64, "w+" if create else "r+", shape=(HEADER + RING,))


@dataclass(frozen=True)
class Snapshot:
    calls: int
    rows: int
    tokens_needed: int
    tokens_computed: int

    @classmethod
    def read(cls, counters: np.ndarray) -> Snapshot:
        return cls(*(int(v) for v in counters[:HEADER]))

    def since(self, before: Snapshot) -> dict[str, float]:
        """Mean batch size and padding waste (share of computed tokens that were padding)."""
        calls = self.calls - before.calls
        computed = self.tokens_computed - before.tokens_computed
        needed = self.tokens_needed - before.tokens_needed
        return {
            "batch": (self.rows - before.rows) / calls if calls else 0.0,
            "waste_pct": 100 * (1 - needed / computed) if computed else 0.0,
        }


def batch_sizes(counters: np.ndarray, before: Snapshot, after: Snapshot) -> list[int]:
    """The sizes of the batches run between two snapshots, in order."""
    first = max(before.calls, after.calls - RING)
    return [int(counters[HEADER + i % RING]) for i in range(first, after.calls)]
