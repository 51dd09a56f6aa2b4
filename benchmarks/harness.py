"""Shared machinery for the benchmark scripts: servers, h2load, alternating rounds, RESULTS.md.

Load comes from h2load in its own process, never from Python, because a Python load
generator on a two-core machine mostly measures itself. Every server runs in its own
process, all of them stay up for the whole run, and rounds alternate between them
(A B C A B C ...) so that drift on a shared machine hits every server alike.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import importlib
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
WORK_DIR = BENCH_DIR / ".work"
GEN_DIR = WORK_DIR / "gen"
LOG_DIR = WORK_DIR / "logs"
RESULTS_PATH = BENCH_DIR / "RESULTS.md"
DATA_DIR = BENCH_DIR / "results"  # each section's rounds as JSON, for benchmarks/plot.py
REFERENCE_VENV = WORK_DIR / "refvenv"
REFERENCE_VERSION = "2.2.1"
PYTRITON_VENV = WORK_DIR / "pytriton-venv"
PYTRITON_PYTHON = "/usr/bin/python3.11"  # Triton's Python stub is built for Debian's 3.11
HOST = "127.0.0.1"
APP = "benchmarks.apps:app"

# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class ServerSpec:
    """How to launch one contender; ``command`` gets the port it must listen on."""

    name: str
    description: str
    command: Callable[[int], list[str]]
    env: Mapping[str, str] = field(default_factory=dict)


def blazerpc_server() -> ServerSpec:
    """This repository's BlazeRPC, through its own CLI, as a user would start it."""
    blaze = Path(sys.executable).with_name("blaze")
    return ServerSpec(
        name="blazerpc",
        description=f"BlazeRPC (this repo): `blaze serve {APP}`",
        command=lambda port: [
            str(blaze),
            "serve",
            APP,
            "--host",
            HOST,
            "--port",
            str(port),
            "--app-dir",
            str(ROOT),
        ],
    )


def handwritten_server(
    script: str = "handwritten.py",
    how: str = "",
    gen_dir: Path | None = None,
    args: Sequence[str] = (),
    name: str = "grpcio",
) -> ServerSpec:
    """A hand-written grpcio asyncio servicer of the same contract (`script`, on the stubs in
    `gen_dir`, bench.proto's by default); `how` says what sets it apart, `args` are flags of
    its own."""
    gen_dir = gen_dir or compile_proto()
    path = BENCH_DIR / script
    return ServerSpec(
        name=name,
        description=f"hand-written grpcio asyncio servicer{how} (benchmarks/{script})",
        command=lambda port: [
            sys.executable,
            str(path),
            *("--host", HOST, "--port", str(port), "--gen-dir", str(gen_dir)),
            *args,
        ],
    )


def reference_server() -> ServerSpec:
    """The published ``blazerpc==2.2.1`` in a venv of its own, serving the same app module."""
    blaze = ensure_reference_venv() / "bin" / "blaze"
    return ServerSpec(
        name="reference",
        description=f"reference `blazerpc=={REFERENCE_VERSION}` from PyPI: `blaze serve {APP}`",
        command=lambda port: [str(blaze), "serve", APP, "--host", HOST, "--port", str(port)],
        # Our src/ must not shadow the reference package, and its CLI imports from the cwd.
        env={"PYTHONPATH": ""},
    )


