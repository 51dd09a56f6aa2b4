"""Starting and stopping the grpcio asyncio server that carries every service."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from ..exceptions import ConfigurationError
from ..policy import CallPolicy
from ..protocols.grpc_decoding import DecodingInHandler
from ..protocols.http import HttpServer, start_http_server
from ..protocols.kserve_grpc import add_kserve_service
from ..runtime.batcher import BatchObserver, BatchSettings, BatchStats
from ..runtime.executor import Executor
from ..runtime.registry import ModelEntry
from ..runtime.runner import ModelRunner
from ..schema import SERVICE_FULL_NAME, Schema
from .handlers import model_handlers
from .health import NOT_SERVING, SERVING, Health
from .reflection import enable_reflection


@dataclass(frozen=True)
class ServerTLS:
    """PEM files for TLS; with `client_ca_file`, clients must present a certificate it signed."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """The same certificate and client check for the HTTP port, so no port is weaker."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            context.load_verify_locations(self.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def credentials(self) -> grpc.ServerCredentials:
        ca = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


@dataclass(frozen=True)
class Limits:
    """Transport limits; the defaults suit inference behind a load balancer.

    `app.limits` holds them; change them with `dataclasses.replace` before serving.

    Attributes:
        max_message_bytes: Largest request or response message (`--max-message-mb`).
        max_json_bytes: Largest JSON body on the HTTP port (HTTP 413 beyond it).
        max_jsonrpc_batch: Most calls in one JSON-RPC batch.
        max_concurrent_streams: Concurrent calls per HTTP/2 connection.
        keepalive_time_s: Seconds between pings on an idle connection.
        keepalive_timeout_s: Seconds a ping may go unanswered before the connection closes.
        min_client_ping_interval_s: Most frequent client ping allowed while no call is active.
        max_connection_age_s: End each connection after this many seconds (GOAWAY), so
            clients reconnect and rebalance; off by default.
        max_connection_age_grace_s: Seconds calls on an aged connection may take to finish.
    """

    max_message_bytes: int = 64 * 1024 * 1024
    # JSON is parsed on the event loop: its own, smaller limit keeps one body from holding
    # every other call up (tensors this large travel as binary data instead).
    max_json_bytes: int = 8 * 1024 * 1024
    max_jsonrpc_batch: int = 1000
    max_concurrent_streams: int = 256
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    min_client_ping_interval_s: float = 10.0
    # Off by default. Behind a connection balancer (a Kubernetes Service) a connection that
    # ends makes its client reconnect, and the new connection may reach a new replica.
    max_connection_age_s: float | None = None
    max_connection_age_grace_s: float | None = None

    def grpc_options(self, reuse_port: bool) -> list[tuple[str, Any]]:
        age: list[tuple[str, Any]] = []
        if self.max_connection_age_s is not None:
            age.append(("grpc.max_connection_age_ms", int(self.max_connection_age_s * 1000)))
        if self.max_connection_age_grace_s is not None:
            grace_ms = int(self.max_connection_age_grace_s * 1000)
            age.append(("grpc.max_connection_age_grace_ms", grace_ms))
        return [
            *age,
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            (
                "grpc.http2.min_ping_interval_without_data_ms",
                int(self.min_client_ping_interval_s * 1000),
            ),
            # One process per port unless workers share it on purpose: a second server
            # silently sharing the port of a forgotten one is a classic deploy bug.
            ("grpc.so_reuseport", int(reuse_port)),
        ]


Hook = Callable[[], Awaitable[None]]
Step = Callable[[], Awaitable[None] | None]
logger = logging.getLogger("blazerpc.server")


async def run_every(steps: Iterable[tuple[str, Step]]) -> None:
    """Run each (name, step) in order, each even if an earlier one failed; then raise the
    first failure (later ones are logged, so none goes unseen)."""
    first: Exception | None = None
    for name, step in steps:
        try:
            done = step()
            if done is not None:
                await done
        except Exception as exc:
            if first is None:
                first = exc
            else:
                logger.error("%s failed too", name, exc_info=exc)
    if first is not None:
        raise first


HEALTH_NOTICE_S = 0.5  # how long clients watching health get to see a drain before GOAWAY


