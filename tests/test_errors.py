"""Bad input gets a clear status and details over the wire, and the server keeps serving."""

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from blazerpc import (
    BlazeApp,
    BlazeClient,
    InferenceError,
    TensorInput,
    TensorOutput,
    ValidationError,
)

from .support import client_for, path, running
from .wire import Reply, raw_call, raw_stream

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class Frame:
    image: TensorInput[np.uint8, "h", "w", 3]
    caption: str


def error_app() -> BlazeApp:
    app = BlazeApp()

    @app.model("echo")
    async def echo(text: str) -> str:
        return text

    @app.model("classify")
    def classify(features: TensorInput[np.float32, "batch", 4]) -> TensorOutput[np.int64, "batch"]:
        return features.argmax(axis=1).astype(np.int64)

    @app.model("frames")
    async def frames(frame: Frame, extra: list[TensorInput[np.float32, 2]]) -> int:
        return len(extra)

    @app.model("picky")
    async def picky(text: str) -> str:
        raise ValidationError(f"text must be at most 3 characters, got {len(text)}")

    @app.model("broken")
    def broken(text: str) -> str:
        return {"a": 1}[text]  # type: ignore[return-value]

    @app.model("broken-async")
    async def broken_async(text: str) -> str:
        raise RuntimeError("the model fell over")

    @app.model("tokens", streaming=True)
    async def tokens(text: str, fail_after: int = -1) -> AsyncIterator[str]:
        for i, tok in enumerate(text.split()):
            if i == fail_after:
                raise KeyError(tok)
            yield tok

    @app.model("stream-classify", streaming=True)
    async def stream_classify(
        features: TensorInput[np.float32, "batch", 4],
    ) -> AsyncIterator[int]:
        yield int(features.shape[0])

    return app


def tensor_request(app: BlazeApp, shape: list[int], dtype: str, data: bytes) -> bytes:
    request = app.schema.request_class("Classify")()
    request.features.shape.extend(shape)
    request.features.dtype = dtype
    request.features.data = data
    return request.SerializeToString()


async def assert_echo_works(port: int) -> None:
    app = error_app()
    reply = await raw_call(
        port, path("Echo"), app.schema.request_class("Echo")(text="ok").SerializeToString()
    )
    assert reply.code == grpc.StatusCode.OK, reply.details
    assert app.schema.response_class("Echo").FromString(reply.data).result == "ok"


F32 = np.zeros((2, 4), np.float32).tobytes()

# (case id, shape, dtype, data, fragments the details must contain)
TENSOR_CASES = [
    (
        "dtype-differs",
        [2, 4],
        "double",
        np.zeros((2, 4), np.float64).tobytes(),
        ["features", "float", "double"],
    ),
    (
        "wrong-fixed-dim",
        [2, 3],
        "float",
        np.zeros((2, 3), np.float32).tobytes(),
        ["features", "4", "[2, 3]"],
    ),
    ("wrong-rank", [8], "float", np.zeros(8, np.float32).tobytes(), ["features", "2", "[8]"]),
    ("negative-dim", [-2, 4], "float", F32, ["features", "non-negative", "[-2, 4]"]),
    ("data-too-short", [2, 4], "float", F32[:12], ["features", "32", "12"]),
    ("data-too-long", [2, 4], "float", F32 + b"\0", ["features", "32", "33"]),
    ("unknown-dtype", [2, 4], "complex64", F32, ["features", "complex64", "float"]),
    ("empty-dtype", [2, 4], "", F32, ["features", "dtype", "float"]),
]


