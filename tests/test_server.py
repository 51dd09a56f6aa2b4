"""Serving: sync models off the loop, health, reflection that grpcurl can use."""

import asyncio
import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blazerpc import BlazeApp, TensorInput, TensorOutput
from blazerpc.cli import run

from .support import client_for, running

GRPCURL = str(Path(sys.executable).with_name("grpcurl"))
SERVING = health_pb2.HealthCheckResponse.SERVING


def server_app(max_threads: int | None = None) -> BlazeApp:
    app = BlazeApp(max_threads=max_threads)
    app.state.threads = {}

    @app.model("echo")
    async def echo(text: str) -> str:
        app.state.threads["echo"] = threading.get_ident()
        return text

    @app.model("sleepy")
    def sleepy(seconds: float) -> str:
        app.state.threads["sleepy"] = threading.get_ident()
        time.sleep(seconds)
        return "rested"

    @app.model("classify")
    def classify(
        features: TensorInput[np.float32, "batch", 4],
    ) -> TensorOutput[np.int64, "batch"]:
        return features.argmax(axis=1).astype(np.int64)

    @app.model("generate", streaming=True)
    async def generate(prompt: str) -> AsyncIterator[str]:
        for tok in prompt.split():
            yield tok

    return app


async def test_sync_model_runs_in_a_thread_and_does_not_block_the_loop() -> None:
    app = server_app()
    async with client_for(app) as client:
        assert await client.predict("echo", text="warm-up") == "warm-up"
        slow = asyncio.create_task(client.predict("sleepy", seconds=0.5))
        await asyncio.sleep(0.1)  # the sync model is now sleeping
        assert not slow.done()
        start = time.perf_counter()
        assert await client.predict("echo", text="quick") == "quick"
        elapsed = time.perf_counter() - start
        assert await slow == "rested"
    # Blocked, it would wait ~0.4 s; a free loop answers in milliseconds (slack for busy CI).
    assert elapsed < 0.25, f"an async call waited {elapsed:.3f}s behind a sleeping sync model"
    loop_thread = threading.get_ident()
    assert app.state.threads["echo"] == loop_thread  # async models run on the loop
    assert app.state.threads["sleepy"] != loop_thread  # sync ones in a worker thread


async def test_sync_models_run_in_parallel_in_a_bounded_pool() -> None:
    async def four_sleeps(app: BlazeApp) -> float:
        async with client_for(app) as client:
            await client.predict("sleepy", seconds=0.0)  # discovery and warm-up
            start = time.perf_counter()
            results = await asyncio.gather(
                *(client.predict("sleepy", seconds=0.4) for _ in range(4))
            )
            assert results == ["rested"] * 4
            return time.perf_counter() - start

    parallel = await four_sleeps(server_app(max_threads=4))
    bounded = await four_sleeps(server_app(max_threads=2))
    assert parallel < 0.75, f"4 sleeps of 0.4s with 4 threads took {parallel:.2f}s"
    assert bounded >= 0.78, f"4 sleeps of 0.4s with 2 threads took only {bounded:.2f}s"


