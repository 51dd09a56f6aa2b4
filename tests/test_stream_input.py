"""Client-streaming and bidirectional models (issue 15), clause by clause, on real servers.

Calls go over real gRPC: raw grpc.aio calls with the schema's own message classes, BlazeClient
and SyncBlazeClient, grpcurl, and grpcio stubs that protoc generated from `blaze proto`. The
models record what reached them (counters, events), so arrival, backpressure and cancellation
are checked by what the model saw, not by sleeps alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton
from tritonclient.grpc import InferenceServerException, InferInput

from blazerpc import (
    BlazeApp,
    BlazeClient,
    ConfigurationError,
    Context,
    InferenceError,
    SyncBlazeClient,
    TensorInput,
    TensorOutput,
    ValidationError,
)
from blazerpc.cli import banner
from blazerpc.server.middleware import Middleware, RequestEvent, ResponseEvent

from .processes import run_tool
from .support import client_for, reflected_methods, running
from .test_cli import blaze
from .test_streaming import grpcurl, json_objects, settled

SERVICE = "blazerpc.InferenceService"
LATE_S = 0.5  # wall-clock bound that tells "stopped" from "kept going" on a loaded machine
STOP_ITEMS = 100  # items an endless model (one per ms) may make after the client has left


@dataclasses.dataclass
class Chunk:
    seq: int
    samples: TensorInput[np.float32, "n"]


@dataclasses.dataclass
class Partial:
    seq: int
    energy: float


class Seen:
    """What a model saw, recorded from inside it (possibly in a worker thread)."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.arrived = asyncio.Event()
        self.interrupt: str | None = None
        self.finally_ran = threading.Event()
        self.finally_at = 0.0
        self.thread = ""
        self.release = threading.Event()

    def got(self, item: Any) -> None:
        self.items.append(item)

    def interrupted(self, exc: BaseException) -> None:
        self.interrupt = type(exc).__name__

    def ended(self) -> None:
        self.finally_at = time.monotonic()
        self.finally_ran.set()


def stream_app(seen: Seen) -> BlazeApp:
    app = BlazeApp()

    @app.model("total")
    async def total(numbers: AsyncIterator[int]) -> int:
        result = 0
        try:
            async for n in numbers:
                seen.got(n)
                result += n
        except BaseException as exc:
            seen.interrupted(exc)
            raise
        finally:
            seen.ended()
        return result

    @app.model("sync-total")
    def sync_total(numbers: Iterator[int]) -> int:
        seen.thread = threading.current_thread().name
        result = 0
        try:
            for n in numbers:
                seen.got(n)
                result += n
        except BaseException as exc:
            seen.interrupted(exc)
            raise
        finally:
            seen.ended()
        return result

    @app.model("upper", streaming=True)
    async def upper(words: AsyncIterator[str]) -> AsyncIterator[str]:
        try:
            async for word in words:
                seen.got(word)
                yield word.upper()
            yield "<end of input>"
        except BaseException as exc:
            seen.interrupted(exc)
            raise
        finally:
            seen.ended()

    @app.model("sync-upper", streaming=True)
    def sync_upper(words: Iterator[str]) -> Iterator[str]:
        seen.thread = threading.current_thread().name
        try:
            for word in words:
                seen.got(word)
                yield word.upper()
            yield "<end of input>"
        except BaseException as exc:
            seen.interrupted(exc)
            raise
        finally:
            seen.ended()

    @app.model("energy", streaming=True)
    async def energy(chunks: AsyncIterator[Chunk]) -> AsyncIterator[Partial]:
        async for chunk in chunks:
            yield Partial(chunk.seq, float(np.sum(chunk.samples**2)))

    @app.model("concat")
    def concat(
        frames: Iterator[TensorInput[np.float32, "n"]],
    ) -> TensorOutput[np.float32, "n"]:
        return np.concatenate(list(frames) or [np.zeros(0, np.float32)])

    @app.model("ping")
    async def ping() -> bool:
        return True

    return app


def rpc(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))


def stream_unary(channel: grpc.aio.Channel, app: BlazeApp, model: str) -> Any:
    r = rpc(model)
    return channel.stream_unary(
        f"/{SERVICE}/Predict{r}",
        request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        response_deserializer=app.schema.response_class(r).FromString,
    )


