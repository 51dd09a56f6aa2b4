"""BlazeClient and SyncBlazeClient against real servers: discovery, results, errors, options."""

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from blazerpc import (
    BlazeApp,
    BlazeClient,
    BlazeRPCError,
    InferenceError,
    ModelNotFoundError,
    SyncBlazeClient,
    TensorInput,
    TensorOutput,
    ValidationError,
)

from .support import client_for, running


@dataclass
class Label:
    name: str
    score: float


def client_app() -> BlazeApp:
    app = BlazeApp()
    app.state.calls = 0

    @app.model("echo")
    async def echo(text: str) -> str:
        app.state.calls += 1
        return text

    @app.model("classify")
    def classify(
        features: TensorInput[np.float32, "batch", 4],
    ) -> TensorOutput[np.float32, "batch", 2]:
        return np.stack([features.sum(axis=1), features.max(axis=1)], axis=1)

    @app.model("label")
    async def label(text: str) -> Label:
        return Label(text.upper(), 0.75)

    @app.model("slow")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    @app.model("slow-stream", streaming=True)
    async def slow_stream(seconds: float) -> AsyncIterator[str]:
        yield "first"
        await asyncio.sleep(seconds)
        yield "second"

    @app.model("collide")
    async def collide(model: str, timeout: float, metadata: str, registry: int) -> str:
        return f"{model}|{timeout}|{metadata}|{registry}"

    @app.model("collide-stream", streaming=True)
    async def collide_stream(model: str, timeout: int) -> AsyncIterator[str]:
        for _ in range(timeout):
            yield model

    @app.model("generate", streaming=True)
    async def generate(prompt: str) -> AsyncIterator[str]:
        for tok in prompt.split():
            yield tok

    @app.model("sync-generate", streaming=True)
    def sync_generate(n: int) -> Iterator[int]:
        yield from range(n)

    @app.model("tokens-fail", streaming=True)
    def tokens_fail(text: str) -> Iterator[str]:
        for tok in text.split():
            if tok == "b":
                raise KeyError(tok)
            yield tok

    @app.model("picky")
    async def picky(text: str) -> str:
        raise ValidationError("text is not allowed here")

    @app.model("broken")
    async def broken(text: str) -> str:
        raise KeyError(text)

    return app


@pytest.mark.parametrize("registry", [False, True], ids=["reflection", "registry"])
async def test_predict_and_stream(registry: bool) -> None:
    app = client_app()
    async with client_for(app, registry=registry) as client:
        assert await client.predict("echo", text="hi") == "hi"
        assert [t async for t in client.stream("generate", prompt="a b c")] == ["a", "b", "c"]
        assert [t async for t in client.stream("sync-generate", n=3)] == [0, 1, 2]
        assert [t async for t in client.stream("generate", prompt="")] == []


async def test_reflection_discovery_needs_no_server_code() -> None:
    """A client built from host and port alone learns every model, including ones it never saw."""
    app = client_app()
    async with running(app) as server:
        client = BlazeClient("127.0.0.1", server.port)
        async with client:
            assert await client.predict("echo", text="x") == "x"
            assert await client.predict("label", text="y") is not None


@pytest.mark.parametrize("registry", [False, True], ids=["reflection", "registry"])
async def test_tensors_come_back_as_numpy_arrays(registry: bool) -> None:
    app = client_app()
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    async with client_for(app, registry=registry) as client:
        got = await client.predict("classify", features=features)
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.float32
    assert got.shape == (3, 2)
    np.testing.assert_array_equal(got, [[6, 3], [22, 7], [38, 11]])


async def test_registry_client_casts_inputs_to_the_declared_dtype() -> None:
    app = client_app()
    async with client_for(app, registry=True) as client:
        got = await client.predict("classify", features=[[1, 2, 3, 4]])
    np.testing.assert_array_equal(got, [[10, 4]])