async def test_health_serves_the_server_and_the_inference_service() -> None:
    app = server_app()
    async with (
        running(app) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "blazerpc.InferenceService"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == SERVING, service
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_port_zero_binds_a_free_port_and_two_servers_coexist() -> None:
    first, second = server_app(), server_app()
    async with running(first) as a, running(second) as b:
        assert a.port > 0
        assert b.port > 0
        assert a.port != b.port


def test_cli_runner_uses_uvloop_by_default() -> None:
    seen: list[object] = []

    async def main() -> None:
        seen.append(asyncio.get_running_loop())

    run(main())
    assert isinstance(seen[0], uvloop.Loop)


def test_without_uvloop_a_failure_carries_no_chained_import_error() -> None:
    """Every traceback of a server without uvloop used to end "During handling of the above
    exception, another exception occurred" after a ModuleNotFoundError for uvloop."""
    script = (
        "import sys; sys.modules['uvloop'] = None\n"
        "from blazerpc.cli import run\n"
        "async def main():\n"
        "    raise RuntimeError('the real failure')\n"
        "run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode != 0 and "RuntimeError: the real failure" in done.stderr
    assert "uvloop" not in done.stderr and "another exception" not in done.stderr, done.stderr


# --- grpcurl, through reflection only ----------------------------------------------------


async def grpcurl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        GRPCURL,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


def json_values(text: str) -> list[dict]:
    """The JSON objects grpcurl prints one after another."""
    decoder, values, pos = json.JSONDecoder(), [], 0
    while pos < len(text.rstrip()):
        value, end = decoder.raw_decode(text, pos)
        values.append(value)
        pos = end + (len(text[end:]) - len(text[end:].lstrip()))
    return values


@pytest.mark.timeout(60)
async def test_grpcurl_lists_describes_and_calls() -> None:
    app = server_app()
    async with running(app) as server:
        address = f"127.0.0.1:{server.port}"

        rc, out, err = await grpcurl("-plaintext", address, "list")
        assert rc == 0, err
        services = out.split()
        assert "blazerpc.InferenceService" in services
        assert "grpc.health.v1.Health" in services
        assert "grpc.reflection.v1alpha.ServerReflection" in services

        rc, out, err = await grpcurl("-plaintext", address, "list", "blazerpc.InferenceService")
        assert rc == 0, err
        assert set(out.split()) == {
            "blazerpc.InferenceService.PredictEcho",
            "blazerpc.InferenceService.PredictSleepy",
            "blazerpc.InferenceService.PredictClassify",
            "blazerpc.InferenceService.PredictGenerate",
        }

        rc, out, err = await grpcurl("-plaintext", address, "describe", "blazerpc.InferenceService")
        assert rc == 0, err
        assert "service InferenceService {" in out
        assert (
            "rpc PredictEcho ( .blazerpc.EchoRequest ) returns ( .blazerpc.EchoResponse );" in out
        )
        assert "returns ( stream .blazerpc.GenerateResponse );" in out

        rc, out, err = await grpcurl("-plaintext", address, "describe", "blazerpc.TensorProto")
        assert rc == 0, err
        assert "repeated int64 shape = 1;" in out
        assert "string dtype = 2;" in out
        assert "bytes data = 3;" in out

        rc, out, err = await grpcurl(
            "-plaintext", "-d", '{"text": "hi"}', address, "blazerpc.InferenceService/PredictEcho"
        )
        assert rc == 0, err
        assert json.loads(out) == {"result": "hi"}

        features = np.array([[0, 0, 7, 0], [1, 0, 0, 0]], np.float32)
        request = {
            "features": {
                "shape": [2, 4],
                "dtype": "float",
                "data": base64.b64encode(features.tobytes()).decode(),
            }
        }
        rc, out, err = await grpcurl(
            "-plaintext",
            "-d",
            json.dumps(request),
            address,
            "blazerpc.InferenceService/PredictClassify",
        )
        assert rc == 0, err
        result = json.loads(out)["result"]
        assert [int(d) for d in result["shape"]] == [2]
        assert result["dtype"] == "int64"
        assert np.frombuffer(base64.b64decode(result["data"]), "<i8").tolist() == [2, 0]

        rc, out, err = await grpcurl(
            "-plaintext",
            "-d",
            '{"prompt": "a b c"}',
            address,
            "blazerpc.InferenceService/PredictGenerate",
        )
        assert rc == 0, err
        assert [m["result"] for m in json_values(out)] == ["a", "b", "c"]

        # A bad input through grpcurl: the status and the details reach it.
        rc, out, err = await grpcurl(
            "-plaintext", "-d", "{}", address, "blazerpc.InferenceService/PredictClassify"
        )
        assert rc != 0
        assert "InvalidArgument" in err
        assert "features" in err

        rc, out, err = await grpcurl("-plaintext", address, "grpc.health.v1.Health/Check")
        assert rc == 0, err
        assert json.loads(out) == {"status": "SERVING"}