SERVERS: dict[str, Callable[[], ServerSpec]] = {
    "blazerpc": blazerpc_server,
    "grpcio": handwritten_server,
    "reference": reference_server,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    spec: ServerSpec
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def pids(self) -> list[int]:
        """The server's processes: its own and any it started (PyTriton runs Triton and a
        Python stub beside its script), all in the process group `running` gave it."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    fields = (entry / "stat").read_text().rpartition(")")[2].split()
                    if int(fields[2]) == self.process.pid:  # field 5 of proc(5): pgrp
                        pids.append(int(entry.name))
        return pids

    def cpu_seconds(self) -> float:
        """User+system CPU of the server's processes, all threads: cost per call, whatever
        the load."""
        ticks = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
        return ticks / os.sysconf("SC_CLK_TCK")

    def reset_peak_rss(self) -> None:
        """Start a new peak-RSS window (proc(5): writing 5 to clear_refs resets VmHWM)."""
        for pid in self.pids():
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def peak_rss_mb(self) -> float:
        """Peak resident memory since the last `reset_peak_rss`, summed over the processes."""
        kb = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        kb += int(line.split()[1])
        return kb / 1024


def _wait_for_port(server: RunningServer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.spec.name} exited early:\n{_tail(server.log_path)}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, server.port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"{server.spec.name} did not listen on {server.port}:\n{_tail(server.log_path)}"
    )


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _stop(server: RunningServer) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        os.killpg(server.process.pid, signal.SIGCONT)  # a benchmark may have paused it
        try:
            server.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


@contextlib.contextmanager
def running(spec: ServerSpec) -> Iterator[RunningServer]:
    """Start ``spec`` on a free port in its own process group; kill the group on exit.

    The server's output goes to ``.work/logs/<name>-<port>.log``, kept only if something failed.
    """
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = LOG_DIR / f"{spec.name}-{port}.log"  # benchmarks may run side by side
    env = {**os.environ, **spec.env}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            spec.command(port),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RunningServer(spec, port, process, log_path)
    try:
        _wait_for_port(server)
        yield server
    finally:
        _stop(server)
    log_path.unlink()


# --------------------------------------------------------------------------- setup


def compile_proto(proto: str = "bench.proto") -> Path:
    """Compile a .proto of benchmarks/ with grpc_tools (at run time, so generated code is never
    committed).

    The files are generated aside and renamed into place, so a benchmark running alongside
    never imports a half-written module.
    """
    GEN_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WORK_DIR) as out:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{BENCH_DIR}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                str(BENCH_DIR / proto),
            ],
            check=True,
        )
        for generated in Path(out).iterdir():
            os.replace(generated, GEN_DIR / generated.name)
    return GEN_DIR


def load_stubs(proto: str = "bench.proto") -> tuple[ModuleType, ModuleType]:
    """The generated message and stub modules, for payloads and correctness checks."""
    gen_dir = str(compile_proto(proto))
    if gen_dir not in sys.path:
        sys.path.insert(0, gen_dir)
    stem = Path(proto).stem
    return importlib.import_module(f"{stem}_pb2"), importlib.import_module(f"{stem}_pb2_grpc")


def ensure_reference_venv() -> Path:
    """Create the reference release's own venv on first use, so it never meets our package."""
    blaze = REFERENCE_VENV / "bin" / "blaze"
    if not blaze.exists():
        print(f"creating {REFERENCE_VENV} with blazerpc=={REFERENCE_VERSION}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(REFERENCE_VENV)], check=True)
        pip = [str(REFERENCE_VENV / "bin" / "pip"), "install", f"blazerpc=={REFERENCE_VERSION}"]
        done = subprocess.run(pip, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            blaze.unlink(missing_ok=True)  # so the next run retries
            raise RuntimeError(f"{shlex.join(pip)} failed:\n{done.stdout}\n{done.stderr}")
    return REFERENCE_VENV


def ensure_venv(path: Path, python: str, requirements: Sequence[str]) -> Path:
    """A venv of ``python`` at ``path`` with ``requirements`` pip-installed; returns its python.

    Made on first use and completed when a benchmark asks for more than it holds: the
    requirements installed are recorded beside it, so a second benchmark sharing the venv
    installs only what it adds.
    """
    venv_python = path / "bin" / "python"
    marker = path / ".installed"
    installed = set(marker.read_text().splitlines()) if marker.exists() else set()
    if set(requirements) <= installed:
        return venv_python
    print(f"installing {' '.join(requirements)} into {path}", file=sys.stderr)
    if not venv_python.exists():
        subprocess.run([python, "-m", "venv", "--clear", str(path)], check=True)
    pip = [str(path / "bin" / "pip"), "install", *requirements]
    done = subprocess.run(pip, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(pip)} failed:\n{done.stdout}\n{done.stderr}")
    marker.write_text("\n".join(sorted(installed | set(requirements))) + "\n")
    return venv_python


def ensure_pytriton_venv(extra: Sequence[str] = ()) -> Path:
    """A venv of Debian's python3.11 with `nvidia-pytriton` from PyPI (and ``extra``, such as
    a model's packages), made on first use."""
    return ensure_venv(PYTRITON_VENV, PYTRITON_PYTHON, ["nvidia-pytriton", *extra])


# --------------------------------------------------------------------------- h2load


def grpc_frame(message: bytes) -> bytes:
    """gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, payload."""
    return struct.pack(">BI", 0, len(message)) + message


def write_payload(name: str, message: bytes) -> Path:
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    path = WORK_DIR / f"{name}.bin"
    path.write_bytes(grpc_frame(message))
    return path


@dataclass(frozen=True)
class LoadResult:
    """One h2load run; latencies and the wall time come from its per-request log."""

    rps: float
    started: int
    succeeded: int
    failed: int
    data_bytes: int
    wall_s: float
    latencies_ms: list[float]

    def check_unary(self, frame: int, who: str) -> None:
        """Fail unless every finished call carried its response of `frame` bytes.

        h2load counts HTTP 200 as success, but gRPC errors are 200 too: a failed call carries
        no message, so the DATA byte count gives failures away. Calls cut off by the end of
        the run may have their message but not yet their trailers.
        """
        complete = self.succeeded * frame
        cut_off = (self.started - self.succeeded) * frame
        if (
            self.failed
            or self.data_bytes % frame
            or not complete <= self.data_bytes <= complete + cut_off
        ):
            raise RuntimeError(
                f"{who}: {self.failed} failed, {self.data_bytes} data bytes "
                f"for {self.succeeded} responses of {frame} bytes"
            )

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def h2load(
    port: int,
    method: str,
    payload: Path,
    *,
    clients: int,
    streams: int,
    duration: float | None = None,
    requests: int | None = None,
    service: str = "blazerpc.InferenceService",
    http1_json: bool = False,
    headers: Sequence[str] = (),
) -> LoadResult:
    """Run h2load against ``/<service>/<method>``; exactly one of duration/requests.
    With ``http1_json`` it POSTs JSON over HTTP/1.1 (``--h1``, one request at a time per
    connection) to ``/<method>`` instead: an HTTP API such as the OpenAI-compatible one.

    No ``--warm-up-time``: h2load would count warm-up DATA bytes but not warm-up responses,
    which breaks the byte-count check; ``alternate`` runs a discarded warm-up round instead.
    """
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=WORK_DIR, prefix="h2load-", suffix=".log")
    os.close(fd)
    log_path = Path(name)  # empty and ours alone: h2load appends to an existing log
    path = method if http1_json else f"{service}/{method}"
    cmd = [
        "h2load",
        f"http://{HOST}:{port}/{path}",
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-t",
        "1",
        "-d",
        str(payload),
        *(
            ["--h1", "-H", "content-type: application/json"]
            if http1_json
            else ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        ),
        f"--log-file={log_path}",
    ]
    for header in headers:
        cmd += ["-H", header]
    if duration is not None:
        cmd += ["-D", f"{duration:g}"]
    else:
        cmd += ["-n", str(requests)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        log_lines = log_path.read_text().splitlines()
    finally:
        log_path.unlink()
    out = proc.stdout
    if proc.returncode != 0 or "requests:" not in out:
        raise RuntimeError(f"h2load failed ({shlex.join(cmd)}):\n{out}\n{proc.stderr}")
    rps = float(_grab(r"finished in [\d.]+\w+, ([\d.]+) req/s", out))
    started = int(_grab(r"(\d+) started", out))
    succeeded = int(_grab(r"(\d+) succeeded", out))
    failed = int(_grab(r"(\d+) failed", out)) + int(_grab(r"(\d+) errored", out))
    data_bytes = int(_grab(r"\((\d+)\) data", out))
    starts, ends, latencies = [], [], []
    for line in log_lines:
        start_us, status, duration_us = line.split("\t")[:3]
        if status != "200":
            continue
        starts.append(int(start_us))
        ends.append(int(start_us) + int(duration_us))
        latencies.append(int(duration_us) / 1000)
    wall_s = (max(ends) - min(starts)) / 1e6 if starts else 0.0
    return LoadResult(rps, started, succeeded, failed, data_bytes, wall_s, latencies)


def _grab(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"h2load output lacks {pattern!r}:\n{text}")
    return match.group(1)


def h2load_version() -> str:
    out = subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "h2load (version unknown)"


# --------------------------------------------------------------------------- rounds

Samples = dict[str, dict[str, list[float]]]
"""server name -> metric key -> one value per round."""

_recorded: Samples = {}
"""Every round `alternate` measured in this run, written beside the section as data."""

Measure = Callable[[RunningServer], Mapping[str, float]]


def alternate(
    specs: Sequence[ServerSpec],
    rounds: int,
    measure: Measure,
    check: Callable[[RunningServer], None],
) -> Samples:
    """Start every server, check each answers correctly, warm each up, then alternate rounds."""
    return alternate_cells(specs, rounds, [None], lambda server, _: measure(server), check)


def alternate_cells(
    specs: Sequence[ServerSpec],
    rounds: int,
    cells: Sequence[object],
    measure: Callable[[RunningServer, Any], Mapping[str, float]],
    check: Callable[[RunningServer], None],
) -> Samples:
    """As `alternate`, with each round going through ``cells`` (concurrencies, say) and the
    servers taking turns within each cell: the runs compared in a cell are seconds apart, not
    a whole turn of every cell apart, so drift on a shared machine touches them alike.
    ``measure(server, cell)`` returns the cell's metrics under keys of its own."""
    samples: Samples = {spec.name: {} for spec in specs}
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(running(spec)) for spec in specs]
        for server in servers:
            check(server)
            for cell in cells:
                measure(server, cell)  # discarded: first calls pay for lazy imports, caches
        for round_no in range(1, rounds + 1):
            for cell in cells:
                for server in servers:
                    result = measure(server, cell)
                    for key, value in result.items():
                        samples[server.spec.name].setdefault(key, []).append(value)
                    shown = ", ".join(f"{k}={v:,.2f}" for k, v in result.items())
                    print(
                        f"round {round_no}/{rounds} {server.spec.name:<10} {shown}",
                        file=sys.stderr,
                    )
    for name, metrics in samples.items():
        _recorded.setdefault(name, {}).update(metrics)
    return samples


def medians(samples: Samples) -> dict[str, dict[str, float]]:
    return {
        name: {key: statistics.median(values) for key, values in metrics.items()}
        for name, metrics in samples.items()
    }


# --------------------------------------------------------------------------- reporting


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    fmt: str = "{:,.0f}"


@dataclass(frozen=True)
class Target:
    """``subject``'s median ``metric`` must be at least ``min_ratio`` times ``baseline``'s."""

    subject: str
    baseline: str
    metric: str
    min_ratio: float


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary(samples: Samples, metrics: Sequence[Metric], ratio_metric: str) -> str:
    """Medians per server, the ratio of ``ratio_metric`` against every other server, and rounds."""
    mid = medians(samples)
    names = list(samples)
    headers = ["server", *(f"{m.label} (median)" for m in metrics)]
    label = next(m.label for m in metrics if m.key == ratio_metric)
    headers += [f"{label} ratio to {other}" for other in names]
    headers.append(f"{label} per round")
    rows = []
    for name in names:
        row = [f"**{name}**"]
        row += [m.fmt.format(mid[name][m.key]) for m in metrics]
        row += [f"{mid[name][ratio_metric] / mid[other][ratio_metric]:.2f}x" for other in names]
        row.append(", ".join(f"{v:,.0f}" for v in samples[name][ratio_metric]))
        rows.append(row)
    return markdown_table(headers, rows)


def target_lines(samples: Samples, targets: Sequence[Target]) -> str:
    mid = medians(samples)
    lines = []
    for t in targets:
        if t.subject not in mid or t.baseline not in mid:
            continue
        ratio = mid[t.subject][t.metric] / mid[t.baseline][t.metric]
        verdict = "met" if ratio >= t.min_ratio else "**missed**"
        lines.append(
            f"- {t.subject} ÷ {t.baseline} ({t.metric}): {ratio:.2f}x, "
            f"target ≥ {t.min_ratio}x: {verdict}"
        )
    return "\n".join(lines)


def paired_lines(samples: Samples, targets: Sequence[Target]) -> str:
    """Each target as the median of per-round ratios (rounds ran side by side, so pairing
    them cancels drift that hits both servers of a round alike)."""
    lines = []
    for t in targets:
        if t.metric not in samples.get(t.subject, {}) or t.metric not in samples.get(
            t.baseline, {}
        ):
            continue
        pairs = zip(samples[t.subject][t.metric], samples[t.baseline][t.metric], strict=True)
        ratio = statistics.median(a / b for a, b in pairs)
        verdict = "met" if ratio >= t.min_ratio else "**missed**"
        lines.append(
            f"- {t.subject} ÷ {t.baseline} ({t.metric}), median of per-round ratios: "
            f"{ratio:.2f}x, target ≥ {t.min_ratio}x: {verdict}"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import grpc

    return (
        f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}, {h2load_version()}"
    )


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(ROOT)
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])