class Server:
    """A running server: its bound `port`, its models' `runners`, and `stop()` to drain."""

    def __init__(
        self,
        grpc_server: grpc.aio.Server,
        port: int | None,
        health: Health,
        executor: Executor,
        runners: dict[str, ModelRunner],
        policy: CallPolicy,
        on_stop: Hook | None = None,
        http: HttpServer | None = None,
    ) -> None:
        self.port = port
        self.http_port = http.port if http is not None else None
        self._http = http
        self.runners = runners
        self.health = health
        self._grpc = grpc_server
        self._executor = executor
        self._policy = policy
        self._on_stop = on_stop
        self._stopped = False

    async def ready(self) -> None:
        """Admit model calls and report SERVING."""
        self._policy.gate.open()
        await self.health.set_all(SERVING)

    def stats(self) -> dict[str, BatchStats]:
        """Batching statistics of each batched model, by model name."""
        stats = {}
        for name, runner in self.runners.items():
            if runner.batcher is not None:
                runner.batcher.stats.queue_depth = runner.batcher.queue_depth
                stats[name] = runner.batcher.stats
        return stats

    def modes(self) -> dict[str, str]:
        """Where each model's calls run now, by model (`name`, or `name@version` for a version
        below the highest): 'loop' (async def), 'inline' (a plain `def` measured cheap, run on
        the loop) or 'threads' (in the thread pool)."""
        return {name: runner.mode for name, runner in self.runners.items()}

    async def stop(self, grace: float | None = 30.0) -> None:
        """Drain: report NOT_SERVING, refuse new calls with UNAVAILABLE, let calls in flight
        (queued in a batch, running, streaming) finish within `grace` seconds, then cancel
        them. `grace` None or 0: cancel at once (gRPC and HTTP alike). Every step runs even
        if an earlier one fails; the first failure is raised at the end."""
        if self._stopped:
            return
        self._stopped = True
        watched = self.health.watchers > 0
        grace = grace or 0.0
        await run_every(
            [
                (
                    "closing the gate",
                    lambda: self._policy.gate.close("the server is shutting down"),
                ),
                ("reporting NOT_SERVING", lambda: self.health.set_all(NOT_SERVING, draining=True)),
                # Clients balancing on health stop sending here once they read NOT_SERVING;
                # until then their calls get the gate's UNAVAILABLE, which they retry
                # elsewhere. Once grpcio's shutdown begins, a call arriving would end
                # CANCELLED, never retried.
                (
                    "giving health watchers notice",
                    lambda: asyncio.sleep(min(HEALTH_NOTICE_S, grace)) if watched else None,
                ),
                ("draining calls in flight", lambda: self._drain(grace)),
                *((f"stopping model '{n}'", r.stop) for n, r in self.runners.items()),
                *([("the shut-down hooks", self._on_stop)] if self._on_stop is not None else []),
                ("stopping the model threads", self._executor.shutdown),
            ]
        )

    async def _drain(self, grace: float) -> None:
        stopping = [self._grpc.stop(grace)]
        if self._http is not None:
            stopping.append(self._http.stop(grace))
        for result in await asyncio.gather(*stopping, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result


def _bind(server: grpc.aio.Server, host: str, port: int, tls: ServerTLS | None) -> int:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, tls.credentials())
    except RuntimeError as exc:
        raise ConfigurationError(f"cannot listen on {address}: {exc}") from None
    if bound == 0:
        raise ConfigurationError(f"cannot listen on {address}")
    return bound


async def start_server(
    models: Sequence[ModelEntry],
    schema: Schema,
    *,
    host: str,
    port: int | None,
    policy: CallPolicy,
    batching: dict[str, BatchSettings],
    max_threads: int,
    inline_limit_s: float = 0.0,
    max_in_flight: dict[str, int] | None = None,
    limits: Limits | None = None,
    tls: ServerTLS | None = None,
    reuse_port: bool = False,
    on_stop: Hook | None = None,
    batch_observer: Callable[[str], BatchObserver] | None = None,
    instrument: Callable[[ModelRunner], None] | None = None,
    http_port: int | None = None,
    reflection: bool = True,
) -> Server:
    """Bind and start; model calls stay refused (and health NOT_SERVING) until `ready()`.
    `port=None` serves no gRPC port (HTTP only, as 2.2.1's `serve_jsonrpc`)."""
    executor = Executor(max_threads, inline_limit_s)
    max_in_flight = max_in_flight or {}
    runners = {
        m.key: ModelRunner(
            m,
            executor,
            batching.get(m.key),
            batch_observer(m.key) if batch_observer else None,
            max_in_flight.get(m.key, BatchSettings.max_queue_size),
        )
        for m in models
    }
    if instrument is not None:  # before the handlers take the runners' entry points
        for runner in runners.values():
            instrument(runner)
    limits = limits or Limits()
    server = grpc.aio.server(options=limits.grpc_options(reuse_port))
    server.add_registered_method_handlers(
        SERVICE_FULL_NAME, model_handlers(list(runners.values()), schema, policy)
    )
    health = Health()
    decoding = DecodingInHandler(server).as_server()
    health_pb2_grpc.add_HealthServicer_to_server(health, decoding)
    add_kserve_service(decoding, runners, policy)
    if reflection:
        enable_reflection(decoding, schema)
    http = None
    try:
        # HTTP first: a grpc.aio server that never started keeps its port until it is
        # collected, while an HTTP server that did start can be stopped for certain.
        if http_port is not None:
            http = await start_http_server(
                runners,
                policy,
                host=host,
                port=http_port,
                max_body_bytes=limits.max_message_bytes,
                max_json_bytes=limits.max_json_bytes,
                max_jsonrpc_batch=limits.max_jsonrpc_batch,
                reuse_port=reuse_port,
                ssl_context=tls.ssl_context() if tls is not None else None,
            )
        bound = None if port is None else _bind(server, host, port, tls)
    except BaseException:  # nothing may stay bound or running: the HTTP port, the threads
        if http is not None:
            await http.stop(0)
        executor.shutdown()
        raise
    for runner in runners.values():
        runner.start()
    await server.start()
    return Server(server, bound, health, executor, runners, policy, on_stop, http)
