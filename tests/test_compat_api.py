"""2.2.1's public names and documented usage, run against this server: the middleware guide's
examples, exception arguments, Depends.fn, the Literal shape form, client keywords and
close(), model versions over every protocol, blazerpc.contrib and the extras."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from typing import Literal

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton
from grpclib.const import Status
from grpclib.events import RecvRequest, SendTrailingMetadata
from grpclib.exceptions import GRPCError
from prometheus_client import REGISTRY

from blazerpc import (
    BlazeApp,
    BlazeClient,
    BlazeRPCError,
    Context,
    Depends,
    InferenceError,
    JsonRpcClient,
    ModelNotFoundError,
    SerializationError,
    TensorInput,
    TensorOutput,
)
from blazerpc.server.middleware import (
    ExceptionMiddleware,
    LoggingMiddleware,
    Middleware,
    RequestInfo,
    ResponseInfo,
    TransportLoggingMiddleware,
    TransportMetricsMiddleware,
    TransportMiddleware,
)
from blazerpc.types import Tensor

from .protocol_servers import http
from .support import running

# --- names and constructors ---------------------------------------------------------------------


def test_exception_arguments_and_attributes() -> None:
    missing = ModelNotFoundError("sentiment", "2")
    assert (missing.name, missing.version) == ("sentiment", "2")
    assert str(missing) == "Model 'sentiment' version '2' not found"
    assert ModelNotFoundError("x").version == "1"
    assert missing.code is grpc.StatusCode.NOT_FOUND
    bad = SerializationError("unknown dtype", dtype="complex64")
    assert (str(bad), bad.dtype, bad.code) == (
        "unknown dtype",
        "complex64",
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    failed = InferenceError("boom", model_name="iris")
    assert (str(failed), failed.model_name) == ("boom", "iris")


def test_depends_keeps_its_function_as_fn() -> None:
    def user(ctx: Context) -> str:
        return "ann"

    assert Depends(user).fn is user


def test_literal_shape_form_is_the_same_tensor_as_the_plain_form() -> None:
    literal = TensorInput[np.float32, tuple[Literal["batch"], Literal[4]]]
    plain = TensorInput[np.float32, "batch", 4]
    assert literal.__metadata__ == plain.__metadata__ == (Tensor(np.dtype("<f4"), ("batch", 4)),)
    with pytest.raises(Exception, match="each dim must be one Literal"):
        TensorOutput[np.float32, tuple[Literal["batch"], int]]


def test_middleware_base_is_abstract_and_attach_adds_to_the_app() -> None:
    with pytest.raises(TypeError):
        Middleware()
    app = BlazeApp()
    mw = LoggingMiddleware()
    mw.attach(app)
    assert app.middleware == [mw]
    with pytest.raises(TypeError, match="BlazeApp"):
        mw.attach(object())


# --- the middleware guide's examples ------------------------------------------------------------


class AuthMiddleware(Middleware):
    """The guide's auth example, as written for grpclib's events."""

    async def on_request(self, event: RecvRequest) -> None:
        token = dict(event.metadata).get("authorization")
        if token != "my-secret-token":
            raise GRPCError(Status.UNAUTHENTICATED, "Missing or invalid authorization token")

    async def on_response(self, event: SendTrailingMetadata) -> None:
        pass


class Journal(TransportMiddleware):
    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    async def on_request(self, info: RequestInfo) -> None:
        self.seen.append(("in", info.transport, info.method, info.headers.get("x-tag", "")))

    async def on_response(self, info: ResponseInfo) -> None:
        assert info.duration >= 0
        self.seen.append(("out", info.transport, info.method, str(info.status)))


def guarded_app(*middleware: Middleware | TransportMiddleware) -> BlazeApp:
    app = BlazeApp(middleware=list(middleware))

    @app.model("echo")
    async def echo(text: str, ctx: Context) -> str:
        return f"{text} {ctx.method}"

    return app


async def test_grpclib_error_from_middleware_gives_its_status_on_every_protocol() -> None:
    app = guarded_app(LoggingMiddleware(), AuthMiddleware())
    async with running(app, http=True) as server:
        async with BlazeClient("127.0.0.1", server.port) as client:
            with pytest.raises(BlazeRPCError) as info:
                await client.predict("echo", text="hi")
            assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
            assert "invalid authorization token" in str(info.value)
        ok = BlazeClient("127.0.0.1", server.port, metadata={"authorization": "my-secret-token"})
        assert await ok.predict("echo", text="hi") == "hi /blazerpc.InferenceService/PredictEcho"
        await ok.close()
        call = {"jsonrpc": "2.0", "method": "predict.echo", "params": {"text": "a"}, "id": 1}
        url = f"http://127.0.0.1:{server.http_port}/jsonrpc"
        denied = (await http(url, call)).json()
        assert denied["error"]["data"]["status"] == "UNAUTHENTICATED"  # type: ignore[index]
        allowed = (await http(url, call, {"authorization": "my-secret-token"})).json()
        assert allowed["result"] == "a predict.echo"  # type: ignore[index]


async def test_logging_middleware_sees_the_status_of_a_rejected_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        running(guarded_app(LoggingMiddleware(), AuthMiddleware()), http=True) as server,
        BlazeClient("127.0.0.1", server.port) as client,
    ):
        with caplog.at_level(logging.INFO, logger="blazerpc.access"), pytest.raises(BlazeRPCError):
            await client.predict("echo", text="hi")
    assert "PredictEcho" in caplog.text and "UNAUTHENTICATED" in caplog.text


async def test_transport_middleware_sees_grpc_and_jsonrpc_calls() -> None:
    journal = Journal()
    async with running(guarded_app(journal), http=True) as server:
        client = BlazeClient("127.0.0.1", server.port, metadata={"x-tag": "g"})
        await client.predict("echo", text="hi")
        client.close()  # as 2.2.1's docs call it, without await
        async with JsonRpcClient(f"http://127.0.0.1:{server.http_port}/jsonrpc") as rpc:
            assert await rpc.predict("echo", text="x") == "x predict.echo"
            with pytest.raises(ModelNotFoundError, match="JSON-RPC error -32601"):
                await rpc.predict("nope", text="x")
    method = "/blazerpc.InferenceService/PredictEcho"
    assert journal.seen[:4] == [
        ("in", "grpc", method, "g"),
        ("out", "grpc", method, "0"),
        ("in", "jsonrpc", "predict.echo", ""),
        ("out", "jsonrpc", "predict.echo", "0"),
    ]
    # The unknown model's error is answered only once middleware has admitted the call.
    assert [s[:3] for s in journal.seen[4:]] == [
        ("in", "jsonrpc", "predict.nope"),
        ("out", "jsonrpc", "predict.nope"),
    ]


async def test_transport_logging_and_metrics_middleware(caplog: pytest.LogCaptureFixture) -> None:
    metrics, logs = TransportMetricsMiddleware(), TransportLoggingMiddleware()
    labels = {"method": "predict.echo", "status": "0", "transport": "jsonrpc"}
    before = REGISTRY.get_sample_value("blazerpc_transport_requests_total", labels) or 0
    async with running(guarded_app(metrics, logs, ExceptionMiddleware()), http=True) as server:
        with caplog.at_level(logging.INFO, logger="blazerpc.middleware"):
            async with JsonRpcClient(f"http://127.0.0.1:{server.http_port}/jsonrpc") as rpc:
                await rpc.predict("echo", text="x")
                await rpc.predict(model_name="echo", text="y")
    assert REGISTRY.get_sample_value("blazerpc_transport_requests_total", labels) == before + 2
    assert "[jsonrpc] Request: predict.echo" in caplog.text


# --- clients: model_name=, close() ----------------------------------------------------------------


async def test_client_takes_model_name_as_a_keyword_and_closes_without_await() -> None:
    app = BlazeApp()

    @app.model("echo")
    async def echo(text: str) -> str:
        return text

    @app.model("words", streaming=True)
    async def words(text: str) -> str:
        for word in text.split():
            yield word

    async with running(app, http=True) as server:
        client = BlazeClient("127.0.0.1", server.port)
        assert await client.predict(model_name="echo", text="a") == "a"
        assert [w async for w in client.stream(model_name="words", text="a b")] == ["a", "b"]
        channel = client._channel
        closing = client.close()
        await closing  # the same call can be awaited; un-awaited it still closes
        assert channel is not None and channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN
        await client.close()  # closing twice is harmless


# --- model versions over every protocol -----------------------------------------------------------


def versioned_app() -> BlazeApp:
    app = BlazeApp()

    @app.model("sentiment")
    def v1(x: TensorInput[np.float32, "batch", 2]) -> TensorOutput[np.float32, "batch", 2]:
        return x + 1

    @app.model("sentiment", version="2")
    def v2(x: TensorInput[np.float32, "batch", 2]) -> TensorOutput[np.float32, "batch", 2]:
        return x + 2

    @app.model("sentiment", version="10")
    def v10(x: TensorInput[np.float32, "batch", 2]) -> TensorOutput[np.float32, "batch", 2]:
        return x + 10

    return app


def test_versions_get_their_own_rpcs_and_the_highest_is_the_default() -> None:
    proto = versioned_app().proto()
    assert "rpc PredictSentiment(SentimentRequest) returns (SentimentResponse);" in proto
    assert "rpc PredictSentimentV10(SentimentRequest) returns (SentimentResponse);" in proto
    assert "rpc PredictSentimentV2(SentimentV2Request) returns (SentimentV2Response);" in proto
    assert "rpc PredictSentimentV1(SentimentV1Request) returns (SentimentV1Response);" in proto
    app = versioned_app()
    assert app.registry.get("sentiment").version == "10"
    assert app.registry.get("sentiment", "2").version == "2"
    with pytest.raises(ModelNotFoundError, match="has no version '3'"):
        app.registry.get("sentiment", "3")
    with pytest.raises(Exception, match="already registered"):
        app.model("sentiment", version="2")(lambda x: x)


async def test_each_version_is_callable_over_every_protocol() -> None:
    app = versioned_app()
    x = np.zeros((1, 2), np.float32)
    async with running(app, http=True) as server:
        for registry in (None, app.registry):
            async with BlazeClient("127.0.0.1", server.port, registry=registry) as client:
                for model, want in (("sentiment", 10), ("sentiment@10", 10), ("sentiment@1", 1)):
                    got = await client.predict(model, x=x)
                    assert got.tolist() == [[want, want]], (model, registry)
                with pytest.raises(ModelNotFoundError):
                    await client.predict("sentiment@3", x=x)

        async with JsonRpcClient(f"http://127.0.0.1:{server.http_port}/jsonrpc") as rpc:
            assert (await rpc.predict("sentiment", x=x)).tolist() == [[10, 10]]
            assert (await rpc.predict("sentiment@2", x=x)).tolist() == [[2, 2]]
            with pytest.raises(ModelNotFoundError, match="no version '3'"):
                await rpc.predict("sentiment@3", x=x)

        base = f"http://127.0.0.1:{server.http_port}/v2/models/sentiment"
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [0, 0]}]}
        for path, want in (("", 10), ("/versions/1", 1), ("/versions/2", 2)):
            reply = (await http(f"{base}{path}/infer", body)).json()
            assert reply["model_version"] == str(want), path  # type: ignore[index]
            assert reply["outputs"][0]["data"] == [want, want], path  # type: ignore[index]
        assert (await http(f"{base}/versions/3/infer", body)).status == 404
        metadata = (await http(base)).json()
        assert metadata["versions"] == ["10", "2", "1"]  # type: ignore[index]

        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            for version, want in (("", 10), ("1", 1), ("2", 2)):
                tensor = triton.InferInput("x", [1, 2], "FP32")
                tensor.set_data_from_numpy(x)
                result = await client.infer("sentiment", [tensor], model_version=version)
                assert result.as_numpy("result").tolist() == [[want, want]], version
            assert await client.is_model_ready("sentiment", "2")
            assert not await client.is_model_ready("sentiment", "3")
        finally:
            await client.close()


async def test_jsonrpc_method_names_a_version_below_the_highest() -> None:
    app = BlazeApp()

    @app.model("echo")
    async def v1(text: str, ctx: Context) -> str:
        return f"v1 {ctx.method}"

    @app.model("echo", version="2")
    async def v2(text: str, ctx: Context) -> str:
        return f"v2 {ctx.method}"

    async with (
        running(app, http=True) as server,
        JsonRpcClient(f"http://127.0.0.1:{server.http_port}/jsonrpc") as rpc,
    ):
        assert await rpc.predict("echo", text="x") == "v2 predict.echo"
        assert await rpc.predict("echo@2", text="x") == "v2 predict.echo"
        assert await rpc.predict("echo@1", text="x") == "v1 predict.echo@1"


# --- blazerpc.contrib and the extras ----------------------------------------------------------


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def use_torch() -> None:
    from blazerpc.contrib.pytorch import torch_model

    torch_model(lambda x: x)


def use_onnx() -> None:
    from blazerpc.contrib.onnx import ONNXModel

    ONNXModel("model.onnx")


def use_tensorflow() -> None:
    from blazerpc.contrib.tensorflow import tf_model

    tf_model(lambda x: x)


@pytest.mark.parametrize(
    ("module", "extra", "use"),
    [
        ("torch", "pytorch", use_torch),
        ("onnxruntime", "onnx", use_onnx),
        ("tensorflow", "tensorflow", use_tensorflow),
    ],
)
def test_contrib_imports_without_its_framework_and_names_the_extra(
    module: str, extra: str, use: object
) -> None:
    if installed(module):
        pytest.skip(f"{module} is installed here, so the missing-framework message cannot show")
    from blazerpc.contrib import MissingExtra

    with pytest.raises(MissingExtra, match=rf"pip install 'blazerpc\[{extra}\]'"):
        use()  # type: ignore[operator]
    with pytest.raises(ImportError):  # also an ImportError, as 2.2.1's failed import was
        use()  # type: ignore[operator]


@pytest.mark.models  # needs torch: make test-models runs it
async def test_torch_model_hands_torch_tensors_and_returns_numpy() -> None:
    import torch

    from blazerpc.contrib.pytorch import numpy_to_torch, torch_model, torch_to_numpy

    app = BlazeApp()

    @app.model("double")
    @torch_model
    def double(x: TensorInput[np.float32, "batch", 2]) -> TensorOutput[np.float32, "batch", 2]:
        assert isinstance(x, torch.Tensor)
        return x * 2

    async with running(app, http=True) as server, BlazeClient("127.0.0.1", server.port) as client:
        got = await client.predict("double", x=np.ones((1, 2), np.float32))
    assert got.tolist() == [[2, 2]]
    assert torch_to_numpy(numpy_to_torch(np.arange(3))).tolist() == [0, 1, 2]
    frozen = np.arange(3.0)
    frozen.flags.writeable = False
    numpy_to_torch(frozen).add_(1)  # a copy: the read-only array is left alone
    assert frozen.tolist() == [0.0, 1.0, 2.0]


def test_extras_of_221_are_declared() -> None:
    meta = importlib.metadata.metadata("blazerpc")
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"pytorch", "onnx", "tensorflow", "jsonrpc", "all"} <= extras
    requires = meta.get_all("Requires-Dist") or []
    assert any(r.startswith("torch==2.13.0") and 'extra == "pytorch"' in r for r in requires)