def stream_stream(channel: grpc.aio.Channel, app: BlazeApp, model: str) -> Any:
    r = rpc(model)
    return channel.stream_stream(
        f"/{SERVICE}/Predict{r}",
        request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        response_deserializer=app.schema.response_class(r).FromString,
    )


def request(app: BlazeApp, model: str, **fields: Any) -> Any:
    return app.schema.request_class(rpc(model))(**fields)


class Served:
    """A running server for a `stream_app` and a raw channel to it."""

    def __init__(self, options: list[tuple[str, Any]] | None = None) -> None:
        self.seen = Seen()
        self.app = stream_app(self.seen)
        self._options = options

    async def __aenter__(self) -> Served:
        self._running = running(self.app)
        self.server = await self._running.__aenter__()
        self.channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{self.server.port}", options=self._options
        )
        # Connect before any clock starts: the first call on a channel can be slow under load.
        ping = self.channel.unary_unary(f"/{SERVICE}/PredictPing")
        await ping(b"", timeout=10)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.channel.close()
        await self._running.__aexit__(*exc)


# --- the schema: .proto, reflection, grpcurl, protoc stubs ---------------------------------------


def test_proto_declares_client_and_bidirectional_streams() -> None:
    proto = stream_app(Seen()).proto()
    assert "rpc PredictTotal(stream TotalRequest) returns (TotalResponse);" in proto
    assert "rpc PredictUpper(stream UpperRequest) returns (stream UpperResponse);" in proto
    assert "rpc PredictPing(PingRequest) returns (PingResponse);" in proto
    # Each request message is one item, in a field named after the parameter.
    assert "message TotalRequest {\n  int64 numbers = 1;\n}" in proto
    assert "message EnergyRequest {\n  Chunk chunks = 1;\n}" in proto
    assert "message ConcatRequest {\n  TensorProto frames = 1;\n}" in proto


async def test_reflection_and_grpcurl_describe_and_call_the_streams() -> None:
    tool = grpcurl()
    async with Served() as served:
        methods = await reflected_methods(served.channel, SERVICE)
        assert methods["PredictTotal"].client_streaming
        assert not methods["PredictTotal"].server_streaming
        assert methods["PredictUpper"].client_streaming and methods["PredictUpper"].server_streaming

        address = f"127.0.0.1:{served.server.port}"
        rc, out, err = await run_tool(tool, "-plaintext", address, "describe", SERVICE)
        assert rc == 0, err
        assert "rpc PredictTotal ( stream .blazerpc.TotalRequest ) returns ( .blazerpc." in out
        assert (
            "rpc PredictUpper ( stream .blazerpc.UpperRequest ) returns "
            "( stream .blazerpc.UpperResponse )" in out
        )
        # grpcurl sends every JSON object in -d as one message of the stream.
        rc, out, err = await run_tool(
            tool, "-plaintext", "-d", '{"numbers": 1} {"numbers": 2} {"numbers": 39}',
            address, f"{SERVICE}/PredictTotal",
        )  # fmt: skip
        assert rc == 0, err
        assert json_objects(out) == [{"result": "42"}]
        rc, out, err = await run_tool(
            tool, "-plaintext", "-d", '{"words": "a"} {"words": "b"}',
            address, f"{SERVICE}/PredictUpper",
        )  # fmt: skip
        assert rc == 0, err
        assert json_objects(out) == [{"result": "A"}, {"result": "B"}, {"result": "<end of input>"}]


STREAM_APP_MODULE = """
from collections.abc import AsyncIterator, Iterator
from blazerpc import BlazeApp

app = BlazeApp()

@app.model("total")
async def total(numbers: AsyncIterator[int]) -> int:
    return sum([n async for n in numbers])

@app.model("upper", streaming=True)
def upper(words: Iterator[str]) -> Iterator[str]:
    for word in words:
        if word == "boom":
            raise RuntimeError("no booms")
        yield word.upper()
"""

