"""KServe v2 over HTTP/REST on --http-port, called with tritonclient.http (its asyncio client
in process, its blocking one in the docs examples), curl and plain HTTP."""

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import tritonclient.http.aio as triton
from tritonclient.http import InferInput, InferRequestedOutput

import blazerpc
from blazerpc import BlazeApp, TensorInput, TensorOutput
from blazerpc.server.middleware import TokenAuthMiddleware

from .processes import blaze_serve, exits_within, wait_until
from .protocol_servers import (
    DOC,
    PROTOCOLS_APP,
    assert_documented_output,
    examples,
    http,
    run_example,
)
from .support import free_port, listening, running

F32 = np.array([[1, 2, 3, 4], [0, 0, 0, 1]], np.float32)
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3)
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class Point:
    x: float
    y: float


def rest_app(**settings: Any) -> BlazeApp:
    app = BlazeApp(**settings)

    @app.model("project", version="3")
    def project(
        features: TensorInput[np.float32, "batch", 4],
    ) -> TensorOutput[np.float32, "batch", 3]:
        return features @ WEIGHTS

    @app.model("echo")
    async def echo(text: str, times: int = 1) -> str:
        return text.upper() * times

    @app.model("raw")
    async def raw(data: bytes) -> bytes:
        return data[::-1]

    @app.model("fails")
    def fails(n: int) -> int:
        raise ValueError(f"boom {n}")

    @app.model("tokens", streaming=True)
    async def tokens(prompt: str) -> AsyncIterator[str]:
        for word in prompt.split():
            yield word

    @app.model("distance")
    def distance(p: Point) -> float:
        return (p.x**2 + p.y**2) ** 0.5

    return app


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> InferInput:
    value = InferInput(name, list(array.shape), datatype)
    value.set_data_from_numpy(array, binary_data=binary)
    return value


def url(server: Any, path: str) -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


async def test_health_readiness_and_metadata() -> None:
    async with (
        running(rest_app(), http=True) as server,
        triton.InferenceServerClient(f"127.0.0.1:{server.http_port}") as client,
    ):
        assert await client.is_server_live()
        assert await client.is_server_ready()
        assert await client.is_model_ready("project")
        assert await client.is_model_ready("project", "3")
        assert not await client.is_model_ready("project", "1")
        assert not await client.is_model_ready("nope")
        assert await client.get_server_metadata() == {
            "name": "blazerpc",
            "version": blazerpc.__version__,
            "extensions": ["binary_tensor_data"],
        }
        assert await client.get_model_metadata("project", "3") == {
            "name": "project",
            "versions": ["3"],
            "platform": "blazerpc",
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "result", "datatype": "FP32", "shape": [-1, 3]}],
        }
        echo = await client.get_model_metadata("echo")
        assert echo["inputs"] == [
            {"name": "text", "datatype": "BYTES", "shape": [1]},
            {"name": "times", "datatype": "INT64", "shape": [1]},
        ]
        missing = await http(url(server, "/v2/models/nope"))
        assert missing.status == 404 and "'nope'" in missing.json()["error"]  # type: ignore[index]
        unsupported = await http(url(server, "/v2/models/distance"))
        assert unsupported.status == 501 and "Point dataclass" in unsupported.body.decode()