@pytest.mark.parametrize(
    ("shape", "dtype", "data", "fragments"),
    [case[1:] for case in TENSOR_CASES],
    ids=[case[0] for case in TENSOR_CASES],
)
async def test_bad_tensor_is_invalid_argument_naming_field_expected_and_got(
    shape: list[int], dtype: str, data: bytes, fragments: list[str]
) -> None:
    app = error_app()
    async with running(app) as server:
        reply = await raw_call(
            server.port, path("Classify"), tensor_request(app, shape, dtype, data)
        )
        assert reply.code == INVALID, reply
        for fragment in fragments:
            assert fragment in reply.details, (fragment, reply.details)
        assert "Traceback" not in reply.details
        await assert_echo_works(server.port)


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [([0, 2**62], "[0, 4611686018427387904]"), ([1] * 65, "[1, 1, 1")],
    ids=["empty-but-too-big", "65-dimensions"],
)
async def test_shapes_numpy_cannot_hold_are_invalid_argument(shape: list[int], fragment: str):
    """Over KServe a list parameter accepts any shape the byte count fits (none, or one
    element here), yet numpy refuses these: still the client's mistake, not INTERNAL."""
    from blazerpc.protocols.kserve import messages

    app = BlazeApp()

    @app.model("total")
    async def total(values: list[float]) -> float:
        return sum(values)

    request = messages.ModelInferRequest(model_name="total")
    request.inputs.add(name="values", datatype="FP64", shape=shape)
    request.raw_input_contents.append(b"" if 0 in shape else np.zeros(1, np.float64).tobytes())
    async with running(app) as server:
        reply = await raw_call(
            server.port, "/inference.GRPCInferenceService/ModelInfer", request.SerializeToString()
        )
        assert reply.code == INVALID, reply
        assert "'values'" in reply.details and fragment in reply.details, reply.details


async def test_good_tensor_is_accepted_by_the_same_model() -> None:
    """The control for the cases above: the same request, done right, succeeds."""
    app = error_app()
    features = np.array([[0, 1, 0, 0], [0, 0, 0, 2]], np.float32)
    async with running(app) as server:
        reply = await raw_call(
            server.port, path("Classify"), tensor_request(app, [2, 4], "float", features.tobytes())
        )
    assert reply.code == grpc.StatusCode.OK, reply.details
    result = app.schema.response_class("Classify").FromString(reply.data).result
    assert np.frombuffer(result.data, "<i8").tolist() == [1, 3]


async def test_missing_required_tensor_field() -> None:
    app = error_app()
    async with running(app) as server:
        reply = await raw_call(server.port, path("Classify"), b"")
        assert reply.code == INVALID
        assert "missing" in reply.details
        assert "features" in reply.details
        assert "TensorProto" in reply.details  # what was expected
        # A streaming model checks its request the same way.
        reply = await raw_call_stream(server.port, path("StreamClassify"), b"")
        assert reply.code == INVALID
        assert "features" in reply.details
        await assert_echo_works(server.port)


async def raw_call_stream(port: int, method: str, request: bytes) -> Reply:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            items = [r async for r in channel.unary_stream(method)(request, timeout=10)]
        except grpc.aio.AioRpcError as exc:
            return Reply(exc.code(), exc.details() or "", None)
        return Reply(grpc.StatusCode.OK, "", b"".join(items))


async def test_nested_field_paths_are_named() -> None:
    app = error_app()
    good = np.zeros((1, 1, 3), np.uint8)
    async with client_for(app, registry=False) as client:
        # A dataclass's required tensor, missing.
        with pytest.raises(ValidationError) as info:
            await client.predict("frames", frame={"caption": "x"}, extra=[])
        assert "frame.image" in info.value.details
        # A tensor inside a list, with the wrong fixed dim.
        with pytest.raises(ValidationError) as info:
            await client.predict(
                "frames",
                frame={"image": good, "caption": "x"},
                extra=[np.zeros(2, np.float32), np.zeros(3, np.float32)],
            )
        assert "extra[1]" in info.value.details
        assert "[3]" in info.value.details
        # A dataclass's tensor with the wrong dtype.
        with pytest.raises(ValidationError) as info:
            await client.predict(
                "frames", frame={"image": good.astype(np.int16), "caption": "x"}, extra=[]
            )
        assert "frame.image" in info.value.details
        assert "uint8" in info.value.details
        assert "int16" in info.value.details
        assert await client.predict("frames", frame={"image": good, "caption": "x"}, extra=[]) == 0


async def test_dtype_mismatch_through_the_client() -> None:
    """A client without the registry sends what it is given; the server says what is wrong."""
    app = error_app()
    async with client_for(app) as client:
        with pytest.raises(ValidationError) as info:
            await client.predict("classify", features=np.zeros((2, 4), np.float64))
        assert info.value.code == INVALID
        assert "features" in info.value.details
        assert "'float'" in info.value.details
        assert "'double'" in info.value.details
        got = await client.predict("classify", features=np.eye(4, dtype=np.float32))
        assert got.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"not a protobuf message at all", b"\x0a\x02\xff\xfe"],
    ids=["bad-tag", "truncated", "text", "bad-utf8"],
)
async def test_undecodable_bytes(garbage: bytes) -> None:
    app = error_app()
    async with running(app) as server:
        reply = await raw_call(server.port, path("Echo"), garbage)
        assert reply.code == INVALID
        assert "could not be decoded" in reply.details
        assert "EchoRequest" in reply.details
        reply = await raw_call_stream(server.port, path("Tokens"), garbage)
        assert reply.code == INVALID
        assert "could not be decoded" in reply.details
        await assert_echo_works(server.port)


