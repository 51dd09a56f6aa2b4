"""KServe v2 over gRPC on the native port, called with the stock clients: tritonclient.grpc
(its asyncio client in process, its blocking one in the docs examples), its generated stubs,
and grpcurl."""

import asyncio
import itertools
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import InferenceServerException, InferInput, InferRequestedOutput
from tritonclient.grpc import service_pb2 as stock
from tritonclient.grpc import service_pb2_grpc as stock_grpc

import blazerpc
from blazerpc import BlazeApp, BlazeClient, Context, TensorInput, TensorOutput, ValidationError
from blazerpc.protocols.kserve import messages
from blazerpc.server.middleware import Middleware, ResponseEvent, TokenAuthMiddleware

from .protocol_servers import ROOT, assert_documented_output, examples, run_example
from .support import free_port, running
from .wire import raw_call

PROTO_DIR = ROOT / "src" / "blazerpc" / "protocols" / "kserve"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
F32 = np.array([[1, 2, 3, 4], [0, 0, 0, 1]], np.float32)
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3)


@dataclass
class Point:
    x: float
    y: float


def kserve_app(**settings: Any) -> BlazeApp:
    app = BlazeApp(**settings)

    @app.model("project")
    def project(
        features: TensorInput[np.float32, "batch", 4],
    ) -> TensorOutput[np.float32, "batch", 3]:
        return features @ WEIGHTS

    @app.model("half")
    def half(x: TensorInput[np.float16, "n"]) -> TensorOutput[np.float16, "n"]:
        return x * 2

    @app.model("mixed", version="7")
    def mixed(
        text: str,
        data: bytes,
        n: int,
        scale: float,
        flag: bool,
        words: list[str],
        greeting: str = "hi",
    ) -> str:
        return repr((text, data, n, scale, flag, words, greeting))

    @app.model("lengths")
    def lengths(words: list[str]) -> list[int]:
        return [len(w) for w in words]

    @app.model("fails")
    def fails(n: int) -> int:
        raise ValueError(f"boom {n}")

    @app.model("refuses")
    def refuses(n: int) -> int:
        raise ValidationError(f"{n} is odd")

    @app.model("tokens", streaming=True)
    async def tokens(prompt: str) -> AsyncIterator[str]:
        for word in prompt.split():
            yield word

    @app.model("distance")
    def distance(p: Point) -> float:
        return (p.x**2 + p.y**2) ** 0.5

    return app


def tensor(name: str, array: np.ndarray, datatype: str) -> InferInput:
    value = InferInput(name, list(array.shape), datatype)
    value.set_data_from_numpy(array)
    return value