async def test_not_ready_while_a_startup_hook_runs_and_the_port_closes_on_stop() -> None:
    app, loaded = rest_app(), asyncio.Event()

    @app.on_startup
    async def load() -> None:
        await loaded.wait()

    port, http_port = free_port(), free_port()
    starting = asyncio.create_task(app.start("127.0.0.1", port, http_port=http_port))
    base = f"http://127.0.0.1:{http_port}"
    for _ in range(100):
        try:
            ready = await http(f"{base}/v2/health/ready")
            break
        except OSError:
            await asyncio.sleep(0.05)
    assert ready.status == 400
    assert (await http(f"{base}/v2/health/live")).status == 200
    refused = await http(f"{base}/v2/models/echo/infer", {"inputs": []})
    assert refused.status == 503 and "starting" in refused.body.decode()
    loaded.set()
    server = await starting
    assert (await http(f"{base}/v2/health/ready")).status == 200
    await server.stop(grace=1.0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", http_port), timeout=1).close()


async def test_stop_lets_calls_in_flight_finish_and_cuts_streams_at_the_grace_period() -> None:
    app, closed = BlazeApp(), asyncio.Event()

    @app.model("slow")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    @app.model("forever", streaming=True)
    async def forever(step: float) -> AsyncIterator[int]:
        try:
            while True:
                yield 0
                await asyncio.sleep(step)
        finally:
            closed.set()

    server = await app.start("127.0.0.1", 0, http_port=0)
    base = f"http://127.0.0.1:{server.http_port}"
    body = {"jsonrpc": "2.0", "method": "predict.slow", "params": {"seconds": 0.5}, "id": 1}
    in_flight = asyncio.create_task(http(f"{base}/jsonrpc", body))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    stream = json.dumps({"params": {"step": 0.01}}).encode()
    writer.write(
        b"POST /jsonrpc/stream/forever HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Length: {len(stream)}\r\n\r\n".encode()
        + stream
    )
    await reader.readuntil(b"data: 0")
    await asyncio.sleep(0.1)  # the slow call is running
    started = time.monotonic()
    await server.stop(grace=1.5)
    assert time.monotonic() - started < 2.5
    assert (await in_flight).json()["result"] == "done"  # type: ignore[index]
    assert closed.is_set()  # the endless stream was cancelled at the grace period
    writer.close()


async def test_json_tensors_in_and_out() -> None:
    async with (
        running(rest_app(), http=True) as server,
        triton.InferenceServerClient(f"127.0.0.1:{server.http_port}") as client,
    ):
        result = await client.infer(
            "project",
            [tensor("features", F32, "FP32", binary=False)],
            outputs=[InferRequestedOutput("result", binary_data=False)],
            request_id="j1",
        )
        np.testing.assert_array_equal(result.as_numpy("result"), F32 @ WEIGHTS)
        response = result.get_response()
        assert response["id"] == "j1" and response["model_version"] == "3"
        assert response["outputs"][0]["data"] == (F32 @ WEIGHTS).ravel().tolist()

        result = await client.infer(
            "echo",
            [tensor("text", np.array(["ab"], dtype=object), "BYTES", binary=False)],
            outputs=[InferRequestedOutput("result", binary_data=False)],
        )
        assert result.get_response()["outputs"][0]["data"] == ["AB"]


async def test_binary_tensor_extension_both_ways() -> None:
    async with (
        running(rest_app(), http=True) as server,
        triton.InferenceServerClient(f"127.0.0.1:{server.http_port}") as client,
    ):
        result = await client.infer("project", [tensor("features", F32, "FP32")])
        np.testing.assert_array_equal(result.as_numpy("result"), F32 @ WEIGHTS)
        output = result.get_response()["outputs"][0]
        assert output["parameters"] == {"binary_data_size": 24} and "data" not in output

        inputs = [
            tensor("text", np.array(["ab"], dtype=object), "BYTES"),
            tensor("times", np.array([3], np.int64), "INT64", binary=False),
        ]
        result = await client.infer("echo", inputs)  # binary and JSON inputs mixed
        assert result.as_numpy("result").tolist() == [b"ABABAB"]

        data = bytes(range(256))
        result = await client.infer(
            "raw", [tensor("data", np.array([data], dtype=object), "BYTES")]
        )
        assert result.as_numpy("result").tolist() == [data[::-1]]


async def test_binary_extension_by_hand() -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [2, 4],
                    "parameters": {"binary_data_size": 32},
                }
            ],
            "outputs": [{"name": "result", "parameters": {"binary_data": True}}],
        }
    ).encode()
    async with running(rest_app(), http=True) as server:
        target = url(server, "/v2/models/project/infer")
        reply = await http(target, header + F32.tobytes(), {HEADER_LENGTH: str(len(header))})
        assert reply.status == 200, reply.body
        size = int(reply.headers[HEADER_LENGTH])
        head = json.loads(reply.body[:size])
        assert head["outputs"][0]["parameters"] == {"binary_data_size": 24}
        got = np.frombuffer(reply.body[size:], np.float32).reshape(head["outputs"][0]["shape"])
        np.testing.assert_array_equal(got, F32 @ WEIGHTS)

        short = await http(target, header + F32.tobytes()[:20], {HEADER_LENGTH: str(len(header))})
        assert short.status == 400 and "binary_data_size 32" in short.body.decode()
        extra = header + F32.tobytes() + b"xx"
        spare = await http(target, extra, {HEADER_LENGTH: str(len(header))})
        assert spare.status == 400 and "2 bytes of binary data" in spare.body.decode()


