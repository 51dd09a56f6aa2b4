"""`blaze serve --workers N`: processes sharing a port, replaced when they die, metrics of all."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from pathlib import Path

from blazerpc import BlazeClient, BlazeRPCError, StatusCode, SyncBlazeClient

from .apps.production_app import app as production_app
from .processes import (
    alive,
    blaze_serve,
    exits_within,
    sample,
    scrape,
    wait_serving,
    wait_until,
)
from .support import free_port, path


def call_pid(port: int) -> int:
    """Which worker answers a call on a new connection (the kernel picks per connection)."""
    with SyncBlazeClient("127.0.0.1", port, registry=production_app.registry, timeout=10) as c:
        return c.predict("pid")


def pids_serving(port: int, want: int, calls: list[int]) -> set[int]:
    """Call on new connections until `want` distinct workers have answered; record each pid."""

    def enough() -> set[int] | None:
        try:
            calls.append(call_pid(port))
        except BlazeRPCError:  # a worker still starting refuses with UNAVAILABLE
            return None
        return set(calls) if len(set(calls)) >= want else None

    return wait_until(enough, timeout=20, interval=0, what=f"{want} workers to answer")


def hook_files(directory: Path, pid: int) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name.endswith(f"-{pid}")}


def test_workers_share_the_port_run_hooks_and_report_metrics_together(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    hooks, tmp = tmp_path / "hooks", tmp_path / "tmp"
    hooks.mkdir()
    tmp.mkdir()
    with blaze_serve(
        "--port",
        str(port),
        "--workers",
        "2",
        "--metrics-port",
        str(metrics_port),
        "--grace-period",
        "5",
        env={"BLAZE_TEST_HOOK_DIR": str(hooks), "TMPDIR": str(tmp)},
    ) as proc:
        wait_serving(port, proc)
        assert [p.name[:17] for p in tmp.iterdir()] == ["blazerpc-metrics-"]
        calls: list[int] = []
        workers = pids_serving(port, 2, calls)
        calls += [call_pid(port) for _ in range(10)]
        assert proc.pid not in workers  # the supervisor itself serves nothing
        for pid in workers:
            assert hook_files(hooks, pid) == {f"startup-sync-{pid}", f"startup-async-{pid}"}

        metrics = scrape(metrics_port)
        ok = {"method": path("Pid"), "status": "OK"}
        pid_samples = {k: v for k, v in metrics.items() if path("Pid") in str(k)}
        assert sample(metrics, "blazerpc_requests_total", **ok) == len(calls), pid_samples
        assert sample(
            metrics, "blazerpc_request_duration_seconds_count", method=path("Pid")
        ) == len(calls)

        with SyncBlazeClient("127.0.0.1", port, registry=production_app.registry) as client:
            assert [client.predict("batch-size", seconds=0.0) for _ in range(3)] == [1, 1, 1]
        metrics = scrape(metrics_port)
        assert sample(metrics, "blazerpc_batch_size_count", model="batch-size") == 3
        assert sample(metrics, "blazerpc_queue_wait_seconds_count", model="batch-size") == 3

        def slow() -> str:  # each on its own connection, so on either worker
            with SyncBlazeClient("127.0.0.1", port, registry=production_app.registry) as c:
                return c.predict("slow", seconds=1.5)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            held = [pool.submit(slow) for _ in range(4)]
            wait_until(
                lambda: sample(scrape(metrics_port), "blazerpc_in_flight", model="slow") == 4,
                what="4 calls in flight, summed over the workers",
            )
            assert [f.result() for f in held] == ["done"] * 4
        assert sample(scrape(metrics_port), "blazerpc_in_flight", model="slow") == 0

        proc.send_signal(signal.SIGTERM)
        assert exits_within(proc, 10) == 0
        assert not any(alive(pid) for pid in workers)
        assert list(tmp.iterdir()) == []  # the supervisor removed its metrics directory
        for pid in workers:
            assert {f"shutdown-sync-{pid}", f"shutdown-async-{pid}"} <= hook_files(hooks, pid)


async def test_clients_in_one_process_each_get_their_own_connection() -> None:
    """One process that opens several BlazeClients (a gateway, a load generator) should
    reach every worker: the kernel spreads connections, not calls, so each client needs its
    own connection rather than grpcio's process-wide shared one."""
    port = free_port()
    with blaze_serve("--port", str(port), "--workers", "2") as proc:
        wait_serving(port, proc)
        pids_serving(port, 2, [])  # both workers are ready
        clients = [
            BlazeClient("127.0.0.1", port, registry=production_app.registry) for _ in range(16)
        ]
        try:
            pids = [await c.predict("pid") for c in clients]
        finally:
            for c in clients:
                await c.close()
        assert len(set(pids)) == 2, pids