async def test_model_raising_validation_error() -> None:
    app = error_app()
    async with running(app) as server:
        request = app.schema.request_class("Picky")(text="toolong").SerializeToString()
        reply = await raw_call(server.port, path("Picky"), request)
        assert reply.code == INVALID
        assert reply.details == "text must be at most 3 characters, got 7"
        await assert_echo_works(server.port)


async def test_model_raising_anything_else_is_internal(caplog: pytest.LogCaptureFixture) -> None:
    app = error_app()
    caplog.set_level(logging.ERROR)
    async with running(app) as server:
        request = app.schema.request_class("Broken")(text="zzz").SerializeToString()
        reply = await raw_call(server.port, path("Broken"), request)
        assert reply.code == grpc.StatusCode.INTERNAL
        assert reply.details == "KeyError: 'zzz'"
        request = app.schema.request_class("BrokenAsync")(text="x").SerializeToString()
        reply = await raw_call(server.port, path("BrokenAsync"), request)
        assert reply.code == grpc.StatusCode.INTERNAL
        assert reply.details == "RuntimeError: the model fell over"
        await assert_echo_works(server.port)
    # The traceback is in the server log, not on the wire.
    logged = [r for r in caplog.records if r.exc_info]
    assert any(r.exc_info[0] is KeyError for r in logged)
    assert any(r.exc_info[0] is RuntimeError for r in logged)


async def test_errors_arrive_at_the_client_as_exceptions() -> None:
    app = error_app()
    async with client_for(app) as client:
        with pytest.raises(ValidationError) as info:
            await client.predict("picky", text="toolong")
        assert info.value.code == INVALID
        assert info.value.details == "text must be at most 3 characters, got 7"
        with pytest.raises(InferenceError) as info:
            await client.predict("broken", text="zzz")
        assert info.value.code == grpc.StatusCode.INTERNAL
        assert info.value.details == "KeyError: 'zzz'"
        assert await client.predict("echo", text="still here") == "still here"


async def test_streaming_model_failing_midway() -> None:
    app = error_app()
    async with client_for(app) as client:
        got: list[str] = []
        with pytest.raises(InferenceError) as info:
            async for tok in client.stream("tokens", text="a b c d", fail_after=2):
                got.append(tok)
        assert got == ["a", "b"]
        assert info.value.code == grpc.StatusCode.INTERNAL
        assert info.value.details == "KeyError: 'c'"
        assert [t async for t in client.stream("tokens", text="a b c d")] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    "method",
    [
        "/blazerpc.InferenceService/PredictNope",
        "/blazerpc.InferenceService/Echo",
        "/blazerpc.OtherService/PredictEcho",
        "/no.such.Service/Method",
    ],
)
async def test_unknown_method_is_unimplemented(method: str) -> None:
    app = error_app()
    async with running(app) as server:
        reply = await raw_call(server.port, method, b"")
        assert reply.code == grpc.StatusCode.UNIMPLEMENTED
        await assert_echo_works(server.port)


async def test_one_server_survives_every_bad_input_in_a_row() -> None:
    app = error_app()
    async with running(app) as server:
        port = server.port
        for _, shape, dtype, data, _ in TENSOR_CASES:
            reply = await raw_call(port, path("Classify"), tensor_request(app, shape, dtype, data))
            assert reply.code == INVALID
        assert (await raw_call(port, path("Classify"), b"")).code == INVALID
        assert (await raw_call(port, path("Echo"), b"\xff\xff")).code == INVALID
        picky = app.schema.request_class("Picky")(text="long").SerializeToString()
        assert (await raw_call(port, path("Picky"), picky)).code == INVALID
        broken = app.schema.request_class("Broken")(text="x").SerializeToString()
        assert (await raw_call(port, path("Broken"), broken)).code == grpc.StatusCode.INTERNAL
        assert (await raw_call(port, path("Nope"), b"")).code == grpc.StatusCode.UNIMPLEMENTED
        await assert_echo_works(port)
        features = np.eye(4, dtype=np.float32)
        reply = await raw_call(
            port, path("Classify"), tensor_request(app, [4, 4], "float", features.tobytes())
        )
        assert reply.code == grpc.StatusCode.OK