def _infer(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


BAD_REQUESTS = {
    "wrong datatype": (
        "project",
        _infer("features", "FP64", [1, 4], [1, 2, 3, 4]),
        400,
        ["input 'features'", "FP32", "'FP64'"],
    ),
    "wrong fixed dim": (
        "project",
        _infer("features", "FP32", [1, 5], [1, 2, 3, 4, 5]),
        400,
        ["'features'", "dimension 1 must be 4"],
    ),
    "too few elements": (
        "project",
        _infer("features", "FP32", [2, 4], [1, 2, 3, 4]),
        400,
        ["'features'", "needs 8 elements, got 4"],
    ),
    "float into INT64": (
        "echo",
        {
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]},
                {"name": "times", "datatype": "INT64", "shape": [1], "data": [1.5]},
            ]
        },
        400,
        ["input 'times'", "INT64"],
    ),
    "missing input": ("project", {"inputs": []}, 400, ["missing input 'features'"]),
    "no inputs array": ("project", {"input": []}, 400, ['"inputs"']),
    "no data": (
        "project",
        {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4]}]},
        400,
        ["'features'", '"data"'],
    ),
    "not JSON": ("project", "{nope", 400, ["not valid JSON"]),
    "nested too deeply": ("project", "[" * 100_000, 400, ["nested too deeply"]),
    "outputs not an array": (
        "echo",
        {**_infer("text", "BYTES", [1], ["a"]), "outputs": "x"},
        400,
        ['"outputs"', "array"],
    ),
    "outputs of numbers": (
        "echo",
        {**_infer("text", "BYTES", [1], ["a"]), "outputs": [1]},
        400,
        ['"outputs"', "tensor objects"],
    ),
    "parameters an array": (
        "echo",
        {**_infer("text", "BYTES", [1], ["a"]), "parameters": [1]},
        400,
        ['"parameters"', "object"],
    ),
    "input parameters a number": (
        "echo",
        {
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"], "parameters": 5}
            ]
        },
        400,
        ['"parameters" of inputs[0]', "object"],
    ),
    "negative binary_data_size": (
        "echo",
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": -4},
                }
            ]
        },
        400,
        ["'text'", "binary_data_size -4"],
    ),
    "string that is no float": (
        "project",
        _infer("features", "FP32", [1, 4], ["NaN", 1, 2, "lots"]),
        400,
        ["'features'", "'lots'"],
    ),
    "unknown model": ("nope", {"inputs": []}, 404, ["'nope'"]),
    "streaming model": ("tokens", {"inputs": []}, 400, ["streams", "ModelStreamInfer"]),
    "model raises": ("fails", _infer("n", "INT64", [1], [7]), 500, ["ValueError: boom 7"]),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
async def test_bad_requests_answer_the_http_status_of_the_native_error(case: str) -> None:
    model, body, status, fragments = BAD_REQUESTS[case]
    async with running(rest_app(), http=True) as server:
        reply = await http(url(server, f"/v2/models/{model}/infer"), body)
        assert reply.status == status, reply.body
        error = reply.json()["error"]  # type: ignore[index]
        for fragment in fragments:
            assert fragment in error
        ok = await http(url(server, "/v2/models/echo/infer"), _infer("text", "BYTES", [1], ["x"]))
        assert ok.status == 200  # the server goes on serving


async def test_non_finite_floats_are_strings_both_ways_so_the_json_stays_valid() -> None:
    app = BlazeApp()

    @app.model("scale")
    def scale(x: TensorInput[np.float32, "n"]) -> TensorOutput[np.float32, "n"]:
        return x * 2

    body = _infer("x", "FP32", [4], ["NaN", "Infinity", "-Infinity", 1.5])
    async with running(app, http=True) as server:
        reply = await http(url(server, "/v2/models/scale/infer"), body)
    assert reply.status == 200, reply.body

    def strict(token: str) -> None:
        raise AssertionError(f"bare {token} is not JSON")

    data = json.loads(reply.body, parse_constant=strict)["outputs"][0]["data"]
    assert data == ["NaN", "Infinity", "-Infinity", 3.0]


