"""Serving from processes: one server, N workers sharing a port, or a reloading dev server.

Workers bind the same port with SO_REUSEPORT, so the kernel spreads connections across them.
A small supervisor starts them, restarts one that dies after it was ready, passes SIGTERM and
SIGINT on (each worker then drains), and exits 0 once all have. A worker that dies before it
was ever ready is a configuration error, not a crash to retry, so the supervisor gives up.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from .server import ServerTLS

logger = logging.getLogger("blazerpc.supervisor")
# The number of workers, in each worker's environment (blazerpc.contrib.thread_share reads it).
WORKERS_ENV = "BLAZERPC_WORKERS"


@dataclass(frozen=True)
class ServeConfig:
    """Everything a serving process needs, picklable so spawned workers receive it."""

    app_path: str
    app_dir: Path = Path(".")
    host: str = "0.0.0.0"
    port: int | None = 50051  # None: HTTP only (--transport jsonrpc)
    grace_period: float = 30.0
    tls: ServerTLS | None = None
    metrics_port: int | None = None
    max_message_mb: float | None = None
    reuse_port: bool = False
    http_port: int | None = None
    reflection: bool = True
    limits: dict[str, Any] = field(default_factory=dict)  # Limits fields set by flags
    loop: str = "auto"  # launch.Loop's value: auto, asyncio or uvloop


def serve_process(config: ServeConfig, ready: Any = None) -> None:
    """Load the app and serve it in this process until SIGTERM or SIGINT."""
    from ..launch import Loop, load_app, run
    from .middleware import MetricsMiddleware

    if multiprocessing.parent_process() is not None:
        _drain_when_orphaned()

    # BlazeRPC's lines and the app's own package at INFO; other libraries keep Python's
    # default (WARNING), so their INFO chatter, and progress bars shown at INFO
    # (sentence-transformers'), stay quiet.
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    app_package = config.app_path.partition(":")[0].partition(".")[0]
    for name in ("blazerpc", app_package):
        logging.getLogger(name).setLevel(logging.INFO)
    app = load_app(config.app_path, config.app_dir)
    if config.max_message_mb is not None:
        app.limits = replace(app.limits, max_message_bytes=int(config.max_message_mb * 2**20))
    app.limits = replace(app.limits, **config.limits)
    if config.metrics_port is not None:
        app.metrics_port = config.metrics_port
    app.reflection = app.reflection and config.reflection
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # a worker: the supervisor serves /metrics
        app.metrics_port = None
        if not any(isinstance(m, MetricsMiddleware) for m in app.middleware):
            app.middleware.insert(0, MetricsMiddleware())

    async def main() -> None:
        await app.serve(
            config.host,
            config.port,
            grace_period=config.grace_period,
            tls=config.tls,
            reuse_port=config.reuse_port,
            on_ready=ready.set if ready is not None else None,
            http_port=config.http_port,
        )

    run(main(), Loop(config.loop))
    _leave_stuck_threads()


def _drain_when_orphaned() -> None:
    """A worker whose supervisor is gone (SIGKILL, OOM killer) drains and exits instead of
    serving on as an orphan that a restarted server would then share the port with."""
    parent = os.getppid()
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # it died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    else:

        def watch() -> None:  # elsewhere: poll, as no parent-death signal exists
            while os.getppid() == parent:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="blazerpc-orphan-watch", daemon=True).start()


def _leave_stuck_threads(wait_s: float = 1.0) -> None:
    """Exit even if a sync model is still running in a thread after the grace period: threads
    cannot be cancelled, and Python would wait for them at exit, however long they take."""
    deadline = time.monotonic() + wait_s
    others = [t for t in threading.enumerate() if t is not threading.current_thread()]
    for thread in others:
        if not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in others if t.is_alive() and not t.daemon]
    if stuck:
        logger.warning("exiting with threads still running: %s", ", ".join(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _spawn(ctx: Any, config: ServeConfig) -> tuple[Any, Any]:
    ready = ctx.Event()
    process = ctx.Process(target=serve_process, args=(config, ready), daemon=False)
    process.start()
    return process, ready


def supervise(config: ServeConfig, workers: int) -> int:
    """Run `workers` serving processes until a signal; returns the exit status."""
    ctx = multiprocessing.get_context("spawn")
    if config.metrics_port is None:  # BlazeApp(metrics_port=...): served here, for all workers
        from ..launch import load_app

        app_metrics_port = load_app(config.app_path, config.app_dir).metrics_port
        config = replace(config, metrics_port=app_metrics_port)
    config = replace(config, reuse_port=True)
    metrics_dir = None
    if config.metrics_port is not None:
        metrics_dir = tempfile.mkdtemp(prefix="blazerpc-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        from .metrics import serve_metrics

        serve_metrics(config.metrics_port, config.host)
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Workers inherit it: how many share the machine, e.g. to divide torch's threads.
    os.environ[WORKERS_ENV] = str(workers)
    procs = [_spawn(ctx, config) for _ in range(workers)]
    status = 0
    while not stopping:
        wait([p.sentinel for p, _ in procs], timeout=0.5)
        for i, (process, ready) in enumerate(procs):
            if process.is_alive() or stopping:
                continue
            if metrics_dir is not None:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(process.pid)
            if not ready.is_set():
                logger.error(
                    "worker %s exited with %s before it was ready; giving up",
                    process.pid,
                    process.exitcode,
                )
                stopping, status = True, process.exitcode or 1
                break
            logger.warning(
                "worker %s died (exit %s); starting another", process.pid, process.exitcode
            )
            procs[i] = _spawn(ctx, config)
    for process, _ in procs:
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + config.grace_period + 5
    for process, _ in procs:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
        if process.exitcode not in (0, -signal.SIGTERM) and status == 0:
            status = process.exitcode or 1
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def serve_with_reload(config: ServeConfig) -> None:
    """Restart the server whenever a .py file under the app directory changes."""
    try:
        from watchfiles import PythonFilter, run_process
    except ImportError as exc:
        raise SystemExit("--reload needs watchfiles: pip install 'blazerpc[reload]'") from exc
    run_process(
        Path(config.app_dir).resolve(),
        target=serve_process,
        args=(config,),
        watch_filter=PythonFilter(),
    )
