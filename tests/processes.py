"""Helpers for tests that run `blaze serve` as a real process: start, wait for health, clean up."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
BLAZE = str(Path(sys.executable).with_name("blaze"))
APP = "tests.apps.production_app:app"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(port: int, *, timeout: float = 0.5, credentials: grpc.ChannelCredentials | None = None):
    """The server's overall health status, or the gRPC status code if the check failed."""
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.insecure_channel(target)
        if credentials is None
        else grpc.secure_channel(target, credentials)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as exc:
            return exc.code()
        return reply.status


def wait_until(predicate, *, timeout: float = 15.0, interval: float = 0.05, what: str = ""):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def wait_serving(
    port: int,
    proc: subprocess.Popen | None = None,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    timeout: float = 15.0,
) -> None:
    """Poll the health service until it reports SERVING (failing early if `proc` exits)."""

    def serving() -> bool:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"server exited with {proc.returncode}:\n{out}")
        return health(port, credentials=credentials) == SERVING

    wait_until(serving, timeout=timeout, what=f"health SERVING on port {port}")


@contextmanager
def blaze_serve(
    *args: str, app: str = APP, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Iterator[subprocess.Popen]:
    """`blaze serve APP ARGS...` in its own session; whatever is left of it is killed after."""
    proc = subprocess.Popen(
        [BLAZE, "serve", app, "--host", "127.0.0.1", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers it may have left behind


def exits_within(proc: subprocess.Popen, seconds: float) -> int:
    """The exit status, failing the test if the process takes longer than `seconds`."""
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"process still running {seconds}s later") from None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on `/metrics`, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def run_tool(*argv: str, timeout: float = 20.0) -> tuple[int, str, str]:
    """Run a command without blocking the loop the server under test runs on."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