async def test_dataclass_results() -> None:
    app = client_app()
    async with client_for(app, registry=True) as client:
        got = await client.predict("label", text="cat")
        assert got == Label("CAT", 0.75)
        assert isinstance(got, Label)
    async with client_for(app) as client:
        got = await client.predict("label", text="cat")
        assert dataclasses.asdict(got) == {"name": "CAT", "score": 0.75}


@pytest.mark.parametrize("registry", [False, True], ids=["reflection", "registry"])
async def test_errors_arrive_as_library_exceptions(registry: bool) -> None:
    app = client_app()
    async with client_for(app, registry=registry) as client:
        with pytest.raises(ValidationError) as info:
            await client.predict("picky", text="x")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details == "text is not allowed here"

        with pytest.raises(InferenceError) as info:
            await client.predict("broken", text="k")
        assert info.value.code == grpc.StatusCode.INTERNAL
        assert info.value.details == "KeyError: 'k'"

        with pytest.raises(ModelNotFoundError) as info:
            await client.predict("no-such-model", text="x")
        assert "no-such-model" in str(info.value)
        assert "Echo" in str(info.value)  # it says what is served

        # All of these are BlazeRPCErrors, so one except clause catches them.
        assert issubclass(ValidationError, BlazeRPCError)
        assert issubclass(InferenceError, BlazeRPCError)
        assert issubclass(ModelNotFoundError, BlazeRPCError)


@pytest.mark.parametrize("registry", [False, True], ids=["reflection", "registry"])
async def test_wrong_input_type_is_a_client_side_validation_error(registry: bool) -> None:
    app = client_app()
    async with client_for(app, registry=registry) as client:
        with pytest.raises(ValidationError) as info:
            await client.predict("echo", text=3)
        assert "'text'" in str(info.value)
        assert "string" in str(info.value)
        assert "int" in str(info.value)
        with pytest.raises(ValidationError) as info:
            async for _ in client.stream("generate", prompt=1.5):
                pass
        assert "'prompt'" in str(info.value)
        assert app.state.calls == 0


@pytest.mark.timeout(20)
async def test_calling_a_model_the_wrong_way_fails_at_once() -> None:
    """predict() on a streaming model, or stream() on a unary one, is a clear error, not a hang."""
    app = client_app()
    async with client_for(app) as client:
        with pytest.raises(BlazeRPCError) as info:
            await asyncio.wait_for(client.predict("generate", prompt="a b"), 5)
        assert "stream(" in str(info.value)
        with pytest.raises(BlazeRPCError) as info:
            await asyncio.wait_for(anext(client.stream("echo", text="x")), 5)
        assert "predict(" in str(info.value)
        assert await client.predict("echo", text="ok") == "ok"


async def test_model_not_found_on_the_server_side() -> None:
    """A registry client calling a server that lacks the model gets ModelNotFoundError."""
    local, remote = client_app(), BlazeApp()

    @remote.model("other")
    async def other(text: str) -> str:
        return text

    async with (
        running(remote) as server,
        BlazeClient("127.0.0.1", server.port, registry=local.registry) as client,
    ):
        with pytest.raises(ModelNotFoundError) as info:
            await client.predict("echo", text="x")
    assert info.value.code == grpc.StatusCode.UNIMPLEMENTED


async def test_unknown_input_name_is_a_client_side_validation_error() -> None:
    app = client_app()
    async with client_for(app) as client:
        await client.predict("echo", text="warm-up")
        calls = app.state.calls
        with pytest.raises(ValidationError) as info:
            await client.predict("echo", txt="typo")
        message = str(info.value)
        assert "echo" in message
        assert "'txt'" in message
        assert "text" in message  # the inputs it does have
        assert app.state.calls == calls  # the server never ran the model


