"""JSON-RPC 2.0 on --http-port, as the reference implementation serves it: `predict.<model>`,
batch arrays, server-sent events, the standard error codes; called with plain HTTP and curl."""

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest

from blazerpc import BlazeApp, Context, TensorInput, TensorOutput, ValidationError
from blazerpc.server.middleware import Middleware, ResponseEvent, TokenAuthMiddleware

from .protocol_servers import assert_documented_output, examples, http, run_example
from .support import running

WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3)
ROW = np.array([[1, 2, 3, 4]], np.float32)


@dataclass
class Point:
    x: float
    y: float


@dataclass
class Span:
    start: Point
    end: Point
    label: str = "span"


def rpc_app(**settings: Any) -> BlazeApp:
    app = BlazeApp(**settings)
    app.state.closed = asyncio.Event()

    @app.model("project")
    def project(
        features: TensorInput[np.float32, "batch", 4],
    ) -> TensorOutput[np.float32, "batch", 3]:
        return features @ WEIGHTS

    @app.model("echo")
    async def echo(text: str, times: int = 1) -> str:
        return text.upper() * times

    @app.model("everything")
    async def everything(
        data: bytes, ratio: float, flag: bool, tags: list[str], counts: dict[str, int], span: Span
    ) -> Span:
        assert isinstance(span.start, Point)
        return Span(
            span.end, span.start, f"{data!r} {ratio} {flag} {tags} {sorted(counts.items())}"
        )

    @app.model("maybe")
    async def maybe(give: bool) -> str | None:
        return "here" if give else None

    @app.model("refuses")
    def refuses(n: int) -> int:
        raise ValidationError(f"{n} is odd")

    @app.model("fails")
    def fails(n: int) -> int:
        raise ValueError(f"boom {n}")

    @app.model("lingers", streaming=True)
    async def lingers(word: str) -> AsyncIterator[str]:
        yield word
        await asyncio.sleep(0.05)  # done with chunks, not yet with the stream

    @app.model("half")
    async def half(x: float) -> float:
        return x / 2

    @app.model("tokens", streaming=True)
    async def tokens(prompt: str) -> AsyncIterator[str]:
        for word in prompt.split():
            yield word

    @app.model("breaks", streaming=True)
    async def breaks(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise RuntimeError("ran dry")

    @app.model("forever", streaming=True)
    async def forever(step: float) -> AsyncIterator[int]:
        i = 0
        try:
            while True:
                yield i
                i += 1
                await asyncio.sleep(step)
        finally:
            app.state.closed.set()

    return app


def call(method: str, params: Any = None, id: Any = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        body["params"] = params
    return body


def tensor_json(array: np.ndarray, dtype: str = "float") -> dict[str, Any]:
    return {
        "shape": list(array.shape),
        "dtype": dtype,
        "data": base64.b64encode(array.tobytes()).decode(),
    }


async def rpc(server: Any, body: Any) -> Any:
    reply = await http(f"http://127.0.0.1:{server.http_port}/jsonrpc", body)
    assert reply.status == 200, reply.body
    return reply.json()


def events(body: bytes) -> list[tuple[str, Any]]:
    """Server-sent events as (event name, decoded data); unnamed events are 'message'."""
    out = []
    for block in body.decode().split("\n\n"):
        if not block:
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((fields.get("event", "message"), json.loads(fields["data"])))
    return out


async def sse(server: Any, model: str, body: Any) -> tuple[int, str, list[tuple[str, Any]]]:
    reply = await http(f"http://127.0.0.1:{server.http_port}/jsonrpc/stream/{model}", body)
    return reply.status, reply.headers.get("Content-Type", ""), events(reply.body)


async def test_predict_scalars_and_tensors_in_the_reference_json_forms() -> None:
    async with running(rpc_app(), http=True) as server:
        assert await rpc(server, call("predict.echo", {"text": "hi", "times": 2})) == {
            "jsonrpc": "2.0",
            "result": "HIHI",
            "id": 1,
        }
        reply = await rpc(server, call("predict.project", {"features": tensor_json(ROW)}, id="t"))
        assert reply["id"] == "t"
        assert reply["result"] == tensor_json(ROW @ WEIGHTS)
        assert (await rpc(server, call("predict.maybe", {"give": False})))["result"] is None
        assert (await rpc(server, call("predict.maybe", {"give": True})))["result"] == "here"


async def test_bytes_lists_maps_and_dataclasses_both_ways() -> None:
    params = {
        "data": base64.b64encode(b"\x00\xff").decode(),
        "ratio": 2,  # a JSON integer is a fine float
        "flag": True,
        "tags": ["a", "b"],
        "counts": {"x": 1},
        "span": {"start": {"x": 0, "y": 1}, "end": {"x": 2.5, "y": 3}},
    }
    async with running(rpc_app(), http=True) as server:
        reply = await rpc(server, call("predict.everything", params))
    assert reply["result"] == {
        "start": {"x": 2.5, "y": 3.0},
        "end": {"x": 0.0, "y": 1.0},
        "label": "b'\\x00\\xff' 2.0 True ['a', 'b'] [('x', 1)]",
    }


async def test_batches_notifications_and_their_replies() -> None:
    async with running(rpc_app(), http=True) as server:
        replies = await rpc(
            server,
            [
                call("predict.echo", {"text": "a"}, id=1),
                {"jsonrpc": "2.0", "method": "predict.echo", "params": {"text": "quiet"}},
                call("predict.nope", {}, id=2),
                call("predict.echo", {"text": "b"}, id=3),
            ],
        )
        assert [r["id"] for r in replies] == [1, 2, 3]
        assert [r.get("result") for r in replies] == ["A", None, "B"]
        assert replies[1]["error"]["code"] == -32601

        target = f"http://127.0.0.1:{server.http_port}/jsonrpc"
        notification = {"jsonrpc": "2.0", "method": "predict.echo", "params": {"text": "x"}}
        for body in (notification, [notification, notification]):
            reply = await http(target, body)
            assert (reply.status, reply.body) == (204, b"")
        empty = await rpc(server, [])
        assert empty["error"]["code"] == -32600 and empty["id"] is None


def error_of(reply: dict[str, Any]) -> tuple[int, str, str | None]:
    error = reply["error"]
    return error["code"], error["message"], (error.get("data") or {}).get("status")


CALL_ERRORS = {
    "not a call": ([1], -32600, "a call is an object", None),
    "no jsonrpc": ({"method": "predict.echo", "id": 1}, -32600, '"jsonrpc": "2.0"', None),
    "method not a string": ({"jsonrpc": "2.0", "method": 5, "id": 1}, -32600, "method", None),
    "unknown method": (call("run.echo", {}), -32601, "predict.<model>", None),
    "unknown model": (call("predict.nope", {}), -32601, "no model named 'nope'", None),
    "stream on /jsonrpc": (call("stream.tokens", {}), -32600, "/jsonrpc/stream/tokens", None),
    "predict a streaming model": (call("predict.tokens", {}), -32600, "streams", None),
    "params not an object": (call("predict.echo", ["hi"]), -32602, "params must be", None),
    "missing param": (
        call("predict.echo", {}),
        -32602,
        "missing required field 'text'",
        "INVALID_ARGUMENT",
    ),
    "unknown param": (
        call("predict.echo", {"text": "a", "loud": True}),
        -32602,
        "unknown field 'loud'",
        "INVALID_ARGUMENT",
    ),
    "wrong type": (
        call("predict.echo", {"text": 5}),
        -32602,
        "field 'text': expected a string, got an integer",
        "INVALID_ARGUMENT",
    ),
    "bool is not an int": (
        call("predict.echo", {"text": "a", "times": True}),
        -32602,
        "field 'times': expected an integer, got a boolean",
        "INVALID_ARGUMENT",
    ),
    "wrong tensor dtype": (
        call("predict.project", {"features": tensor_json(ROW.astype(np.float64), "double")}),
        -32602,
        "field 'features': expected dtype 'float', got 'double'",
        "INVALID_ARGUMENT",
    ),
    "wrong tensor dim": (
        call("predict.project", {"features": tensor_json(np.zeros((1, 3), np.float32))}),
        -32602,
        "field 'features': dimension 1 must be 4",
        "INVALID_ARGUMENT",
    ),
    "not a tensor": (
        call("predict.project", {"features": [1, 2, 3, 4]}),
        -32602,
        "field 'features': expected a tensor object",
        "INVALID_ARGUMENT",
    ),
    "bad base64": (
        call("predict.project", {"features": {"shape": [1, 4], "dtype": "float", "data": "%%"}}),
        -32602,
        "field 'features.data': not valid base64",
        "INVALID_ARGUMENT",
    ),
    "nested field": (
        call(
            "predict.everything",
            {
                "data": "",
                "ratio": 1,
                "flag": False,
                "tags": [],
                "counts": {},
                "span": {"start": {"x": 0}, "end": {"x": 0, "y": 0}},
            },
        ),
        -32602,
        "missing required field 'span.start.y'",
        "INVALID_ARGUMENT",
    ),
    "model says invalid": (
        call("predict.refuses", {"n": 3}),
        -32602,
        "3 is odd",
        "INVALID_ARGUMENT",
    ),
    "model raises": (call("predict.fails", {"n": 3}), -32603, "ValueError: boom 3", "INTERNAL"),
    "float out of range": (
        call("predict.half", {"x": 10**400}),
        -32602,
        "field 'x': 1000000000",
        "INVALID_ARGUMENT",
    ),
    "int past 64 bits": (
        call("predict.echo", {"text": "a", "times": 2**64}),
        -32602,
        "field 'times': 18446744073709551616 is out of range for a 64-bit integer",
        "INVALID_ARGUMENT",
    ),
}


@pytest.mark.parametrize("case", CALL_ERRORS)
async def test_errors_carry_the_standard_codes(case: str) -> None:
    body, code, fragment, status = CALL_ERRORS[case]
    async with running(rpc_app(), http=True) as server:
        (reply,) = await rpc(server, [body])  # in a batch, so even malformed calls get an id slot
        got_code, message, got_status = error_of(reply)
        assert (got_code, got_status) == (code, status), message
        assert fragment in message
        assert reply["id"] == (body.get("id") if isinstance(body, dict) else None)


async def test_parse_error() -> None:
    async with running(rpc_app(), http=True) as server:
        reply = await http(f"http://127.0.0.1:{server.http_port}/jsonrpc", "{oops")
        assert reply.status == 200
        body = reply.json()
        assert body["error"]["code"] == -32700 and body["id"] is None  # type: ignore[index]


async def test_limits_on_body_size_batch_length_and_nesting() -> None:
    app = rpc_app()
    app.limits = replace(app.limits, max_json_bytes=4096, max_jsonrpc_batch=3)
    endpoint = "/jsonrpc"
    async with running(app, http=True) as server:
        address = f"http://127.0.0.1:{server.http_port}"
        big = await http(address + endpoint, call("predict.echo", {"text": "x" * 5000}))
        assert big.status == 413
        assert "over the limit of 4096 bytes" in big.json()["error"]["message"]  # type: ignore[index]

        batch = await rpc(server, [call("predict.echo", {"text": "a"}, id=i) for i in range(4)])
        assert batch["error"]["code"] == -32600  # type: ignore[index]
        assert "batch of 4 calls is over the limit of 3" in batch["error"]["message"]  # type: ignore[index]

        deep = await http(address + endpoint, "[" * 4000)
        assert deep.status == 200 and deep.json()["error"]["code"] == -32700  # type: ignore[index]
        assert "nested too deeply" in deep.json()["error"]["message"]  # type: ignore[index]

        replies = await rpc(server, [call("predict.echo", {"text": "a"}, id=i) for i in range(3)])
        assert [r["result"] for r in replies] == ["A"] * 3


async def test_non_finite_floats_travel_as_strings_in_valid_json() -> None:
    async with running(rpc_app(), http=True) as server:
        reply = await http(
            f"http://127.0.0.1:{server.http_port}/jsonrpc",
            [call("predict.half", {"x": "Infinity"}, id=1), call("predict.half", {"x": "NaN"}, 2)],
        )

    def strict(token: str) -> None:
        raise AssertionError(f"bare {token} is not JSON")

    results = [r["result"] for r in json.loads(reply.body, parse_constant=strict)]
    assert results == ["Infinity", "NaN"]


async def test_a_client_that_leaves_after_the_last_chunk_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client has everything it wanted and closes; the server's last writes find the
    connection gone, which is no error worth a traceback."""
    async with running(rpc_app(), http=True) as server:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
            body = json.dumps({"params": {"word": "last"}}).encode()
            writer.write(
                b"POST /jsonrpc/stream/lingers HTTP/1.1\r\nHost: x\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            await reader.readuntil(b'data: "last"')
            writer.transport.abort()  # a reset, not a polite close
        await asyncio.sleep(0.2)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_server_sent_events_for_a_streaming_model() -> None:
    async with running(rpc_app(), http=True) as server:
        status, content_type, got = await sse(server, "tokens", {"params": {"prompt": "a b c"}})
        assert (status, content_type) == (200, "text/event-stream")
        assert got == [("message", "a"), ("message", "b"), ("message", "c"), ("done", {})]


SSE_ERRORS = {
    "model fails midway": ("breaks", {"params": {"n": 2}}, -32603, "RuntimeError: ran dry"),
    "bad params": ("tokens", {"params": {"prompt": 1}}, -32602, "field 'prompt'"),
    "unknown model": ("nope", {"params": {}}, -32601, "no model named 'nope'"),
    "unary model": ("echo", {"params": {"text": "a"}}, -32600, "predict.echo"),
}


@pytest.mark.parametrize("case", SSE_ERRORS)
async def test_server_sent_events_report_errors_then_done(case: str) -> None:
    model, body, code, fragment = SSE_ERRORS[case]
    async with running(rpc_app(), http=True) as server:
        status, _, got = await sse(server, model, body)
    assert status == 200
    chunks = [("message", 0), ("message", 1)] if model == "breaks" else []
    assert got[:-2] == chunks and got[-1] == ("done", {})
    name, error = got[-2]
    assert name == "error" and error["code"] == code and fragment in error["message"]


async def test_server_sent_events_with_a_body_that_is_not_json() -> None:
    async with running(rpc_app(), http=True) as server:
        reply = await http(f"http://127.0.0.1:{server.http_port}/jsonrpc/stream/tokens", "{")
    assert reply.status == 400 and reply.json()["error"]["code"] == -32700  # type: ignore[index]


async def test_a_client_that_leaves_an_event_stream_stops_the_model() -> None:
    app = rpc_app()
    async with running(app, http=True) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        body = json.dumps({"params": {"step": 0.01}}).encode()
        writer.write(
            b"POST /jsonrpc/stream/forever HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        assert b"data: 3" in await reader.readuntil(b"data: 3")
        writer.close()
        await asyncio.wait_for(app.state.closed.wait(), 5)


async def test_calls_of_a_batch_share_model_batches() -> None:
    app = BlazeApp(batch_timeout_ms=50)

    @app.model("slow")
    async def slow(x: TensorInput[np.float32, "batch", 4]) -> TensorOutput[np.float32, "batch"]:
        await asyncio.sleep(0.02)
        return x.sum(axis=1)

    calls = [
        call("predict.slow", {"x": tensor_json(np.full((1, 4), i, np.float32))}, id=i)
        for i in range(12)
    ]
    async with running(app, http=True) as server:
        replies = await rpc(server, calls)
        stats = server.stats()["slow"]
    sums = [
        np.frombuffer(base64.b64decode(r["result"]["data"]), np.float32).tolist() for r in replies
    ]
    assert sums == [[4.0 * i] for i in range(12)]
    assert stats.requests == 12 and stats.batches < 12 and max(stats.batch_sizes) > 1


async def test_middleware_and_context_apply_to_json_rpc_calls() -> None:
    app = BlazeApp(middleware=[TokenAuthMiddleware(tokens=["s3cret"])])

    @app.model("whoami")
    def whoami(ctx: Context) -> str:
        return f"{ctx.method} {ctx.metadata['x-user']}"

    async with running(app, http=True) as server:
        target = f"http://127.0.0.1:{server.http_port}/jsonrpc"
        refused = (await http(target, call("predict.whoami", {}))).json()
        assert error_of(refused)[0::2] == (-32603, "UNAUTHENTICATED")  # type: ignore[arg-type]
        headers = {"Authorization": "Bearer s3cret", "X-User": "ann"}
        admitted = (await http(target, call("predict.whoami", {}), headers)).json()
        assert admitted["result"] == "predict.whoami ann"  # type: ignore[index]


async def test_middleware_sees_refused_calls_with_their_grpc_status_not_internal() -> None:
    seen: list[tuple[str, str]] = []

    class Recorder(Middleware):
        async def on_response(self, event: ResponseEvent) -> None:
            seen.append((event.method_name, event.status.name))

    app = BlazeApp(middleware=[Recorder()])

    @app.model("echo")
    def echo(text: str) -> str:
        return text

    async with running(app, http=True) as server:
        target = f"http://127.0.0.1:{server.http_port}/jsonrpc"
        for method in ("predict.nobody", "nonsense", "stream.echo"):
            reply = (await http(target, call(method, {}))).json()
            assert "error" in reply
    assert [status for _, status in seen] == ["NOT_FOUND", "NOT_FOUND", "INVALID_ARGUMENT"]


@pytest.mark.parametrize("example", examples("jsonrpc-"), ids=lambda e: e.name)
async def test_docs_examples(example: Any) -> None:
    from .apps.protocols_app import app

    async with running(app, http=True) as server:
        assert_documented_output(example, await run_example(example, server))