STUB_CLIENT = """
import json, sys
import grpc
sys.path.insert(0, sys.argv[1])
import blaze_service_pb2 as pb
import blaze_service_pb2_grpc as pb_grpc

with grpc.insecure_channel(sys.argv[2]) as channel:
    stub = pb_grpc.InferenceServiceStub(channel)
    total = stub.PredictTotal(iter([pb.TotalRequest(numbers=n) for n in range(10)]), timeout=10)
    words = [m.result for m in stub.PredictUpper(
        iter([pb.UpperRequest(words=w) for w in ["x", "y"]]), timeout=10)]
    before = []
    try:
        for m in stub.PredictUpper(
                iter([pb.UpperRequest(words=w) for w in ["a", "boom", "c"]]), timeout=10):
            before.append(m.result)
    except grpc.RpcError as exc:
        status = [exc.code().name, exc.details()]
print(json.dumps({"total": total.result, "words": words, "before": before, "status": status}))
"""


async def test_stock_grpcio_stubs_from_blaze_proto_call_the_streams(tmp_path: Path) -> None:
    module = f"stream_input_app_{time.monotonic_ns()}"
    (tmp_path / f"{module}.py").write_text(STREAM_APP_MODULE)
    rc, _, err = await run_tool(
        *blaze("proto", f"{module}:app", "--output-dir", str(tmp_path), "--app-dir", str(tmp_path))
    )
    assert rc == 0, err
    rc, _, err = await run_tool(
        sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}", f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}", str(tmp_path / "blaze_service.proto"),
    )  # fmt: skip
    assert rc == 0, err
    stubs = (tmp_path / "blaze_service_pb2_grpc.py").read_text()
    assert "stream_unary" in stubs and "stream_stream" in stubs

    spec = importlib.util.spec_from_file_location(module, tmp_path / f"{module}.py")
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    async with running(loaded.app) as server:
        rc, out, err = await run_tool(
            sys.executable, "-c", STUB_CLIENT, str(tmp_path), f"127.0.0.1:{server.port}"
        )
    assert rc == 0, err
    assert json.loads(out) == {
        "total": 45,
        "words": ["X", "Y"],
        "before": ["A"],
        "status": ["INTERNAL", "RuntimeError: no booms"],
    }


# --- wrong combinations are ConfigurationErrors that say what to write ---------------------------


def register(func: Any, **options: Any) -> None:
    BlazeApp().model("m", **options)(func)


def test_two_streamed_parameters() -> None:
    async def model(a: AsyncIterator[int], b: AsyncIterator[int]) -> int:
        return 0

    with pytest.raises(ConfigurationError, match=r"only one parameter can be a stream.*dataclass"):
        register(model)


def test_another_request_field_next_to_the_stream() -> None:
    async def model(chunks: AsyncIterator[bytes], language: str = "en") -> str:
        return ""

    with pytest.raises(ConfigurationError, match=r"takes no other request fields.*'language'"):
        register(model)


def test_async_model_with_a_sync_iterator() -> None:
    async def model(chunks: Iterator[bytes]) -> str:
        return ""

    with pytest.raises(ConfigurationError, match=r"'chunks: AsyncIterator\[\.\.\.\]'"):
        register(model)


def test_sync_model_with_an_async_iterator() -> None:
    def model(chunks: AsyncIterator[bytes]) -> str:
        return ""

    with pytest.raises(ConfigurationError, match=r"'chunks: Iterator\[\.\.\.\]'.*async def"):
        register(model)


def test_a_stream_of_unknown_items() -> None:
    async def model(chunks: AsyncIterator) -> str:  # type: ignore[type-arg]
        return ""

    with pytest.raises(ConfigurationError, match=r"say what one item is"):
        register(model)


def test_a_stream_of_an_unsupported_type() -> None:
    async def model(chunks: AsyncIterator[object]) -> str:
        return ""

    with pytest.raises(ConfigurationError, match=r"items of 'chunks'.*cannot map"):
        register(model)


def test_batched_stream_input() -> None:
    async def model(chunks: AsyncIterator[int]) -> int:
        return 0

    with pytest.raises(ConfigurationError, match=r"never batched; drop batched=True"):
        register(model, batched=True)