async def test_deadline_via_with_options() -> None:
    app = client_app()
    async with client_for(app) as client:
        fast = client.with_options(timeout=0.05)
        start = time.perf_counter()
        with pytest.raises(BlazeRPCError) as info:
            await fast.predict("slow", seconds=2.0)
        assert time.perf_counter() - start < 1.0
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # The view shares the connection but not the option: the original has no deadline.
        assert await client.predict("slow", seconds=0.1) == "done"
        roomy = client.with_options(timeout=5.0)  # a deadline a loaded machine still meets
        assert await roomy.predict("slow", seconds=0.0) == "done"
        got: list[str] = []
        with pytest.raises(BlazeRPCError) as info:
            async for tok in client.with_options(timeout=0.3).stream("slow-stream", seconds=2.0):
                got.append(tok)
        assert got == ["first"]
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_deadline_in_the_constructor() -> None:
    app = client_app()
    async with (
        running(app) as server,
        BlazeClient("127.0.0.1", server.port, timeout=0.05) as client,
    ):
        with pytest.raises(BlazeRPCError) as info:
            await client.predict("slow", seconds=2.0)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_model_parameters_named_like_client_options() -> None:
    app = client_app()
    for registry in (False, True):
        async with client_for(app, registry=registry) as client:
            got = await client.predict("collide", model="m", timeout=2.5, metadata="md", registry=7)
            assert got == "m|2.5|md|7"
            got = await client.with_options(timeout=5.0).predict(
                "collide", model="m", timeout=0.125, metadata="md", registry=1
            )
            assert got == "m|0.125|md|1"
            assert [t async for t in client.stream("collide-stream", model="x", timeout=2)] == [
                "x",
                "x",
            ]