async def stock_call(port: int, request: Any) -> tuple[grpc.StatusCode, str, Any]:
    """A ModelInfer built with tritonclient's own generated messages and stub."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await stock_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                request, timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or "", None
    return grpc.StatusCode.OK, "", reply


def test_compiled_descriptor_matches_the_proto_and_tritonclients_contract(tmp_path: Path) -> None:
    out = tmp_path / "kserve.binpb"
    subprocess.run(
        [
            *(sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}"),
            f"--descriptor_set_out={out}",
            "grpc_predict_v2.proto",
        ],
        check=True,
    )
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    assert compiled == messages.FILE, "rebuild grpc_predict_v2.binpb (see the .proto's header)"

    theirs = descriptor_pb2.FileDescriptorProto()
    stock.DESCRIPTOR.CopyToProto(theirs)
    stock_messages = {m.name: m for m in theirs.message_type}

    def fields(message: descriptor_pb2.DescriptorProto) -> Any:
        nested = {n.name: fields(n) for n in message.nested_type}
        return [(f.name, f.number, f.type, f.label, f.type_name) for f in message.field], nested

    for message in messages.FILE.message_type:
        assert fields(message) == fields(stock_messages[message.name]), message.name
    stock_methods = {m.name: m for m in theirs.service[0].method}
    for method in messages.FILE.service[0].method:
        assert method == stock_methods[method.name]


async def test_health_readiness_and_server_metadata() -> None:
    async with (
        running(kserve_app(), http=True) as server,
        triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client,
    ):
        assert await client.is_server_live()
        assert await client.is_server_ready()
        assert await client.is_model_ready("project")
        assert await client.is_model_ready("mixed", "7")
        assert not await client.is_model_ready("mixed", "1")
        assert not await client.is_model_ready("nope")
        assert not await client.is_model_ready("distance")  # no tensor form
        meta = await client.get_server_metadata(as_json=True)
        assert meta == {
            "name": "blazerpc",
            "version": blazerpc.__version__,
            "extensions": ["binary_tensor_data"],
        }


async def test_not_ready_and_unavailable_while_a_startup_hook_runs() -> None:
    app, loaded = kserve_app(), asyncio.Event()

    @app.on_startup
    async def load() -> None:
        await loaded.wait()

    port = free_port()
    starting = asyncio.create_task(app.start("127.0.0.1", port))
    async with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
        for _ in range(100):  # until the port answers
            try:
                assert not await client.is_server_ready()
                break
            except InferenceServerException:
                await asyncio.sleep(0.05)
        assert not await client.is_model_ready("project")
        with pytest.raises(InferenceServerException) as info:
            await client.infer("project", [tensor("features", F32, "FP32")])
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        loaded.set()
        server = await starting
        try:
            assert await client.is_server_ready()
        finally:
            await server.stop(grace=1.0)


async def test_model_metadata_maps_every_parameter_type() -> None:
    async with (
        running(kserve_app(), http=True) as server,
        triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client,
    ):
        project = await client.get_model_metadata("project", as_json=True)
        assert project == {
            "name": "project",
            "versions": ["1"],
            "platform": "blazerpc",
            "inputs": [{"name": "features", "datatype": "FP32", "shape": ["-1", "4"]}],
            "outputs": [{"name": "result", "datatype": "FP32", "shape": ["-1", "3"]}],
        }
        mixed = await client.get_model_metadata("mixed", "7")
        assert [(t.name, t.datatype, list(t.shape)) for t in mixed.inputs] == [
            ("text", "BYTES", [1]),
            ("data", "BYTES", [1]),
            ("n", "INT64", [1]),
            ("scale", "FP64", [1]),
            ("flag", "BOOL", [1]),
            ("words", "BYTES", [-1]),
            ("greeting", "BYTES", [1]),
        ]
        assert list(mixed.versions) == ["7"]
        lengths = await client.get_model_metadata("lengths")
        assert (lengths.outputs[0].datatype, list(lengths.outputs[0].shape)) == ("INT64", [-1])
        with pytest.raises(InferenceServerException) as info:
            await client.get_model_metadata("distance")
        assert info.value.status() == "StatusCode.UNIMPLEMENTED"
        assert "parameter 'p' is a Point dataclass" in info.value.message()


async def test_raw_tensors_in_and_raw_out() -> None:
    async with (
        running(kserve_app(), http=True) as server,
        triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client,
    ):
        result = await client.infer("project", [tensor("features", F32, "FP32")], request_id="r1")
        np.testing.assert_array_equal(result.as_numpy("result"), F32 @ WEIGHTS)
        response = result.get_response()
        assert (response.id, response.model_name, response.model_version) == ("r1", "project", "1")
        assert len(response.raw_output_contents) == 1  # tritonclient sent raw, so raw back
        assert not response.outputs[0].HasField("contents")

        halves = np.array([0.5, 1.5, -2.0], np.float16)
        result = await client.infer("half", [tensor("x", halves, "FP16")])
        assert result.as_numpy("result").dtype == np.float16
        np.testing.assert_array_equal(result.as_numpy("result"), halves * 2)


async def test_large_raw_tensors_arrive_whole_with_every_other_field() -> None:
    """Over 256 KiB, raw_input_contents are lifted out of the message as views of the received
    bytes (protocols/wire_scan.py); the rest of the request must still arrive: its id, its
    requested outputs, the model, and each tensor in input order."""
    app = BlazeApp()

    @app.model("weigh", version="2")
    def weigh(
        a: TensorInput[np.float32, "batch", 4], b: TensorInput[np.float32, "batch", 4]
    ) -> TensorOutput[np.float32, "batch"]:
        assert not a.flags.writeable and not b.flags.writeable
        return (a * b).sum(axis=1)

    rng = np.random.default_rng(7)
    a, b = (rng.standard_normal((40_000, 4), np.float32) for _ in range(2))  # 640 KB each
    async with (
        running(app, http=True) as server,
        triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client,
    ):
        result = await client.infer(
            "weigh",
            [tensor("a", a, "FP32"), tensor("b", b, "FP32")],
            model_version="2",
            request_id="big-1",
            outputs=[InferRequestedOutput("result")],
        )
        np.testing.assert_allclose(result.as_numpy("result"), (a * b).sum(axis=1), rtol=1e-6)
        assert result.get_response().id == "big-1"
        with pytest.raises(InferenceServerException) as info:
            await client.infer("weigh", [tensor("a", a, "FP32"), tensor("b", b[:5], "FP32")])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "'b'" in info.value.message()


async def test_typed_contents_in_and_typed_contents_out() -> None:
    request = stock.ModelInferRequest(model_name="project", id="typed")
    features = request.inputs.add(name="features", datatype="FP32", shape=[2, 4])
    features.contents.fp32_contents.extend(F32.ravel().tolist())
    async with running(kserve_app(), http=True) as server:
        code, details, reply = await stock_call(server.port, request)
        assert code == grpc.StatusCode.OK, details
        assert reply.id == "typed" and not reply.raw_output_contents
        assert list(reply.outputs[0].shape) == [2, 3]
        assert list(reply.outputs[0].contents.fp32_contents) == (F32 @ WEIGHTS).ravel().tolist()

        request.parameters["binary_data_output"].bool_param = True  # ask for raw outright
        code, details, reply = await stock_call(server.port, request)
        assert code == grpc.StatusCode.OK, details
        raw = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(2, 3)
        np.testing.assert_array_equal(raw, F32 @ WEIGHTS)


async def test_scalars_bytes_and_lists_travel_as_shape_1_and_1d_tensors() -> None:
    inputs = [
        tensor("text", np.array(["héllo"], dtype=object), "BYTES"),
        tensor("data", np.array([b"\x00\xff"], dtype=object), "BYTES"),
        tensor("n", np.array([-(2**40)], np.int64), "INT64"),
        tensor("scale", np.array([0.25]), "FP64"),
        tensor("flag", np.array([True]), "BOOL"),
        tensor("words", np.array(["a", "bc"], dtype=object), "BYTES"),
    ]
    async with (
        running(kserve_app(), http=True) as server,
        triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client,
    ):
        result = await client.infer("mixed", inputs)
        expected = repr(("héllo", b"\x00\xff", -(2**40), 0.25, True, ["a", "bc"], "hi"))
        assert result.as_numpy("result").tolist() == [expected.encode()]
        assert result.get_response().outputs[0].datatype == "BYTES"

        result = await client.infer("lengths", [inputs[-1]])
        assert result.as_numpy("result").tolist() == [1, 2]


def _request(model: str, *inputs: tuple[str, str, list[int], bytes]) -> Any:
    request = stock.ModelInferRequest(model_name=model)
    for name, datatype, shape, raw in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    return request


def _with_output(request: Any, name: str) -> Any:
    copy = stock.ModelInferRequest()
    copy.CopyFrom(request)
    copy.outputs.add(name=name)
    return copy


ROW = np.array([[1, 2, 3, 4]], np.float32)
GOOD = _request("project", ("features", "FP32", [1, 4], ROW.tobytes()))
BAD_INPUTS = {
    "wrong datatype": (
        _request("project", ("features", "FP64", [1, 4], ROW.astype(np.float64).tobytes())),
        ["input 'features'", "expected datatype FP32", "'FP64'"],
    ),
    "wrong fixed dim": (
        _request("project", ("features", "FP32", [1, 5], np.zeros(5, np.float32).tobytes())),
        ["'features'", "dimension 1 must be 4", "[1, 5]"],
    ),
    "wrong rank": (
        _request("project", ("features", "FP32", [4], ROW.tobytes())),
        ["'features'", "2 dimensions", "[4]"],
    ),
    "data size": (
        _request("project", ("features", "FP32", [2, 4], ROW.tobytes())),
        ["'features'", "16 bytes", "expected 32"],
    ),
    "missing input": (_request("project"), ["missing input 'features'", "FP32", "[-1, 4]"]),
    "unknown input": (
        _request("project", ("feature", "FP32", [1, 4], ROW.tobytes())),
        ["no input 'feature'", "features"],
    ),
    "scalar of two": (
        _request("refuses", ("n", "INT64", [2], np.array([1, 2], np.int64).tobytes())),
        ["input 'n'", "shape [1]", "[2]"],
    ),
    "str not UTF-8": (
        _request("lengths", ("words", "BYTES", [1], b"\x02\x00\x00\x00\xff\xfe")),
        ["input 'words'", "UTF-8"],
    ),
    "unknown output": (_with_output(GOOD, "scores"), ["no output 'scores'", "'result'"]),
    "BYTES cut short": (
        _request("lengths", ("words", "BYTES", [1], b"\x09\x00\x00\x00abc")),
        ["input 'words'", "9 bytes"],
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
async def test_bad_inputs_are_invalid_argument_naming_the_input(case: str) -> None:
    request, fragments = BAD_INPUTS[case]
    async with running(kserve_app(), http=True) as server:
        code, details, _ = await stock_call(server.port, request)
        assert code == INVALID, details
        for fragment in fragments:
            assert fragment in details
        code, details, _ = await stock_call(server.port, GOOD)  # the server goes on serving
        assert code == grpc.StatusCode.OK, details


async def test_model_failures_map_through_the_native_error_table() -> None:
    n = ("n", "INT64", [1], np.array([3], np.int64).tobytes())
    async with running(kserve_app(), http=True) as server:
        code, details, _ = await stock_call(server.port, _request("fails", n))
        assert (code, details) == (grpc.StatusCode.INTERNAL, "ValueError: boom 3")
        code, details, _ = await stock_call(server.port, _request("refuses", n))
        assert (code, details) == (INVALID, "3 is odd")
        code, details, _ = await stock_call(server.port, _request("nope", n))
        assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in details
        versioned = _request("refuses", n)
        versioned.model_version = "2"
        code, details, _ = await stock_call(server.port, versioned)
        assert code == grpc.StatusCode.NOT_FOUND and "version '2'" in details
        prompt = ("prompt", "BYTES", [1], b"\x01\x00\x00\x00a")
        code, details, _ = await stock_call(server.port, _request("tokens", prompt))
        assert code == INVALID and "ModelStreamInfer" in details
        p = ("p", "BYTES", [1], b"")
        code, details, _ = await stock_call(server.port, _request("distance", p))
        assert code == grpc.StatusCode.UNIMPLEMENTED and "parameter 'p'" in details
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            infer = channel.unary_unary(f"/{messages.SERVICE_NAME}/ModelInfer")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await infer(b"\xff\xff\xff", timeout=10)
        assert info.value.code() == INVALID
        assert "could not be decoded" in (info.value.details() or "")


async def test_stream_infer_streams_chunks_answers_unary_models_and_goes_on_after_errors() -> None:
    prompt = tensor("prompt", np.array(["a b c"], dtype=object), "BYTES")

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": "tokens", "inputs": [prompt], "request_id": "t1"}
        yield {"model_name": "project", "inputs": [tensor("features", F32, "FP32")]}
        yield {"model_name": "project", "inputs": [tensor("feature", F32, "FP32")]}
        yield {"model_name": "tokens", "inputs": [prompt], "request_id": "t2"}

    async with (
        running(kserve_app(), http=True) as server,
        triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client,
    ):
        got: list[Any] = []
        async for result, error in client.stream_infer(requests()):
            if error is not None:
                got.append(error.message())
            else:
                got.append((result.get_response().id, result.as_numpy("result").tolist()))
    chunks = [[b"a"], [b"b"], [b"c"]]
    assert got[:3] == [("t1", chunk) for chunk in chunks]
    assert got[3] == ("", (F32 @ WEIGHTS).tolist())
    assert "no input 'feature'" in got[4]
    assert got[5:] == [("t2", chunk) for chunk in chunks]


async def test_stream_infer_marks_the_final_response_when_asked() -> None:
    """Triton's opt-in (tritonclient's enable_empty_final_response): every response says
    whether it is the request's last, and a streaming model's stream ends with an empty one."""
    tokens = _request("tokens", ("prompt", "BYTES", [1], b"\x03\x00\x00\x00a b"))
    lengths = _request("lengths", ("words", "BYTES", [1], b"\x02\x00\x00\x00ab"))
    for request, request_id in ((tokens, "t"), (lengths, "l")):
        request.id = request_id
        request.parameters["triton_enable_empty_final_response"].bool_param = True
    async with (
        running(kserve_app(), http=True) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        call = stock_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([tokens, lengths])
        )
        got = [
            (
                r.infer_response.id,
                len(r.infer_response.outputs),
                r.infer_response.parameters["triton_final_response"].bool_param,
            )
            async for r in call
        ]
    assert got == [("t", 1, False), ("t", 1, False), ("t", 0, True), ("l", 1, True)]


async def test_kserve_calls_batch_together_with_native_calls() -> None:
    app = BlazeApp(batch_timeout_ms=50)

    @app.model("slow")
    async def slow(x: TensorInput[np.float32, "batch", 4]) -> TensorOutput[np.float32, "batch"]:
        await asyncio.sleep(0.02)
        return x.sum(axis=1)

    rows = [np.full((1, 4), i, np.float32) for i in range(16)]
    async with (
        running(app, http=True) as server,
        triton.InferenceServerClient(f"127.0.0.1:{server.port}") as kserve,
        BlazeClient("127.0.0.1", server.port) as native,
    ):
        calls = [kserve.infer("slow", [tensor("x", row, "FP32")]) for row in rows[:12]]
        calls += [native.predict("slow", x=row) for row in rows[12:]]
        results = await asyncio.gather(*calls)
        stats = server.stats()["slow"]
    sums = [r.as_numpy("result").tolist() for r in results[:12]] + [
        r.tolist() for r in results[12:]
    ]
    assert sums == [[4.0 * i] for i in range(16)]
    assert stats.requests == 16
    assert stats.batches < 16 and max(stats.batch_sizes) > 1, stats


async def test_middleware_and_context_apply_to_kserve_calls() -> None:
    seen: list[tuple[str, grpc.StatusCode]] = []

    class Record(Middleware):
        async def on_response(self, event: ResponseEvent) -> None:
            seen.append((event.method_name, event.status))

    app = BlazeApp(middleware=[Record(), TokenAuthMiddleware(tokens=["s3cret"])])

    @app.model("whoami")
    def whoami(text: str, ctx: Context) -> str:
        return f"{text} {ctx.method} {ctx.metadata['x-user']}"

    text = tensor("text", np.array(["hi"], dtype=object), "BYTES")
    method = f"/{messages.SERVICE_NAME}/ModelInfer/whoami"
    async with (
        running(app, http=True) as server,
        triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client,
    ):
        with pytest.raises(InferenceServerException) as info:
            await client.infer("whoami", [text])
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        headers = {"authorization": "Bearer s3cret", "x-user": "ann"}
        result = await client.infer("whoami", [text], headers=headers)
        assert result.as_numpy("result").tolist() == [f"hi {method} ann".encode()]
    assert seen == [(method, grpc.StatusCode.UNAUTHENTICATED), (method, grpc.StatusCode.OK)]


def bytes_request(model: str, name: str, elements: list[bytes], shape: list[int]) -> bytes:
    request = messages.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype="BYTES", shape=shape)
    request.raw_input_contents.append(b"".join(len(e).to_bytes(4, "little") + e for e in elements))
    return request.SerializeToString()


async def test_bytes_elements_are_counted_against_the_shape_before_they_are_split() -> None:
    app = BlazeApp()

    @app.model("count")
    def count(words: list[str]) -> int:
        return len(words)

    @app.model("shout")
    def shout(word: str) -> str:
        return word.upper()

    infer = "/inference.GRPCInferenceService/ModelInfer"
    async with running(app, http=True) as server:
        more = await raw_call(server.port, infer, bytes_request("count", "words", [b"a"] * 3, [2]))
        assert more.code == INVALID and "more than the 2 elements" in more.details, more
        many = await raw_call(server.port, infer, bytes_request("shout", "word", [b"a"] * 9, [9]))
        assert many.code == INVALID and "shape [1]" in many.details, many
        ok = await raw_call(server.port, infer, bytes_request("count", "words", [b"a"] * 3, [3]))
        assert ok.code == grpc.StatusCode.OK, ok


async def test_a_large_bytes_request_does_not_hold_up_health_checks() -> None:
    """A million BYTES elements take most of a second to split in Python; on the event loop,
    they would hold every other call up that long. Measured against the request's own
    duration, so a busy machine slows both sides alike."""
    app = BlazeApp()

    @app.model("count")
    def count(words: list[str]) -> int:
        return len(words)

    n = 1_000_000
    request = bytes_request("count", "words", [b"a"] * n, [n])
    async with (
        running(app, http=True) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        check = health_pb2_grpc.HealthStub(channel).Check
        await check(health_pb2.HealthCheckRequest())
        began = time.perf_counter()
        big = asyncio.ensure_future(
            raw_call(server.port, "/inference.GRPCInferenceService/ModelInfer", request)
        )
        answered = [began]  # when each health check came back; a gap is a loop held up
        while not big.done():
            await check(health_pb2.HealthCheckRequest(), timeout=10)
            answered.append(time.perf_counter())
            await asyncio.sleep(0.005)
        reply = await big
        took = time.perf_counter() - began
    gaps = [b - a for a, b in itertools.pairwise(answered)]
    assert reply.code == grpc.StatusCode.OK, reply
    raw = messages.ModelInferResponse.FromString(reply.data).raw_output_contents[0]
    assert np.frombuffer(raw, "<i8").tolist() == [n]
    # Decoded on the loop, one gap spans nearly the whole request; off it, the longest gap is
    # a GIL hand-over or two (most of a second only on a machine loaded many times over).
    assert len(gaps) > 5 and max(gaps) < took / 2, (took, sorted(gaps)[-3:])


async def test_requested_output_and_unrequested_binary_output_with_tritonclient() -> None:
    async with (
        running(kserve_app(), http=True) as server,
        triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client,
    ):
        result = await client.infer(
            "project", [tensor("features", F32, "FP32")], outputs=[InferRequestedOutput("result")]
        )
        np.testing.assert_array_equal(result.as_numpy("result"), F32 @ WEIGHTS)
        with pytest.raises(InferenceServerException) as info:
            await client.infer(
                "project", [tensor("features", F32, "FP32")], outputs=[InferRequestedOutput("x")]
            )
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


@pytest.mark.parametrize("example", examples("grpc-"), ids=lambda e: e.name)
async def test_docs_examples(example: Any) -> None:
    from .apps.protocols_app import app

    async with running(app, http=True) as server:
        assert_documented_output(example, await run_example(example, server))
