"""The call pipeline on its own, through a fake transport: no server, no sockets.

The fake wire's request is a dict of arguments, its reply a string, and a failure comes back
as the `Failure` itself, so each test reads exactly what a protocol adapter would be handed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from grpc import StatusCode

from blazerpc import Context, Depends, ValidationError
from blazerpc.convert import scalar
from blazerpc.injection import injected_marker
from blazerpc.pipeline import CallerGone, Failure, ModelCall, Wire
from blazerpc.policy import CallPolicy
from blazerpc.runtime.batcher import BatchSettings
from blazerpc.runtime.executor import Executor
from blazerpc.runtime.registry import ModelRegistry
from blazerpc.runtime.runner import ModelRunner
from blazerpc.server.middleware import Middleware, RequestEvent, ResponseEvent

Request = dict[str, Any]


class FakeTransport:
    """What a protocol adapter would hold for one call: who calls, and its deadline."""

    def __init__(self, metadata: dict[str, str] | None = None) -> None:
        self.metadata = metadata or {}
        self.decoded = 0


def _decode(transport: FakeTransport) -> Callable[[Request], dict[str, Any]]:
    def decode(request: Request) -> dict[str, Any]:
        transport.decoded += 1
        if "n" not in request:
            raise ValidationError("missing required field 'n'", field="n")
        return dict(request)

    return decode


async def _reject(transport: FakeTransport, failure: Failure) -> Any:
    return failure


def wire(transport: FakeTransport) -> Wire[Request, FakeTransport, Any]:
    return Wire(
        protocol="a fake transport",
        decode=_decode(transport),
        encode=lambda request, result: f"reply {result!r}",
        caller=lambda request, t: RequestEvent("/fake/model", t.metadata, "peer-1"),
        reject=_reject,
    )


def runner_for(func: Callable[..., Any], *, streaming: bool = False) -> ModelRunner:
    entry = ModelRegistry().register(
        "model", func, streaming=streaming, is_injected=injected_marker
    )
    return ModelRunner(entry, Executor(2), None)


class Recorder(Middleware):
    def __init__(self) -> None:
        self.seen: list[tuple[str, StatusCode]] = []

    async def on_response(self, event: ResponseEvent) -> None:
        self.seen.append((event.method_name, event.status))


def open_policy(*middleware: Middleware) -> CallPolicy:
    policy = CallPolicy(middleware=list(middleware))
    policy.gate.open()
    return policy


def double(n: int) -> int:
    return 2 * n


@pytest.mark.parametrize("observed", [False, True], ids=["plain", "with middleware"])
async def test_a_call_is_decoded_run_and_encoded(observed: bool) -> None:
    transport, recorder = FakeTransport(), Recorder()
    policy = open_policy(recorder) if observed else open_policy()
    call = ModelCall(runner_for(double), policy, wire(transport))
    assert await call.unary({"n": 21}, transport) == "reply 42"
    assert recorder.seen == ([("/fake/model", StatusCode.OK)] if observed else [])


@pytest.mark.parametrize("observed", [False, True], ids=["plain", "with middleware"])
async def test_a_closed_gate_refuses_before_anything_is_decoded(observed: bool) -> None:
    transport, recorder = FakeTransport(), Recorder()
    policy = CallPolicy(middleware=[recorder] if observed else [])
    policy.gate.close("draining")
    call = ModelCall(runner_for(double), policy, wire(transport))
    assert await call.unary({"n": 1}, transport) == Failure(StatusCode.UNAVAILABLE, "draining")
    assert transport.decoded == 0
    assert recorder.seen == ([("/fake/model", StatusCode.UNAVAILABLE)] if observed else [])


async def test_bad_input_is_invalid_argument_and_middleware_sees_it() -> None:
    transport, recorder = FakeTransport(), Recorder()
    call = ModelCall(runner_for(double), open_policy(recorder), wire(transport))
    failure = await call.unary({}, transport)
    assert failure == Failure(StatusCode.INVALID_ARGUMENT, "missing required field 'n'")
    assert failure.field == "n"
    assert recorder.seen == [("/fake/model", StatusCode.INVALID_ARGUMENT)]


def total(numbers: Iterator[int]) -> int:
    return sum(numbers)


async def test_a_model_taking_a_stream_is_refused_where_the_wire_carries_none() -> None:
    transport, recorder = FakeTransport(), Recorder()
    call = ModelCall(runner_for(total), open_policy(recorder), wire(transport))
    failure = await call.unary({"numbers": iter([1, 2])}, transport)
    assert failure.code is StatusCode.UNIMPLEMENTED
    assert "takes a stream of requests" in failure.details
    assert transport.decoded == 0
    assert recorder.seen == [("/fake/model", StatusCode.UNIMPLEMENTED)]


async def test_a_model_fault_is_internal_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(n: int) -> int:
        raise KeyError("weights")

    transport = FakeTransport()
    call = ModelCall(runner_for(broken), open_policy(), wire(transport))
    assert await call.unary({"n": 1}, transport) == Failure(
        StatusCode.INTERNAL, "KeyError: 'weights'"
    )
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in logged] == ["model 'model' over a fake transport failed"]
    assert logged[0].exc_info is not None


async def test_a_failed_batch_logs_its_traceback_once_and_fails_every_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = asyncio.Event()

    async def broken(n: list[int]) -> list[int]:
        started.set()
        await asyncio.sleep(0.05)  # the other calls queue behind the first meanwhile
        raise KeyError("weights")

    entry = ModelRegistry().register("model", broken, batched=True)
    runner = ModelRunner(entry, Executor(2), BatchSettings())
    runner.start()
    transport = FakeTransport()
    call = ModelCall(runner, open_policy(), wire(transport))
    try:
        first = asyncio.create_task(call.unary({"n": 0}, transport))
        await started.wait()
        rest = [asyncio.create_task(call.unary({"n": i}, transport)) for i in range(1, 6)]
        failures = await asyncio.gather(first, *rest)
    finally:
        await runner.stop()
    assert {f.code for f in failures} == {StatusCode.INTERNAL}
    assert runner.batcher is not None and runner.batcher.stats.batch_sizes == {1: 1, 5: 1}
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(logged) == 2  # one per failed batch, not one per request


async def test_a_wrong_result_names_the_model_the_field_and_both_types() -> None:
    def wrong(n: int) -> int:
        return "seven"  # type: ignore[return-value]

    transport = FakeTransport()
    checked = Wire(
        protocol="a fake transport",
        decode=_decode(transport),
        encode=lambda request, result: _as_int(result),
        caller=lambda request, t: RequestEvent("/fake/model", t.metadata, ""),
        reject=_reject,
    )
    call = ModelCall(runner_for(wrong), open_policy(), checked)
    assert await call.unary({"n": 1}, transport) == Failure(
        StatusCode.INTERNAL,
        "InferenceError: model 'model' returned str 'seven' for field 'result', declared int",
    )


_as_int = scalar(int, "result")


async def test_context_and_dependencies_come_from_the_transports_caller() -> None:
    def user(context: Context) -> str:
        return str(context.metadata["x-user"])

    def hello(n: int, context: Context, who: str = Depends(user)) -> str:
        return f"{who} {n} {context.method} {context.peer}"

    transport = FakeTransport({"x-user": "ada"})
    call = ModelCall(runner_for(hello), open_policy(), wire(transport))
    assert await call.unary({"n": 3}, transport) == "reply 'ada 3 /fake/model peer-1'"


async def test_stream_chunks_are_sent_encoded_and_a_failure_comes_last() -> None:
    async def count(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise ValueError("ran dry")

    transport, recorder, sent = FakeTransport(), Recorder(), []
    call = ModelCall(runner_for(count, streaming=True), open_policy(recorder), wire(transport))
    assert await call.stream({"n": 2}, transport, _into(sent)) is False
    assert sent == ["reply 0", "reply 1", Failure(StatusCode.INTERNAL, "ValueError: ran dry")]
    assert recorder.seen == [("/fake/model", StatusCode.INTERNAL)]


async def test_a_stream_that_ends_reports_it_completed() -> None:
    async def count(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    transport, sent = FakeTransport(), []
    call = ModelCall(runner_for(count, streaming=True), open_policy(), wire(transport))
    assert await call.stream({"n": 3}, transport, _into(sent)) is True
    assert sent == ["reply 0", "reply 1", "reply 2"]


async def test_a_send_that_fails_throws_cancelled_error_into_the_model() -> None:
    seen: list[str] = []

    async def endless(n: int) -> AsyncIterator[int]:
        try:
            while True:
                yield n
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            seen.append("closed")

    async def send(message: Any) -> None:
        if message == "reply 5" and seen == []:
            seen.append("sent")
            return
        raise ConnectionResetError("the client left")

    transport, recorder = FakeTransport(), Recorder()
    call = ModelCall(runner_for(endless, streaming=True), open_policy(recorder), wire(transport))
    with pytest.raises(CallerGone) as info:
        await call.stream({"n": 5}, transport, send)
    assert isinstance(info.value.__cause__, ConnectionResetError)
    assert seen == ["sent", "cancelled", "closed"]
    assert recorder.seen == [("/fake/model", StatusCode.OK)]  # the model did not fail


def _into(sent: list[Any]) -> Callable[[Any], Awaitable[None]]:
    async def send(message: Any) -> None:
        sent.append(message)

    return send