# --- message size ----------------------------------------------------------------------------


async def test_12_mib_image_round_trips_by_default() -> None:
    app = BlazeApp()

    @app.model("invert")
    def invert(image: TensorInput[np.uint8, "h", "w", 3]) -> TensorOutput[np.uint8, "h", "w", 3]:
        return 255 - image

    image = np.random.default_rng(0).integers(0, 256, (2048, 2048, 3), dtype=np.uint8)
    assert image.nbytes == 12 * 1024 * 1024
    async with client_for(app) as client:
        got = await client.predict("invert", image=image)
    assert got.shape == (2048, 2048, 3)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, 255 - image)


async def test_message_over_the_configured_limit_is_resource_exhausted() -> None:
    app = BlazeApp(max_message_mb=1)

    @app.model("size")
    def size(data: bytes) -> int:
        return len(data)

    async with running(app) as server, BlazeClient("127.0.0.1", server.port) as client:
        assert await client.predict("size", data=b"x" * 900_000) == 900_000
        with pytest.raises(Exception) as info:
            await client.predict("size", data=b"x" * (2 * 1024 * 1024))
        assert getattr(info.value, "code", None) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The server keeps serving.
        assert await client.predict("size", data=b"abc") == 3


async def test_response_over_the_configured_limit_fails_cleanly() -> None:
    app = BlazeApp(max_message_mb=1)

    @app.model("blow-up")
    def blow_up(n: int) -> bytes:
        return b"x" * n

    async with running(app) as server, BlazeClient("127.0.0.1", server.port) as client:
        with pytest.raises(Exception) as info:
            await client.predict("blow-up", n=2 * 1024 * 1024)
        assert getattr(info.value, "code", None) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await client.predict("blow-up", n=10) == b"x" * 10


GARBAGE = b"\xff\xff\xff\xff"
KSERVE_SERVICE = "/inference.GRPCInferenceService"
# (method, client streaming, server streaming)
STOCK_SERVICES = [
    (f"{KSERVE_SERVICE}/ServerMetadata", False, False),
    (f"{KSERVE_SERVICE}/ModelMetadata", False, False),
    (f"{KSERVE_SERVICE}/ModelReady", False, False),
    (f"{KSERVE_SERVICE}/ModelStreamInfer", True, True),
    ("/grpc.health.v1.Health/Check", False, False),
    ("/grpc.health.v1.Health/Watch", False, True),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True, True),
]


@pytest.mark.parametrize(
    ("method", "client_streaming", "server_streaming"),
    STOCK_SERVICES,
    ids=[m.rsplit("/", 1)[1] for m, _, _ in STOCK_SERVICES],
)
async def test_garbage_bytes_to_every_service_are_invalid_argument_and_log_nothing(
    method: str,
    client_streaming: bool,
    server_streaming: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """grpcio itself answers UNKNOWN and logs a traceback for bytes its deserializer rejects,
    so any client, token or not, could flood the log."""
    async with running(error_app()) as server:
        reply = await raw_stream(
            server.port,
            method,
            [GARBAGE],
            client_streaming=client_streaming,
            server_streaming=server_streaming,
        )
        assert reply.code == INVALID, reply
        assert "could not be decoded" in reply.details, reply.details
        await assert_echo_works(server.port)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_reflection_can_be_switched_off() -> None:
    app = error_app()
    app.reflection = False
    request = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    async with running(app) as server:
        reply = await raw_stream(server.port, method, [request])
        assert reply.code == grpc.StatusCode.UNIMPLEMENTED, reply
    async with running(error_app()) as server:
        reply = await raw_stream(server.port, method, [request])
        assert reply.code == grpc.StatusCode.OK, reply
        listed = reflection_pb2.ServerReflectionResponse.FromString(reply.data)
        assert "blazerpc.InferenceService" in [
            s.name for s in listed.list_services_response.service
        ]