def test_bidirectional_needs_a_generator_and_a_generator_needs_streaming() -> None:
    async def not_a_generator(words: AsyncIterator[str]) -> str:
        return ""

    async def a_generator(words: AsyncIterator[str]) -> AsyncIterator[str]:
        yield ""

    with pytest.raises(ConfigurationError, match=r"streaming=True needs a generator"):
        register(not_a_generator, streaming=True)
    with pytest.raises(ConfigurationError, match=r"streaming=True\)"):
        register(a_generator)


def test_never_batched_and_the_banner_says_so() -> None:
    app = BlazeApp(enable_batching=True)

    @app.model("frames")
    async def frames(
        frames: AsyncIterator[TensorInput[np.float32, "batch", 4]],
    ) -> TensorOutput[np.float32, "batch", 4]:
        return np.zeros((1, 4), np.float32)

    @app.model("live", streaming=True)
    async def live(
        frames: AsyncIterator[TensorInput[np.float32, "batch", 4]],
    ) -> AsyncIterator[TensorOutput[np.float32, "batch", 4]]:
        async for frame in frames:
            yield frame

    @app.model("sync-frames")
    def sync_frames(
        frames: Iterator[TensorInput[np.float32, "batch", 4]],
    ) -> TensorOutput[np.float32, "batch", 4]:
        return np.zeros((1, 4), np.float32)

    assert all(app.batch_settings(m) is None for m in app.registry)
    lines = {line.split()[0]: line for line in banner(app, "h", 1).splitlines()}
    assert "client streaming, never batched" in lines["frames"]
    assert "bidirectional streaming, never batched" in lines["live"]
    assert lines["sync-frames"].endswith("client streaming, never batched, in threads")


# --- semantics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["total", "sync-total"])
async def test_each_item_reaches_the_model_before_the_next_is_sent(model: str) -> None:
    """The client sends item k+1 only once the model has seen item k: if the server buffered
    the stream to its end, this would hang (and time out) at the first item."""
    async with Served() as served:
        seen = served.seen
        call = stream_unary(served.channel, served.app, model)(timeout=10)
        for k in range(5):
            await call.write(request(served.app, model, numbers=k))
            deadline = time.monotonic() + 5
            while len(seen.items) <= k and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            assert seen.items == list(range(k + 1))
        await call.done_writing()
        assert (await call).result == 10


@pytest.mark.parametrize("model", ["upper", "sync-upper"])
async def test_bidirectional_answers_each_item_as_it_comes_and_half_close_ends_the_input(
    model: str,
) -> None:
    async with Served() as served:
        call = stream_stream(served.channel, served.app, model)(timeout=10)
        for word in ["alpha", "beta", "gamma"]:
            await call.write(request(served.app, model, words=word))
            assert (await call.read()).result == word.upper()  # before the next is sent
        await call.done_writing()
        # The model's loop ended with the half-close and it went on after it.
        assert (await call.read()).result == "<end of input>"
        assert await call.read() is grpc.aio.EOF
        assert await call.code() is grpc.StatusCode.OK
        if model.startswith("sync"):
            assert served.seen.thread.startswith("blazerpc-model")


@pytest.mark.parametrize("model", ["total", "sync-total"])
async def test_half_close_without_items_ends_the_input_at_once(model: str) -> None:
    async with Served() as served:
        call = stream_unary(served.channel, served.app, model)(timeout=10)
        await call.done_writing()
        assert (await call).result == 0
        assert served.seen.interrupt is None


def slow_consumer_app(consumed: list[int], go: threading.Event) -> BlazeApp:
    app = BlazeApp()

    @app.model("slow")
    async def slow(chunks: AsyncIterator[bytes]) -> int:
        async for chunk in chunks:
            consumed.append(len(chunk))
            while not go.is_set():
                await asyncio.sleep(0.01)
        return len(consumed)

    @app.model("sync-slow")
    def sync_slow(chunks: Iterator[bytes]) -> int:
        for chunk in chunks:
            consumed.append(len(chunk))
            go.wait()
        return len(consumed)

    return app


# How far a fast sender gets ahead of a model that stalls is what the server's HTTP/2 receive
# window admits plus what each side buffers: bounded, and far below the 4000 items (250 MiB)
# the sender would push if nothing held it back.
SENDER_BOUND = 400


