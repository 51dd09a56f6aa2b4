"""Middleware: code that sees every model call before it runs and after it ends.

`on_request` may reject a call by raising `RPCError(StatusCode.X, "...")`; the model then never
runs. `on_response` sees the final status and duration of every call, rejected ones too.
Middleware runs in list order on the way in and in reverse order on the way out.
"""

from __future__ import annotations

import logging
import os
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
    """A call that ended: adds its status and how long it took, in seconds."""

    status: StatusCode = StatusCode.OK
    duration: float = 0.0


class Middleware:
    """Subclass and override either hook; both do nothing by default."""

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
        self._requests = meter.create_counter(
            "blazerpc.requests", description="Model calls by method and status"
        )
        self._duration = meter.create_histogram(
            "blazerpc.request.duration", unit="s", description="Model call duration"
        )

    async def on_response(self, event: ResponseEvent) -> None:
        attributes = {"method": event.method_name, "status": event.status.name}
        self._requests.add(1, attributes)
        self._duration.record(event.duration, {"method": event.method_name})


def lower_keys(pairs: Iterable[tuple[str, str | bytes]] | None) -> dict[str, Any]:
    """gRPC metadata as a dict with lower-case keys (binary `-bin` values stay bytes)."""
    return {k.lower(): v for k, v in pairs or ()}