def section_header(title: str, servers: Sequence[ServerSpec]) -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"## {title}",
        "",
        f"- command: `{command_line()}` (from the repository root)",
        f"- machine: {machine()}",
        f"- run: {when}; load average at the end (1/5/15 min): {load} (other work on the "
        "machine shows here and in the spread of the per-round figures)",
        "- servers:",
        *(f"  - `{s.name}`: {s.description}" for s in servers),
    ]
    return "\n".join(lines)


_PREAMBLE = """# Benchmark results

Written by the scripts in `benchmarks/` (see `benchmarks/README.md`); each script rewrites
only its own section. Absolute numbers drift with the machine; the ratios, measured side by
side in alternating rounds, are the figures to compare.
"""


def write_data(key: str, data: Mapping[str, object]) -> Path:
    """`benchmarks/results/<key>.json`: a section's figures as data, with how they were made."""
    DATA_DIR.mkdir(exist_ok=True)
    path = DATA_DIR / f"{key}.json"
    record = {
        "section": key,
        "command": command_line(),
        "machine": machine(),
        "run": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **data,
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path


def write_section(key: str, body: str, path: Path = RESULTS_PATH) -> None:
    """Replace (or append) the section between this key's markers, keeping all others, and
    write the rounds behind it as data (`write_data`).

    Under a lock, since another benchmark may be rewriting its own section at the same time.
    """
    if _recorded:
        write_data(key, {"samples": _recorded})
    start, end = f"<!-- section:{key} -->", f"<!-- /section:{key} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    with (WORK_DIR / "results.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else _PREAMBLE
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        path.write_text(text)
    print(f"wrote section {key!r} of {path}", file=sys.stderr)


def pick_servers(names: str) -> list[ServerSpec]:
    """``--servers a,b,c`` -> specs, in the order given (which is the round order)."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in SERVERS]
    if unknown:
        raise SystemExit(f"unknown servers {unknown}; choose from {sorted(SERVERS)}")
    return [SERVERS[n]() for n in wanted]
