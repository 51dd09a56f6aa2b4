"""Charts of the benchmark data in benchmarks/results/*.json, as SVG in benchmarks/charts/,
shown by RESULTS.md and the documentation site (`make plots`; matplotlib is in the `docs`
extra).

- `<section>.svg` for each section whose scripts take turns between servers: req/s and p99
  latency (medians of the rounds) per server and scenario, a scenario being a load such as
  `thread_64` (the `def` model at 64 calls in flight);
- `batch_sizes.svg` from `batch_sizes.py`: how many requests each model call took, at each
  number of calls in flight.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

BENCH_DIR = Path(__file__).resolve().parent
DATA_DIR = BENCH_DIR / "results"
CHART_DIR = BENCH_DIR / "charts"
NAN = float("nan")  # a server that did not run a scenario gets no bar

# Text stays text (small files), and ids and dates do not change from one run to the next.
plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "blazerpc", "font.size": 9})


def _save(fig: plt.Figure, name: str) -> None:
    CHART_DIR.mkdir(exist_ok=True)
    path = CHART_DIR / f"{name}.svg"
    fig.savefig(path, metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")


def servers_chart(record: dict) -> None:
    """Grouped bars: one group per scenario, one bar per server; req/s above, p99 below."""
    samples: dict[str, dict[str, list[float]]] = record["samples"]
    servers = list(samples)
    scenarios = sorted(
        {
            key.removesuffix("rps").rstrip("_")
            for m in samples.values()
            for key in m
            if key.endswith("rps")
        },
        key=lambda s: list(next(iter(samples.values()))).index(f"{s}_rps" if s else "rps"),
    )
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True)
    width = 0.8 / len(servers)
    for ax, suffix, label in (
        (axes[0], "rps", "requests/s"),
        (axes[1], "p99_ms", "p99 latency, ms"),
    ):
        for i, server in enumerate(servers):
            values = [
                statistics.median(samples[server].get(f"{s}_{suffix}" if s else suffix, [NAN]))
                for s in scenarios
            ]
            ax.bar([x + i * width for x in range(len(scenarios))], values, width, label=server)
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks([x + width * (len(servers) - 1) / 2 for x in range(len(scenarios))])
    axes[1].set_xticklabels(scenarios or [record["section"]])
    ncol = min(len(servers), 4)  # more servers than fit a row wrap onto the next
    rows = -(-len(servers) // ncol)
    axes[0].legend(ncol=ncol, loc="lower center", bbox_to_anchor=(0.5, 1.02))
    fig.suptitle(
        f"{record['section']}: medians of the rounds ({record['run']})", y=0.98 + 0.05 * rows
    )
    _save(fig, record["section"])


def batch_sizes_chart(record: dict) -> None:
    """Per level of concurrency, the share of model calls that took each number of requests."""
    levels: dict[str, dict[str, int]] = record["batch_sizes"]
    fig, axes = plt.subplots(1, len(levels), figsize=(2.2 * len(levels), 2.6), sharey=True)
    for ax, (level, sizes) in zip(axes, levels.items(), strict=True):
        calls = sum(sizes.values())
        ax.bar([int(s) for s in sizes], [100 * n / calls for n in sizes.values()], width=0.9)
        ax.set_title(f"{level} in flight")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("requests per model call")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("% of model calls")
    fig.suptitle(f"Batch sizes: {record['model']} ({record['run']})", y=1.06)
    _save(fig, "batch_sizes")


def main() -> None:
    for path in sorted(DATA_DIR.glob("*.json")):
        record = json.loads(path.read_text())
        if "batch_sizes" in record:
            batch_sizes_chart(record)
        elif "samples" in record:
            servers_chart(record)


if __name__ == "__main__":
    main()