def test_metrics_port_set_on_the_app_covers_every_worker() -> None:
    """BlazeApp(metrics_port=..., middleware=[MetricsMiddleware()]) under --workers: one
    endpoint for all workers, each call counted once."""
    port, metrics_port = free_port(), free_port()
    env = {
        "BLAZE_TEST_APP_METRICS_PORT": str(metrics_port),
        "BLAZE_TEST_METRICS_MIDDLEWARE": "1",
    }
    with blaze_serve("--port", str(port), "--workers", "2", env=env) as proc:
        wait_serving(port, proc)
        calls: list[int] = []
        pids_serving(port, 2, calls)
        ok = {"method": path("Pid"), "status": "OK"}
        assert sample(scrape(metrics_port), "blazerpc_requests_total", **ok) == len(calls)
        proc.send_signal(signal.SIGTERM)
        assert exits_within(proc, 10) == 0


def test_a_killed_worker_is_replaced_and_service_continues(tmp_path: Path) -> None:
    port = free_port()
    with blaze_serve(
        "--port",
        str(port),
        "--workers",
        "2",
        "--grace-period",
        "5",
        env={"BLAZE_TEST_HOOK_DIR": str(tmp_path)},
    ) as proc:
        wait_serving(port, proc)
        victim, survivor = sorted(pids_serving(port, 2, []))
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.2)  # let the kernel drop the dead worker's socket from the port's group

        answers: list[int] = []

        def replaced() -> set[int] | None:
            try:
                answers.append(call_pid(port))
            except BlazeRPCError as exc:  # only a replacement still starting may refuse
                assert exc.code is StatusCode.UNAVAILABLE
                return None
            return set(answers) - {victim, survivor}

        replacement = wait_until(
            replaced, timeout=20, interval=0, what="a replacement worker to answer"
        ).pop()
        assert victim not in answers
        assert survivor in answers  # it kept serving while the replacement started
        assert hook_files(tmp_path, replacement) >= {f"startup-sync-{replacement}"}

        proc.send_signal(signal.SIGINT)  # Ctrl-C: passed on like SIGTERM
        assert exits_within(proc, 10) == 0
        assert not alive(survivor) and not alive(replacement)


def test_a_replacement_worker_gets_no_calls_until_it_is_ready(tmp_path: Path) -> None:
    """While a replacement loads its weights, the other workers serve every new connection:
    none is handed to the loading worker only to be refused with UNAVAILABLE."""
    port = free_port()
    env = {"BLAZE_TEST_HOOK_DIR": str(tmp_path), "BLAZE_TEST_STARTUP_DELAY": "2"}
    with blaze_serve("--port", str(port), "--workers", "2", env=env) as proc:
        wait_serving(port, proc)
        victim, survivor = sorted(pids_serving(port, 2, []))

        def new_workers(hook: str) -> list[str]:
            names = [p.name for p in tmp_path.iterdir() if p.name.startswith(hook)]
            return [n for n in names if not n.endswith((f"-{victim}", f"-{survivor}"))]

        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: new_workers("startup-sync-"), what="a replacement to start loading")
        answers: list[int | StatusCode] = []
        for _ in range(20):  # new connections while the replacement loads for 2 s
            try:
                answers.append(call_pid(port))
            except BlazeRPCError as exc:
                answers.append(exc.code)
        assert not new_workers("startup-async-"), "the replacement was ready too soon to tell"
        assert answers == [survivor] * 20


def test_supervisor_gives_up_when_workers_cannot_start() -> None:
    """A worker that dies before it was ever ready is a configuration error: no restart loop."""
    port = free_port()
    env = {"BLAZE_TEST_STARTUP_FAIL": "1"}
    with blaze_serve("--port", str(port), "--workers", "2", env=env) as proc:
        assert exits_within(proc, 15) != 0
        assert "weights not found" in proc.stdout.read()


def test_workers_exit_when_the_supervisor_is_killed() -> None:
    """SIGKILL leaves the supervisor no chance to pass SIGTERM on: the workers notice it is
    gone and drain, instead of serving on as orphans that share the port with a new server."""
    port = free_port()
    with blaze_serve("--port", str(port), "--workers", "2", "--grace-period", "2") as proc:
        wait_serving(port, proc)
        workers = pids_serving(port, 2, [])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_until(
            lambda: not any(alive(pid) for pid in workers),
            timeout=10,
            what=f"workers {workers} to exit after their supervisor was killed",
        )