@pytest.mark.parametrize("model", ["slow", "sync-slow"])
async def test_a_slow_model_holds_a_fast_sender_back(model: str) -> None:
    consumed: list[int] = []
    go = threading.Event()
    app = slow_consumer_app(consumed, go)
    sent = 0
    size = 64 * 1024

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(4000):
            sent += 1
            yield b"x" * size

    async with running(app) as server, BlazeClient("127.0.0.1", server.port) as client:
        result = asyncio.ensure_future(client.predict(model, chunks=chunks()))
        while not consumed:
            await asyncio.sleep(0.01)
        stalled = await settled(lambda: sent)
        assert len(consumed) == 1  # the model holds its first item
        assert stalled < SENDER_BOUND, f"{stalled} items = {stalled * 64 // 1024} MiB ran ahead"
        await asyncio.sleep(0.3)
        assert sent == stalled  # the sender waits, it does not buffer
        go.set()
        assert await asyncio.wait_for(result, 60) == 4000
        assert consumed == [size] * 4000


async def test_a_slow_reader_holds_a_bidirectional_model_back() -> None:
    produced = 0
    app = BlazeApp()

    @app.model("flood", streaming=True)
    async def flood(ticks: AsyncIterator[int]) -> AsyncIterator[bytes]:
        nonlocal produced
        async for _ in ticks:
            while True:
                produced += 1
                yield b"x" * 64 * 1024

    async with (
        running(app) as server,
        grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}", options=[("grpc.http2.bdp_probe", 0)]
        ) as channel,
    ):
        call = stream_stream(channel, app, "flood")()
        await call.write(request(app, "flood", ticks=1))
        assert len((await call.read()).result) == 64 * 1024
        stalled = await settled(lambda: produced)
        assert stalled < 20, f"{stalled} results ran ahead of a reader that stopped"
        for _ in range(stalled + 10):
            await call.read()
        assert produced > stalled
        call.cancel()


@pytest.mark.parametrize("model", ["total", "sync-total"])
async def test_cancel_raises_cancelled_error_in_the_model_and_its_finally_runs(model: str) -> None:
    async with Served() as served:
        seen = served.seen
        call = stream_unary(served.channel, served.app, model)(timeout=30)
        await call.write(request(served.app, model, numbers=1))
        while not seen.items:
            await asyncio.sleep(0.005)
        cancelled_at = time.monotonic()
        call.cancel()
        assert await asyncio.to_thread(seen.finally_ran.wait, 5)
        assert seen.interrupt == "CancelledError"
        assert seen.finally_at - cancelled_at < LATE_S


@pytest.mark.parametrize("model", ["upper", "sync-upper"])
async def test_cancel_mid_bidirectional_stream(model: str) -> None:
    async with Served() as served:
        seen = served.seen
        call = stream_stream(served.channel, served.app, model)(timeout=30)
        await call.write(request(served.app, model, words="x"))
        assert (await call.read()).result == "X"
        cancelled_at = time.monotonic()
        call.cancel()
        assert await asyncio.to_thread(seen.finally_ran.wait, 5)
        assert seen.interrupt == "CancelledError"
        assert seen.finally_at - cancelled_at < LATE_S


async def test_an_endless_bidirectional_model_stops_producing_when_the_client_leaves() -> None:
    produced = 0
    app = BlazeApp()

    @app.model("ticker", streaming=True)
    async def ticker(start: AsyncIterator[int]) -> AsyncIterator[int]:
        nonlocal produced
        async for first in start:
            while True:
                produced += 1
                yield first + produced
                await asyncio.sleep(0.001)

    async with running(app) as server, BlazeClient("127.0.0.1", server.port) as client:
        async for value in client.stream("ticker", start=[100]):
            if value > 150:
                break
        at_break = produced
        await asyncio.sleep(LATE_S)
        assert produced - at_break < STOP_ITEMS


@pytest.mark.parametrize("model", ["total", "sync-total"])
async def test_a_deadline_cancels_a_model_waiting_for_input(model: str) -> None:
    async with Served() as served:
        call = stream_unary(served.channel, served.app, model)(timeout=0.3)
        await call.write(request(served.app, model, numbers=1))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert await asyncio.to_thread(served.seen.finally_ran.wait, 5)
        assert served.seen.interrupt == "CancelledError"


