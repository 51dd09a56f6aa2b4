"""Middleware: code that sees every model call before it runs and after it ends.

`on_request` may reject a call by raising `RPCError(StatusCode.X, "...")`; the model then never
runs. `on_response` sees the final status and duration of every call, rejected ones too.
Middleware runs in list order on the way in and in reverse order on the way out.

2.2.1's names live here too: `Middleware` subclasses written against grpclib's events work
unchanged (the events carry `method_name`, `metadata`, `peer`, `status`, `status_message`,
and grpclib's `GRPCError` raised in `on_request` ends the call with its status), and
`TransportMiddleware` with `RequestInfo`/`ResponseInfo` sees every protocol's calls.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpc import StatusCode

from ..exceptions import ConfigurationError, RPCError


@dataclass
class RequestEvent:
    """A call about to run: full method path, metadata (lower-case keys) and peer address."""

    method_name: str
    metadata: Mapping[str, str]
    peer: str


@dataclass
class ResponseEvent(RequestEvent):
    """A call that ended: adds its status, how long it took in seconds, and the status
    details (`status_message`, as grpclib's SendTrailingMetadata names them)."""

    status: StatusCode = StatusCode.OK
    duration: float = 0.0
    status_message: str = ""


class Middleware:
    """Subclass and override either hook; both do nothing by default. The base itself is not
    instantiable (as in 2.2.1, where it is abstract)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is Middleware:
            raise TypeError("Middleware is a base class: subclass it and override a hook")
        return super().__new__(cls)

    def attach(self, app: Any) -> None:
        """Add this middleware to a BlazeApp before it starts; 2.2.1 attached it to a grpclib
        server, which BlazeRPC does not expose (`BlazeApp(middleware=[...])` is the same)."""
        attach(self, app)

    async def on_request(self, event: RequestEvent) -> None:
        return None

    async def on_response(self, event: ResponseEvent) -> None:
        return None


class LoggingMiddleware(Middleware):
    """One line per call: method, peer, status and duration."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("blazerpc.access")

    async def on_response(self, event: ResponseEvent) -> None:
        self.logger.info(
            "%s %s %s %.1fms",
            event.method_name,
            event.peer,
            event.status.name,
            event.duration * 1000,
        )


@dataclass
class TokenAuthMiddleware(Middleware):
    """Admit calls whose `authorization: Bearer <token>` metadata carries a known token.

    Tokens come from a list, a file (one per line, `#` comments) and/or an environment
    variable (comma-separated), all read once at construction.
    """

    tokens: Iterable[str] = ()
    tokens_file: str | os.PathLike[str] | None = None
    env_var: str | None = None
    _known: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # One string is one token, not a set of one-character tokens; blank tokens never count.
        tokens = [self.tokens] if isinstance(self.tokens, str) else list(self.tokens)
        known = {t.strip() for t in tokens if t.strip()}
        if self.tokens_file is not None:
            for line in Path(self.tokens_file).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    known.add(line)
        if self.env_var is not None:
            from_env = os.environ.get(self.env_var, "").split(",")
            known.update(t.strip() for t in from_env if t.strip())
        if not known:
            raise ConfigurationError("TokenAuthMiddleware has no tokens: every call would fail")
        self._known = frozenset(known)

    async def on_request(self, event: RequestEvent) -> None:
        header = event.metadata.get("authorization")
        if header is None:
            raise RPCError(StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>'")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self._known:
            raise RPCError(StatusCode.UNAUTHENTICATED, "invalid bearer token")


class MetricsMiddleware(Middleware):
    """Prometheus counters and a latency histogram per method and status (see `metrics`)."""

    def __init__(self) -> None:
        from .metrics import prometheus_metrics

        self._metrics = prometheus_metrics()

    async def on_response(self, event: ResponseEvent) -> None:
        self._metrics.requests.labels(event.method_name, event.status.name).inc()
        self._metrics.duration.labels(event.method_name).observe(event.duration)


class OTelMetricsMiddleware(Middleware):
    """The same two metrics through OpenTelemetry (`pip install blazerpc[otel]`)."""

    def __init__(self, meter: Any = None) -> None:
        try:
            from opentelemetry import metrics
        except ImportError as exc:
            raise ConfigurationError(
                "OTelMetricsMiddleware needs OpenTelemetry: pip install 'blazerpc[otel]'"
            ) from exc
        meter = meter or metrics.get_meter("blazerpc")
        # The instrument names 2.2.1 documents, so its dashboards keep working.
        self._requests = meter.create_counter(
            "blazerpc.rpc.count", description="Model calls by method and status"
        )
        self._duration = meter.create_histogram(
            "blazerpc.rpc.duration", unit="s", description="Model call duration"
        )

    async def on_response(self, event: ResponseEvent) -> None:
        attributes = {"method": event.method_name, "status": event.status.name}
        self._requests.add(1, attributes)
        self._duration.record(event.duration, {"method": event.method_name})


def lower_keys(pairs: Iterable[tuple[str, str | bytes]] | None) -> dict[str, Any]:
    """gRPC metadata as a dict with lower-case keys (binary `-bin` values stay bytes)."""
    return {k.lower(): v for k, v in pairs or ()}


def attach(middleware: Any, app: Any) -> None:
    """2.2.1's `mw.attach(...)`, onto the app (duck-typed: the app module imports this one)."""
    if not isinstance(getattr(app, "middleware", None), list) or not hasattr(app, "registry"):
        raise TypeError(
            f"attach() takes the BlazeApp to add the middleware to, not {type(app).__name__}; "
            "or pass it as BlazeApp(middleware=[...])"
        )
    app.middleware.append(middleware)


class ExceptionMiddleware(Middleware):
    """2.2.1's base for exception mapping, which does nothing itself: BlazeRPC maps exceptions
    to statuses in one table (`blazerpc.exceptions.status_of`); raise `RPCError` for a code."""


# Transport-agnostic middleware, as 2.2.1 names it.


def transport_of(method: str) -> str:
    """The transport a call came by, read from its method: `grpc` (native and KServe gRPC),
    `jsonrpc`, or `http` (KServe REST)."""
    if method.startswith(("predict.", "stream.")):
        return "jsonrpc"
    return "http" if method.startswith("/v2/") else "grpc"


class RequestInfo:
    """A call about to run, whichever protocol carries it."""

    __slots__ = ("headers", "method", "peer", "transport")

    def __init__(self, method: str, peer: str, headers: dict[str, str], transport: str) -> None:
        self.method, self.peer, self.headers, self.transport = method, peer, headers, transport


class ResponseInfo:
    """A call that ended: `status` is its gRPC status code number (0 is OK) on every
    transport, `duration` in seconds."""

    __slots__ = ("duration", "method", "status", "transport")

    def __init__(self, status: int, duration: float, transport: str, method: str = "") -> None:
        self.status = status
        self.duration = duration
        self.transport = transport
        self.method = method


class TransportMiddleware(ABC):
    """Middleware that sees `RequestInfo`/`ResponseInfo`; pass it in `BlazeApp(middleware=...)`
    and it runs on gRPC, KServe, REST and JSON-RPC calls alike. `on_request` may reject the
    call by raising, as with `Middleware`."""

    @abstractmethod
    async def on_request(self, info: RequestInfo) -> None: ...

    @abstractmethod
    async def on_response(self, info: ResponseInfo) -> None: ...

    def attach(self, app: Any) -> None:
        """Add this middleware to a BlazeApp before it starts."""
        attach(self, app)


class TransportAdapter(Middleware):
    """Runs a TransportMiddleware in the middleware chain."""

    def __init__(self, inner: TransportMiddleware) -> None:
        self.inner = inner

    async def on_request(self, event: RequestEvent) -> None:
        transport = transport_of(event.method_name)
        info = RequestInfo(event.method_name, event.peer, dict(event.metadata), transport)
        await self.inner.on_request(info)

    async def on_response(self, event: ResponseEvent) -> None:
        code = event.status.value[0]
        transport = transport_of(event.method_name)
        await self.inner.on_response(
            ResponseInfo(code, event.duration, transport, event.method_name)
        )


def as_middleware(m: Middleware | TransportMiddleware) -> Middleware:
    return TransportAdapter(m) if isinstance(m, TransportMiddleware) else m


class TransportLoggingMiddleware(TransportMiddleware):
    """One line per call on the way in (method, peer, transport) and one on the way out."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("blazerpc.middleware")

    async def on_request(self, info: RequestInfo) -> None:
        self.logger.info("[%s] Request: %s from %s", info.transport, info.method, info.peer)

    async def on_response(self, info: ResponseInfo) -> None:
        self.logger.info(
            "[%s] Response: %s status=%s duration=%.3fs",
            info.transport,
            info.method,
            info.status,
            info.duration,
        )


class TransportMetricsMiddleware(TransportMiddleware):
    """Prometheus `blazerpc_transport_requests_total{method,status,transport}` and
    `blazerpc_transport_request_duration_seconds{method,transport}`."""

    def __init__(self) -> None:
        from .metrics import transport_metrics

        self._metrics = transport_metrics()

    async def on_request(self, info: RequestInfo) -> None:
        return None

    async def on_response(self, info: ResponseInfo) -> None:
        self._metrics.requests.labels(info.method, str(info.status), info.transport).inc()
        self._metrics.duration.labels(info.method, info.transport).observe(info.duration)
