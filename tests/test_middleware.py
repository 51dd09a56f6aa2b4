"""Middleware around every model call: order, events, rejection, errors, auth, logs, OTel."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from blazerpc import BlazeApp, BlazeRPCError, ConfigurationError, RPCError, StatusCode
from blazerpc.server.middleware import (
    LoggingMiddleware,
    Middleware,
    OTelMetricsMiddleware,
    RequestEvent,
    ResponseEvent,
)
from blazerpc.server.middleware import TokenAuthMiddleware as TokenAuth

from .support import client_for, running

ECHO = "/blazerpc.InferenceService/PredictEcho"


class Recorder(Middleware):
    """Appends what it sees to a shared journal."""

    def __init__(self, name: str, journal: list) -> None:
        self.name, self.journal = name, journal

    async def on_request(self, event: RequestEvent) -> None:
        self.journal.append((self.name, "request", event))

    async def on_response(self, event: ResponseEvent) -> None:
        self.journal.append((self.name, "response", event))


class Reject(Middleware):
    async def on_request(self, event: RequestEvent) -> None:
        if event.metadata.get("x-user") != "alice":
            raise RPCError(StatusCode.UNAUTHENTICATED, "who are you?")


def echo_app(middleware: list[Middleware]) -> BlazeApp:
    app = BlazeApp(middleware=middleware)
    app.state.calls = []

    @app.model("echo")
    async def echo(text: str) -> str:
        app.state.calls.append(text)
        await asyncio.sleep(0.05)
        return text

    @app.model("fail")
    def fail(code: str) -> str:  # a sync model, run in a thread
        raise RPCError(StatusCode[code], f"failed with {code}")

    @app.model("chunks", streaming=True)
    async def chunks(n: int, fail_at: int = -1) -> AsyncIterator[int]:
        for i in range(n):
            if i == fail_at:
                raise RPCError(StatusCode.DATA_LOSS, "lost the rest")
            await asyncio.sleep(0.02)
            yield i

    return app


def steps(journal: list) -> list[tuple[str, str]]:
    return [(name, kind) for name, kind, _ in journal]


async def test_order_in_then_reversed_out_and_event_fields() -> None:
    journal: list = []
    app = echo_app([Recorder("a", journal), Recorder("b", journal), Recorder("c", journal)])
    async with client_for(app) as client:
        call = client.with_options(metadata={"X-Request-Id": "r-1"})
        assert await call.predict("echo", text="hi") == "hi"
    assert steps(journal) == [
        ("a", "request"),
        ("b", "request"),
        ("c", "request"),
        ("c", "response"),
        ("b", "response"),
        ("a", "response"),
    ]
    request, response = journal[0][2], journal[-1][2]
    assert request.method_name == ECHO
    assert request.metadata["x-request-id"] == "r-1"
    assert all(key == key.lower() for key in request.metadata)
    assert request.peer.startswith("ipv4:127.0.0.1:")
    assert response.method_name == ECHO and response.peer == request.peer
    assert response.metadata["x-request-id"] == "r-1"
    assert response.status is StatusCode.OK
    assert 0.05 <= response.duration < 1.0


async def test_rejecting_in_on_request_stops_the_call_before_the_model() -> None:
    journal: list = []
    app = echo_app([Recorder("outer", journal), Reject(), Recorder("inner", journal)])
    async with client_for(app) as client:
        with pytest.raises(BlazeRPCError) as info:
            await client.predict("echo", text="sneaky")
        assert info.value.code is StatusCode.UNAUTHENTICATED
        assert info.value.details == "who are you?"
        assert app.state.calls == []
        assert steps(journal) == [
            ("outer", "request"),
            ("inner", "response"),
            ("outer", "response"),
        ]
        assert {e.status for _, kind, e in journal if kind == "response"} == {
            StatusCode.UNAUTHENTICATED
        }

        alice = client.with_options(metadata={"x-user": "alice"})
        assert await alice.predict("echo", text="hello") == "hello"
        assert app.state.calls == ["hello"]


@pytest.mark.parametrize("code", ["RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED"])
async def test_rpc_error_from_a_model_sets_the_status(code: str) -> None:
    journal: list = []
    async with client_for(echo_app([Recorder("r", journal)])) as client:
        with pytest.raises(BlazeRPCError) as info:
            await client.predict("fail", code=code)
    assert info.value.code is StatusCode[code]
    assert info.value.details == f"failed with {code}"
    assert journal[-1][2].status is StatusCode[code]


async def test_middleware_sees_streams_through_to_their_end() -> None:
    journal: list = []
    async with client_for(echo_app([Recorder("r", journal)])) as client:
        assert [i async for i in client.stream("chunks", n=5)] == [0, 1, 2, 3, 4]
        ok = journal[-1][2]
        with pytest.raises(BlazeRPCError) as info:
            async for _ in client.stream("chunks", n=5, fail_at=2):
                pass
        failed = journal[-1][2]
    assert ok.status is StatusCode.OK and ok.duration >= 5 * 0.02
    assert info.value.code is StatusCode.DATA_LOSS
    assert failed.status is StatusCode.DATA_LOSS


async def test_a_failing_on_response_does_not_change_the_reply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Middleware):
        async def on_response(self, event: ResponseEvent) -> None:
            raise RuntimeError("exporter down")

    async with client_for(echo_app([Broken()])) as client:
        assert await client.predict("echo", text="still fine") == "still fine"
    assert "exporter down" in caplog.text


async def test_health_is_not_behind_middleware() -> None:
    """Probes and schema discovery carry no token; only model calls pass through middleware."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with running(echo_app([TokenAuth(tokens=["s3cret"])])) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenAuth]:
    yield TokenAuth(tokens=["t-list", "t-other"])
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("# rotated 2024-05-01\nt-file\n\n  t-other  \n")
    yield TokenAuth(tokens_file=tokens_file)
    monkeypatch.setenv("BLAZE_TOKENS", "t-env, t-other")
    yield TokenAuth(env_var="BLAZE_TOKENS")