@pytest.mark.parametrize("model", ["concat", "energy"])
async def test_a_bad_item_is_invalid_argument_naming_its_index_and_field(model: str) -> None:
    async with Served() as served:
        good = np.ones(3, np.float32)
        bad = np.ones(3, np.float64)
        if model == "concat":
            items = [{"shape": [3], "dtype": "float", "data": good.tobytes()}] * 2
            items.append({"shape": [3], "dtype": "double", "data": bad.tobytes()})
            messages = [request(served.app, model, frames=t) for t in items]
            where = "item 2 of 'frames': field 'frames': expected dtype 'float', got 'double'"
        else:
            tensors = [good, good, good, good[:2]]
            messages = [
                request(
                    served.app, model,
                    chunks={"seq": i, "samples": {"shape": [3], "dtype": "float",
                                                  "data": t.tobytes()}},
                )
                for i, t in enumerate(tensors)
            ]  # fmt: skip
            where = "item 3 of 'chunks': field 'chunks.samples': data holds 8 bytes, expected 12"
        call = (stream_unary if model == "concat" else stream_stream)(
            served.channel, served.app, model
        )(iter(messages), timeout=10)
        results: list[int] = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            if model == "concat":
                await call
            else:
                async for response in call:
                    results.append(response.result.seq)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert where in (info.value.details() or "")
        if model == "energy":
            assert results == [0, 1, 2]  # the good items were answered first