async def test_bodies_over_their_limits_answer_413_and_the_server_goes_on() -> None:
    app = rest_app(max_message_mb=1)
    app.limits = replace(app.limits, max_json_bytes=4096)
    infer = "/v2/models/echo/infer"
    async with running(app, http=True) as server:
        big_json = _infer("text", "BYTES", [1], ["x" * 5000])
        reply = await http(url(server, infer), big_json)
        assert reply.status == 413, reply.body
        assert "over the limit of 4096 bytes" in reply.json()["error"]  # type: ignore[index]

        header = json.dumps(_infer("text", "BYTES", [1], None)).encode()
        huge = header + b"\0" * (2 * 1024 * 1024)
        reply = await http(url(server, infer), huge, {HEADER_LENGTH: str(len(header))})
        assert reply.status == 413, reply.body

        ok = await http(url(server, infer), _infer("text", "BYTES", [1], ["x" * 100]))
        assert ok.status == 200, ok.body


async def test_bodies_past_aiohttps_one_mebibyte_default_are_accepted() -> None:
    rows = np.ones((100_000, 4), np.float32)  # 1.6 MB of binary tensor data
    async with (
        running(rest_app(), http=True) as server,
        triton.InferenceServerClient(f"127.0.0.1:{server.http_port}") as client,
    ):
        result = await client.infer("project", [tensor("features", rows, "FP32")])
        assert result.as_numpy("result").shape == (100_000, 3)


async def test_middleware_sees_rest_calls_with_headers_as_metadata() -> None:
    app = rest_app(middleware=[TokenAuthMiddleware(tokens=["s3cret"])])
    body = _infer("text", "BYTES", [1], ["hi"])
    async with running(app, http=True) as server:
        target = url(server, "/v2/models/echo/infer")
        refused = await http(target, body)
        assert refused.status == 401 and "authorization" in refused.body.decode()
        admitted = await http(target, body, {"Authorization": "Bearer s3cret"})
        assert admitted.status == 200
        assert admitted.json()["outputs"][0]["data"] == ["HI"]  # type: ignore[index]


async def test_blaze_serve_http_port() -> None:
    port, http_port = free_port(), free_port()
    ready = f"http://127.0.0.1:{http_port}/v2/health/ready"
    with blaze_serve(
        "--port", str(port), "--http-port", str(http_port), app="tests.apps.protocols_app:app"
    ) as proc:

        async def answers() -> bool:
            try:
                return (await http(ready)).status == 200
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                return False

        for _ in range(200):
            if await answers():
                break
            await asyncio.sleep(0.05)
        reply = await http(
            f"http://127.0.0.1:{http_port}/jsonrpc",
            {"jsonrpc": "2.0", "method": "predict.echo", "params": {"text": "cli"}, "id": 1},
        )
        assert reply.json() == {"jsonrpc": "2.0", "result": "CLI", "id": 1}
        proc.send_signal(signal.SIGTERM)
        assert exits_within(proc, 15) == 0
        banner = proc.stdout.read() if proc.stdout else ""
    assert f"HTTP on 127.0.0.1:{http_port}" in banner
    wait_until(lambda: not listening(http_port), timeout=5)


def test_docs_app_is_the_tested_app_and_every_example_is_run() -> None:
    (app,) = examples("app")
    tested = PROTOCOLS_APP.read_text().split('"""', 2)[2].lstrip()
    assert app.code == tested
    prefixes = ("app", "grpc-", "rest-", "jsonrpc-")  # each test module runs one prefix
    names = [e.name for e in examples()]
    assert names and all(name.startswith(prefixes) for name in names), names
    assert DOC.read_text().count("<!-- example:") == len(names)  # none malformed


@pytest.mark.parametrize("example", examples("rest-"), ids=lambda e: e.name)
async def test_docs_examples(example: Any) -> None:
    from .apps.protocols_app import app

    async with running(app, http=True) as server:
        assert_documented_output(example, await run_example(example, server))