@pytest.mark.parametrize("source", ["list", "file", "env"])
async def test_token_auth_admits_known_tokens_and_rejects_the_rest(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    auths = dict(zip(["list", "file", "env"], token_sources(tmp_path, monkeypatch), strict=True))
    app = echo_app([auths[source]])
    own_token = f"t-{source}"
    async with client_for(app) as client:

        async def code_with(metadata: dict[str, str] | None) -> StatusCode:
            try:
                await client.with_options(metadata=metadata).predict("echo", text="x")
            except BlazeRPCError as exc:
                return exc.code
            return StatusCode.OK

        assert await code_with(None) is StatusCode.UNAUTHENTICATED
        assert await code_with({"authorization": "Bearer nope"}) is StatusCode.UNAUTHENTICATED
        assert await code_with({"authorization": own_token}) is StatusCode.UNAUTHENTICATED
        assert await code_with({"authorization": f"Basic {own_token}"}) is (
            StatusCode.UNAUTHENTICATED
        )
        assert app.state.calls == []
        assert await code_with({"authorization": f"Bearer {own_token}"}) is StatusCode.OK
        assert await code_with({"Authorization": "bearer t-other"}) is StatusCode.OK
        assert app.state.calls == ["x", "x"]


def test_token_auth_without_any_token_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BLAZE_NO_TOKENS", raising=False)
    empty = tmp_path / "tokens"
    empty.write_text("# nothing yet\n")
    for kwargs in [{}, {"env_var": "BLAZE_NO_TOKENS"}, {"tokens_file": empty}]:
        with pytest.raises(ConfigurationError):
            TokenAuth(**kwargs)


async def test_token_auth_takes_a_string_as_one_token_and_ignores_blank_ones() -> None:
    with pytest.raises(ConfigurationError):
        TokenAuth(tokens=["", "  "])
    app = echo_app([TokenAuth(tokens="s3cret")])
    async with client_for(app) as client:
        for header, admitted in [("Bearer s", False), ("Bearer ", False), ("Bearer s3cret", True)]:
            call = client.with_options(metadata={"authorization": header})
            try:
                await call.predict("echo", text="x")
            except BlazeRPCError as exc:
                assert exc.code is StatusCode.UNAUTHENTICATED
                assert not admitted, header
            else:
                assert admitted, header
    assert app.state.calls == ["x"]


async def test_logging_middleware_writes_one_line_per_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = echo_app([LoggingMiddleware(), Reject()])
    caplog.set_level(logging.INFO, logger="blazerpc.access")
    async with client_for(app) as client:
        await client.with_options(metadata={"x-user": "alice"}).predict("echo", text="a")
        with pytest.raises(BlazeRPCError):
            await client.predict("echo", text="b")
    lines = [r.getMessage() for r in caplog.records if r.name == "blazerpc.access"]
    assert len(lines) == 2
    for line, status in zip(lines, ["OK", "UNAUTHENTICATED"], strict=True):
        method, peer, logged_status, duration = line.split()
        assert method == ECHO
        assert peer.startswith("ipv4:127.0.0.1:")
        assert logged_status == status
        assert duration.endswith("ms") and float(duration[:-2]) >= 0
    assert float(lines[0].split()[-1][:-2]) >= 50  # the model sleeps 50 ms


async def test_otel_metrics_middleware_records_counts_and_durations() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    app = echo_app([OTelMetricsMiddleware(meter)])
    async with client_for(app) as client:
        for text in ["a", "b", "c"]:
            await client.predict("echo", text=text)
        with pytest.raises(BlazeRPCError):
            await client.predict("fail", code="UNAVAILABLE")

    metrics = {
        m.name: m
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    counts = {
        (p.attributes["method"], p.attributes["status"]): p.value
        for p in metrics["blazerpc.rpc.count"].data.data_points
    }
    assert counts == {
        (ECHO, "OK"): 3,
        ("/blazerpc.InferenceService/PredictFail", "UNAVAILABLE"): 1,
    }
    durations = {
        p.attributes["method"]: p for p in metrics["blazerpc.rpc.duration"].data.data_points
    }
    assert durations[ECHO].count == 3
    assert durations[ECHO].sum >= 3 * 0.05
    assert metrics["blazerpc.rpc.duration"].unit == "s"


async def test_otel_metrics_middleware_works_with_the_api_alone() -> None:
    """Without a meter it uses the global provider: a no-op until the app installs an SDK."""
    async with client_for(echo_app([OTelMetricsMiddleware()])) as client:
        assert await client.predict("echo", text="x") == "x"


def test_otel_metrics_middleware_without_opentelemetry_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if it were not installed
    with pytest.raises(ConfigurationError, match=r"pip install 'blazerpc\[otel\]'"):
        OTelMetricsMiddleware()
