"""Soak: tens of thousands of calls that clients cancel midway, then what the server kept.

A real `blaze serve` process (benchmarks/soak_app.py, gRPC and HTTP ports) takes unary and
streaming calls on sync and async models over gRPC, and event streams over JSON-RPC, from
clients that give up after a random few milliseconds. Its RSS, threads and open file
descriptors are read from /proc before and after, with the count of model generators still
open (each one's `finally` must have run). Then, one at a time, large requests inside the
limits (60 MB of KServe BYTES over gRPC and REST, a 4 MB JSON body), each sent from a process
of its own, while a health check is timed every 5 ms: the loop must keep answering.

    .venv/bin/python benchmarks/soak.py [--calls 20000] [--concurrency 64] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import free_port, machine, write_section  # noqa: E402
from benchmarks.soak_app import app  # noqa: E402
from blazerpc import BlazeClient, BlazeRPCError  # noqa: E402
from blazerpc.protocols.kserve import messages  # noqa: E402

MB = 1024 * 1024


def snapshot(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) // 1024,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


async def wait_serving(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for _ in range(300):
            try:
                reply = await check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("the server never became SERVING")


async def one_call(client: BlazeClient, session: aiohttp.ClientSession, http_port: int) -> str:
    """One call of a random kind, given up after a random few milliseconds; its outcome."""
    kind = random.choice(["sync", "async", "async-drip", "sync-drip", "sse"])
    give_up = random.uniform(0, 0.06)

    async def call() -> None:
        if kind in ("sync", "async"):
            await client.predict(f"{kind}-sleep", seconds=random.uniform(0, 0.02))
        elif kind == "sse":
            url = f"http://127.0.0.1:{http_port}/jsonrpc/stream/async-drip"
            async with session.post(url, json={"params": {"seconds": 0.001}}) as reply:
                async for _ in reply.content:
                    pass
        else:
            async for _ in client.stream(kind, seconds=0.001):
                pass

    try:
        await asyncio.wait_for(call(), give_up)
    except TimeoutError:
        return "cancelled"
    except (BlazeRPCError, aiohttp.ClientError) as exc:
        return f"failed: {exc}"
    return "completed"


async def soak(port: int, http_port: int, calls: int, concurrency: int) -> dict[str, int]:
    outcomes: dict[str, int] = {}
    left = calls
    async with (
        BlazeClient("127.0.0.1", port, registry=app.registry) as client,
        aiohttp.ClientSession() as session,
    ):

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                outcome = await one_call(client, session, http_port)
                key = outcome if not outcome.startswith("failed") else "failed"
                outcomes[key] = outcomes.get(key, 0) + 1
                if key == "failed" and outcomes[key] <= 3:
                    print(outcome, file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


async def open_streams(port: int) -> dict[str, int]:
    async with BlazeClient("127.0.0.1", port, registry=app.registry) as client:
        for _ in range(50):  # sync generators close once their thread's sleep returns
            counts = await client.predict("streams")
            if counts["open"] == 0:
                break
            await asyncio.sleep(0.1)
    return counts


def bytes_payload(elements: int) -> bytes:
    item = struct.pack("<I", 8) + b"abcdefgh"
    return item * elements


async def health_during(port: int, request: asyncio.Future[object]) -> tuple[float, float]:
    """Health-check latency (median, max, in ms) while `request` is in flight."""
    delays = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        while not request.done():
            start = time.perf_counter()
            await check(health_pb2.HealthCheckRequest(), timeout=30)
            delays.append(time.perf_counter() - start)
            await asyncio.sleep(0.005)
    await request
    return 1000 * statistics.median(delays), 1000 * max(delays)


BYTES_ELEMENTS = 60 * MB // 12
JSON_STRINGS = 700_000  # about 4 MB of JSON, inside the 8 MB JSON limit


def large_request(case: str, port: int, http_port: int) -> int:
    """Send one large request and return its size. Run in a process of its own, so that the
    client's own work (encoding 60 MB) never shows up as the server's delay."""
    if case == "grpc":
        request = messages.ModelInferRequest(model_name="words")
        request.inputs.add(name="items", datatype="BYTES", shape=[BYTES_ELEMENTS])
        request.raw_input_contents.append(bytes_payload(BYTES_ELEMENTS))
        data = request.SerializeToString()
        options = [("grpc.max_send_message_length", 64 * MB)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            method = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            method(data, timeout=120)
        return len(data)
    if case == "binary":
        parameters = {"binary_data_size": BYTES_ELEMENTS * 12}
        tensor = {"name": "items", "datatype": "BYTES", "shape": [BYTES_ELEMENTS]}
        header = json.dumps({"inputs": [{**tensor, "parameters": parameters}]}).encode()
        body = header + bytes_payload(BYTES_ELEMENTS)
        headers = {"Inference-Header-Content-Length": str(len(header))}
    else:
        tensor = {"name": "items", "datatype": "BYTES", "shape": [JSON_STRINGS]}
        body = json.dumps({"inputs": [{**tensor, "data": ["ab"] * JSON_STRINGS}]}).encode()
        headers = {"Content-Type": "application/json"}
    url = f"http://127.0.0.1:{http_port}/v2/models/words/infer"
    post = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(post, timeout=120) as reply:
        assert reply.status == 200, reply.read()
    return len(body)


async def large_requests(port: int, http_port: int) -> list[tuple[str, str, float, float, float]]:
    cases = [
        ("KServe gRPC, BYTES (raw)", "grpc"),
        ("KServe REST, BYTES (binary extension)", "binary"),
        ("KServe REST, JSON body", "json"),
    ]
    rows = []
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as sender:
        await loop.run_in_executor(sender, time.sleep, 0)  # started before anything is timed
        for name, case in cases:
            start = time.perf_counter()
            sent = loop.run_in_executor(sender, large_request, case, port, http_port)
            median, worst = await health_during(port, sent)
            took = time.perf_counter() - start
            rows.append((name, f"{sent.result() / MB:.1f} MB", took, median, worst))
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    port, http_port = free_port(), free_port()
    command = [
        str(Path(sys.executable).with_name("blaze")),
        "serve",
        "benchmarks.soak_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--http-port",
        str(http_port),
    ]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        await wait_serving(port)
        await soak(port, http_port, 500, 16)  # warm-up: pools, connections, caches
        before = snapshot(server.pid)
        start = time.perf_counter()
        outcomes = await soak(port, http_port, args.calls, args.concurrency)
        seconds = time.perf_counter() - start
        await asyncio.sleep(2)
        after = snapshot(server.pid)
        streams = await open_streams(port)
        large = await large_requests(port, http_port)
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(60)

    lines = [
        "## Soak: cancelled calls, then large requests",
        "",
        f"- command: `.venv/bin/python benchmarks/soak.py --calls {args.calls} "
        f"--concurrency {args.concurrency}`",
        f"- machine: {machine()}; load average at the end: "
        + " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        f"- {args.calls} calls in {seconds:.0f} s, {args.concurrency} at a time, each of a random "
        "kind (unary sync, unary async, async and sync generator streams over gRPC, event "
        "streams over JSON-RPC), each given up after a random 0-60 ms: "
        + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())),
        f"- model generators still open afterwards: {streams['open']} "
        f"({streams['closed']} closed in all); server still running: {alive}",
        "",
        "| server process | after warm-up | after the soak |",
        "| --- | --- | --- |",
        *(f"| {k} | {before[k]} | {after[k]} |" for k in before),
        "",
        "Health checks every 5 ms while one large request (inside the limits) is decoded:",
        "",
        "| request | size | took (s) | health check median (ms) | worst (ms) |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {n} | {s} | {t:.2f} | {m:.1f} | {w:.1f} |" for n, s, t, m, w in large),
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("soak", body)


if __name__ == "__main__":
    asyncio.run(main())
