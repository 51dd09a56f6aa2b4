"""Several `blaze serve` replicas of one app on 127.0.0.1, one port each, as Kubernetes would
run pods behind a headless Service; used by test_replicas.py and benchmarks/bench_replicas.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from contextlib import suppress
from pathlib import Path

from .processes import APP, BLAZE, ROOT, wait_serving
from .support import free_port


class Replicas:
    """`n` replicas; `restart(i)` drains replica i with SIGTERM and starts its successor on
    the same port, as a rolling update replaces a pod."""

    def __init__(self, n: int, *args: str, app: str = APP, metrics: bool = False) -> None:
        self.ports = [free_port() for _ in range(n)]
        self.metrics_ports = [free_port() for _ in range(n)] if metrics else []
        self._args, self._app = args, app
        self._logs = Path(tempfile.mkdtemp(prefix="blaze-replicas-"))
        self.procs: list[subprocess.Popen] = []

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    def __enter__(self) -> Replicas:
        self.procs = [self._spawn(i) for i in range(len(self.ports))]
        for i, proc in enumerate(self.procs):
            wait_serving(self.ports[i], proc, timeout=30)
        return self

    def __exit__(self, error: type[BaseException] | None, *rest: object) -> None:
        for proc in self.procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if error is None:  # the replicas' logs are kept when something failed
            shutil.rmtree(self._logs, ignore_errors=True)

    def _spawn(self, i: int) -> subprocess.Popen:
        args = [BLAZE, "serve", self._app, "--host", "127.0.0.1", "--port", str(self.ports[i])]
        if self.metrics_ports:
            args += ["--metrics-port", str(self.metrics_ports[i])]
        with open(self._logs / f"replica-{i}.log", "a") as log:
            return subprocess.Popen(
                [*args, *self._args],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def restart(self, i: int, timeout: float = 30) -> int:
        """SIGTERM replica i, wait for its drain to end, start a successor and wait until it
        is SERVING; returns the old one's exit status."""
        old = self.procs[i]
        old.send_signal(signal.SIGTERM)
        status = old.wait(timeout)
        self.procs[i] = self._spawn(i)
        wait_serving(self.ports[i], self.procs[i], timeout=timeout)
        return status

    def log(self, i: int) -> str:
        return (self._logs / f"replica-{i}.log").read_text()