class RecordingServer:
    """A hand-written grpc.aio server (no BlazeRPC) that records each call's metadata."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.server = grpc.aio.server()
        app = client_app()  # only for its schema: the stock message classes
        request_cls = app.schema.request_class("Echo")
        response_cls = app.schema.response_class("Echo")

        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.metadata.append(dict(context.invocation_metadata() or ()))
            text = request_cls.FromString(request).text
            return response_cls(result=text).SerializeToString()

        handler = grpc.method_handlers_generic_handler(
            "blazerpc.InferenceService",
            {"PredictEcho": grpc.unary_unary_rpc_method_handler(echo)},
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.registry = app.registry


async def test_metadata_reaches_the_server() -> None:
    recorder = RecordingServer()
    await recorder.server.start()
    try:
        async with BlazeClient("127.0.0.1", recorder.port, registry=recorder.registry) as client:
            assert await client.predict("echo", text="plain") == "plain"
            tagged = client.with_options(metadata={"x-request-id": "abc-123", "Authorization": "t"})
            assert await tagged.predict("echo", text="tagged") == "tagged"
            assert await client.predict("echo", text="plain again") == "plain again"
            listed = client.with_options(metadata=[("x-tenant", "acme")], timeout=5.0)
            assert await listed.predict("echo", text="x") == "x"
    finally:
        await recorder.server.stop(None)
    plain, tagged_md, plain_again, listed_md = recorder.metadata
    assert "x-request-id" not in plain
    assert tagged_md["x-request-id"] == "abc-123"
    assert tagged_md["authorization"] == "t"
    assert "x-request-id" not in plain_again  # with_options did not change the original client
    assert listed_md["x-tenant"] == "acme"


async def test_metadata_reaches_the_server_through_sync_client() -> None:
    recorder = RecordingServer()
    await recorder.server.start()

    def call() -> str:
        with SyncBlazeClient(
            "127.0.0.1", recorder.port, registry=recorder.registry, metadata={"k": "v"}
        ) as client:
            return client.predict("echo", text="s")

    try:
        assert await asyncio.to_thread(call) == "s"
    finally:
        await recorder.server.stop(None)
    assert recorder.metadata[0]["k"] == "v"


def sync_session(port: int, registry: object) -> dict[str, object]:
    """Everything a script does with the blocking client (runs in a worker thread)."""
    out: dict[str, object] = {}
    with SyncBlazeClient("127.0.0.1", port, registry=registry) as client:  # type: ignore[arg-type]
        out["echo"] = client.predict("echo", text="sync")
        out["stream"] = list(client.stream("generate", prompt="x y z"))
        out["sync-stream"] = list(client.stream("sync-generate", n=4))
        out["tensor"] = client.predict("classify", features=np.ones((2, 4), np.float32))
        out["label"] = client.predict("label", text="a")
        out["collide"] = client.predict("collide", model="m", timeout=1.0, metadata="x", registry=2)
        try:
            client.predict("picky", text="x")
        except ValidationError as exc:
            out["picky"] = (exc.code, exc.details)
        try:
            client.predict("echo", nope="x")
        except ValidationError as exc:
            out["unknown-input"] = str(exc)
        try:
            client.with_options(timeout=0.05).predict("slow", seconds=2.0)
        except BlazeRPCError as exc:
            out["deadline"] = exc.code
        try:
            client.predict("missing-model", text="x")
        except ModelNotFoundError as exc:
            out["missing"] = str(exc)
        try:
            for _ in client.stream("generate", prompt=3):
                pass
        except ValidationError as exc:
            out["bad-stream-input"] = str(exc)
        try:
            list(client.stream("broken", text="x"))
        except BlazeRPCError as exc:
            out["unary-as-stream"] = str(exc)
        try:
            client.predict("generate", prompt="a b")
        except BlazeRPCError as exc:
            out["stream-as-unary"] = str(exc)
        try:
            list(client.stream("tokens-fail", text="a b c"))
        except InferenceError as exc:
            out["stream-error"] = (exc.code, exc.details)
    return out


@pytest.mark.parametrize("registry", [False, True], ids=["reflection", "registry"])
async def test_sync_client(registry: bool) -> None:
    app = client_app()
    async with running(app) as server:
        out = await asyncio.to_thread(sync_session, server.port, app.registry if registry else None)
    assert out["echo"] == "sync"
    assert out["stream"] == ["x", "y", "z"]
    assert out["sync-stream"] == [0, 1, 2, 3]
    tensor = out["tensor"]
    assert isinstance(tensor, np.ndarray)
    assert tensor.dtype == np.float32
    assert tensor.tolist() == [[4.0, 1.0], [4.0, 1.0]]
    assert dataclasses.asdict(out["label"]) == {"name": "A", "score": 0.75}  # type: ignore[call-overload]
    assert out["collide"] == "m|1.0|x|2"
    assert out["picky"] == (grpc.StatusCode.INVALID_ARGUMENT, "text is not allowed here")
    assert "'nope'" in out["unknown-input"]  # type: ignore[operator]
    assert out["deadline"] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "missing-model" in out["missing"]  # type: ignore[operator]
    assert "'prompt'" in out["bad-stream-input"]  # type: ignore[operator]
    assert "predict(" in out["unary-as-stream"]  # type: ignore[operator]
    assert "stream(" in out["stream-as-unary"]  # type: ignore[operator]
    assert out["stream-error"] == (grpc.StatusCode.INTERNAL, "KeyError: 'b'")


async def test_closed_client_can_be_reopened_by_use() -> None:
    app = client_app()
    async with running(app) as server:
        client = BlazeClient("127.0.0.1", server.port)
        assert await client.predict("echo", text="1") == "1"
        await client.close()
        assert await client.predict("echo", text="2") == "2"
        await client.close()


async def test_server_down_is_unavailable() -> None:
    app = client_app()
    async with running(app) as server:
        port = server.port
    async with BlazeClient("127.0.0.1", port, registry=app.registry, timeout=2.0) as client:
        with pytest.raises(BlazeRPCError) as info:
            await client.predict("echo", text="x")
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_client_message_limit_follows_max_message_mb() -> None:
    """A 70 MiB result needs a larger limit on both ends; the client's is settable."""
    app = BlazeApp(max_message_mb=100)

    @app.model("blob")
    async def blob(mib: int) -> bytes:
        return b"x" * (mib * 1024 * 1024)

    async with running(app) as server:
        async with BlazeClient("127.0.0.1", server.port) as default:
            with pytest.raises(BlazeRPCError) as info:
                await default.predict("blob", mib=70)
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        async with BlazeClient("127.0.0.1", server.port, max_message_mb=100) as roomy:
            assert len(await roomy.predict("blob", mib=70)) == 70 * 1024 * 1024