async def test_undecodable_bytes_are_invalid_argument_naming_the_item() -> None:
    async with Served() as served:
        good = request(served.app, "total", numbers=5).SerializeToString()
        call = stream_unary(served.channel, served.app, "total")(
            iter([good, b"\xff\xff\xff"]), timeout=10
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "item 1 of 'numbers': could not be decoded as blazerpc.TotalRequest" in (
            info.value.details() or ""
        )


async def test_a_bad_item_fails_the_call_even_if_the_model_swallows_the_error() -> None:
    app = BlazeApp()

    @app.model("careless")
    async def careless(numbers: AsyncIterator[int]) -> int:
        try:
            async for _ in numbers:
                pass
        except Exception:
            return -1
        return 0

    async with (
        running(app) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        call = stream_unary(channel, app, "careless")(iter([b"\x08\x01", b"\xff"]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "item 1 of 'numbers'" in (info.value.details() or "")


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_model_raising_mid_stream_ends_with_internal_after_its_results(kind: str) -> None:
    app = BlazeApp()
    if kind == "async":

        @app.model("picky", streaming=True)
        async def picky(words: AsyncIterator[str]) -> AsyncIterator[str]:
            async for word in words:
                if word == "boom":
                    raise ValueError("no booms")
                yield word

    else:

        @app.model("picky", streaming=True)
        def picky_sync(words: Iterator[str]) -> Iterator[str]:
            for word in words:
                if word == "boom":
                    raise ValueError("no booms")
                yield word

    async with client_for(app) as client:
        got: list[str] = []
        with pytest.raises(InferenceError) as info:
            async for word in client.stream("picky", words=["a", "b", "boom", "c"]):
                got.append(word)
        assert got == ["a", "b"]
        assert info.value.code is grpc.StatusCode.INTERNAL
        assert str(info.value) == "ValueError: no booms"


async def test_a_client_streaming_model_raising_is_internal() -> None:
    app = BlazeApp()

    @app.model("average")
    async def average(numbers: AsyncIterator[float]) -> float:
        values = [n async for n in numbers]
        return sum(values) / len(values)

    async with client_for(app) as client:
        assert await client.predict("average", numbers=[1.0, 2.0, 6.0]) == 3.0
        with pytest.raises(InferenceError, match="ZeroDivisionError"):
            await client.predict("average", numbers=[])


async def test_sync_models_block_a_thread_not_the_loop() -> None:
    """A plain def model that takes a second per item: unary calls to another model on the same
    server keep answering at once meanwhile."""
    app = BlazeApp()
    working = threading.Event()

    @app.model("plodding")
    def plodding(numbers: Iterator[int]) -> int:
        total = 0
        for n in numbers:
            working.set()
            time.sleep(1.0)
            total += n
        return total

    @app.model("ping")
    async def ping() -> bool:
        return True

    async with client_for(app) as client:
        assert await client.predict("ping")
        slow = asyncio.ensure_future(client.predict("plodding", numbers=[1, 2]))
        await asyncio.to_thread(working.wait, 5)
        started = time.monotonic()
        for _ in range(5):
            assert await client.predict("ping")
        assert time.monotonic() - started < LATE_S
        assert not slow.done()
        assert await slow == 3


class Recorder(Middleware):
    def __init__(self) -> None:
        self.requests: list[RequestEvent] = []
        self.responses: list[ResponseEvent] = []

    async def on_request(self, event: RequestEvent) -> None:
        self.requests.append(event)

    async def on_response(self, event: ResponseEvent) -> None:
        self.responses.append(event)


async def test_a_cheap_sync_model_reading_a_stream_stays_in_a_thread() -> None:
    # A cheap plain `def` model is moved onto the loop after enough fast calls; one reading a
    # stream must never be: its every item is fetched by the loop it would be blocking.
    seen = Seen()
    app = stream_app(seen)
    app.inline_limit_us = 1e6  # every call counts as cheap
    async with running(app) as server, BlazeClient("127.0.0.1", server.port) as client:
        for _ in range(2 * 32):
            assert await asyncio.wait_for(client.predict("sync-total", numbers=[1]), 10) == 1
            assert seen.thread.startswith("blazerpc-model")
            assert server.modes()["sync-total"] == "threads"


async def test_middleware_sees_one_request_event_per_call() -> None:
    recorder = Recorder()
    seen = Seen()
    app = stream_app(seen)
    app.middleware.append(recorder)
    async with (
        running(app) as server,
        BlazeClient("127.0.0.1", server.port, metadata={"x-user": "ada"}) as client,
    ):
        assert await client.predict("total", numbers=range(20)) == 190
        words = [w async for w in client.stream("upper", words=["a"] * 20)]
        assert len(words) == 21
    methods = [e.method_name for e in recorder.requests]
    assert methods.count(f"/{SERVICE}/PredictTotal") == 1
    assert methods.count(f"/{SERVICE}/PredictUpper") == 1
    assert all(e.metadata.get("x-user") == "ada" for e in recorder.requests)
    statuses = {e.method_name: e.status for e in recorder.responses}
    assert statuses[f"/{SERVICE}/PredictUpper"] is grpc.StatusCode.OK


async def test_a_context_parameter_next_to_the_stream_carries_the_metadata() -> None:
    app = BlazeApp()

    @app.model("tagged")
    async def tagged(words: AsyncIterator[str], context: Context) -> str:
        return context.metadata["x-tag"] + ":" + "".join([w async for w in words])

    async with (
        running(app) as server,
        BlazeClient("127.0.0.1", server.port, metadata={"x-tag": "t"}) as client,
    ):
        assert await client.predict("tagged", words=["a", "b"]) == "t:ab"


# --- the clients -------------------------------------------------------------------------------


@pytest.mark.parametrize("registry", [False, True])
async def test_blaze_client_sends_async_and_plain_iterables(registry: bool) -> None:
    app = stream_app(Seen())

    async def paced() -> AsyncIterator[Chunk]:
        for seq in range(3):
            await asyncio.sleep(0.01)
            yield Chunk(seq, np.full(4, seq, np.float32))

    async with client_for(app, registry=registry) as client:
        partials = [p async for p in client.stream("energy", chunks=paced())]
        assert [(p.seq, p.energy) for p in partials] == [(0, 0.0), (1, 4.0), (2, 16.0)]
        assert type(partials[0]).__name__ == "Partial"
        frames = [np.arange(2, dtype=np.float32), np.arange(3, dtype=np.float32)]
        np.testing.assert_array_equal(
            await client.predict("concat", frames=frames), [0, 1, 0, 1, 2]
        )
        assert await client.predict("sync-total", numbers=iter(range(101))) == 5050


async def test_blaze_client_raises_a_bad_item_by_index_and_cancels_the_call() -> None:
    seen = Seen()
    app = stream_app(seen)

    async def numbers() -> AsyncIterator[Any]:
        yield 1
        yield 2
        while len(seen.items) < 2:  # the model is running and has read both
            await asyncio.sleep(0.005)
        yield "three"

    async with client_for(app) as client:
        with pytest.raises(ValidationError, match=r"item 2: field 'numbers': expected int64"):
            await client.predict("total", numbers=numbers())
        assert await asyncio.to_thread(seen.finally_ran.wait, 5)
        assert seen.interrupt == "CancelledError"  # the server saw a cancel, not a short stream
        with pytest.raises(ValidationError, match=r"takes a stream: pass an iterable"):
            await client.predict("total", numbers=5)
        with pytest.raises(ValidationError, match=r"takes a stream"):
            await client.predict("total", numbers=[1], extra=2)
        with pytest.raises(ValidationError, match=r"a list of one for a single item"):
            await client.stream("upper", words="hello").__anext__()


async def test_blaze_client_raises_what_the_iterable_raised() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "a"
        raise OSError("microphone unplugged")

    async with client_for(stream_app(Seen())) as client:
        with pytest.raises(OSError, match="microphone unplugged"):
            async for _ in client.stream("upper", words=failing()):
                pass


@pytest.mark.parametrize("registry", [False, True])
async def test_sync_client_sends_iterables(registry: bool) -> None:
    app = stream_app(Seen())
    async with running(app) as server:

        def calls() -> tuple[Any, ...]:
            with SyncBlazeClient(
                "127.0.0.1", server.port, registry=app.registry if registry else None
            ) as client:
                total = client.predict("total", numbers=(n for n in range(10)))
                words = list(client.stream("sync-upper", words=["x", "y"]))
                with pytest.raises(ValidationError, match=r"item 1: field 'words'"):
                    list(client.stream("upper", words=["ok", 5]))
                return total, words

        assert await asyncio.to_thread(calls) == (45, ["X", "Y", "<end of input>"])


async def test_kserve_refuses_stream_input_models() -> None:
    async with (
        running(stream_app(Seen())) as server,
        triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client,
    ):
        numbers = InferInput("numbers", [1], "INT64")
        numbers.set_data_from_numpy(np.array([1], np.int64))
        with pytest.raises(InferenceServerException) as info:
            await client.infer("total", [numbers])
        assert "StatusCode.UNIMPLEMENTED" in str(info.value.status())
        assert "takes a stream of requests" in info.value.message()


async def test_other_protocols_refuse_stream_input_models() -> None:
    app = stream_app(Seen())
    server = await app.start(host="127.0.0.1", port=0, http_port=0)
    try:
        async with aiohttp.ClientSession() as session:
            body = {"jsonrpc": "2.0", "method": "predict.total", "params": {"numbers": 1}, "id": 1}
            async with session.post(f"http://127.0.0.1:{server.http_port}/jsonrpc", json=body) as r:
                reply = await r.json()
        assert reply["error"]["data"]["status"] == "UNIMPLEMENTED"
        assert "takes a stream of requests" in reply["error"]["message"]
    finally:
        await server.stop(grace=1.0)


# --- the example -------------------------------------------------------------------------------


async def test_the_transcribe_example_hears_every_key_as_it_comes() -> None:
    from examples.transcribe.app import app
    from examples.transcribe.client import chunks, dial

    number = "5550100*#ABCD"
    audio = dial(number, seed=7)
    async with client_for(app) as client:
        assert await client.predict("transcribe", audio=chunks(audio, realtime=False)) == number
        # Live: each digit arrives while later audio is still unsent.
        sent = 0

        async def counted() -> AsyncIterator[np.ndarray]:
            nonlocal sent
            async for chunk in chunks(audio, realtime=False):
                sent += len(chunk)
                yield chunk
                await asyncio.sleep(0.002)

        heard, sent_when_heard = [], []
        async for digit in client.stream("transcribe-live", audio=counted()):
            heard.append(digit)
            sent_when_heard.append(sent)
        assert "".join(heard) == number
        assert sent_when_heard[0] < len(audio) / 4  # the first key long before the end
        assert sent_when_heard == sorted(sent_when_heard)
