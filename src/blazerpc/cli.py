"""The `blaze` command: `blaze serve MODULE:ATTR`, `blaze proto MODULE:ATTR`, and `blaze deploy`
(in deploy/cli.py)."""

from __future__ import annotations

import enum
import inspect
import os
from pathlib import Path
from typing import Annotated

import typer

from .app import BlazeApp
from .deploy.cli import deploy
from .exceptions import ConfigurationError
from .launch import Loop, load_app, resolve_loop, usage_error
from .launch import run as run  # re-exported: `blazerpc.cli.run` predates launch.py
from .runtime.executor import RUNS_ATTRIBUTE
from .runtime.registry import ModelEntry
from .schema import FILE_NAME
from .server.server import ServerTLS
from .server.workers import ServeConfig, serve_process, serve_with_reload, supervise
from .types import Tensor

cli = typer.Typer(
    name="blaze",
    help="Serve typed Python functions as gRPC inference endpoints.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
cli.add_typer(deploy, name="deploy")

AppPath = Annotated[
    str, typer.Argument(help="The app to load, as MODULE:ATTR (e.g. main:app), or an .onnx file")
]
AppDir = Annotated[
    Path, typer.Option(help="Directory to import the app from (the current one is always used)")
]


class Transport(str, enum.Enum):
    """What `blaze serve --transport` serves (2.2.1's option)."""

    grpc = "grpc"
    jsonrpc = "jsonrpc"
    both = "both"


def _app_target(app_path: str, app_dir: Path) -> str:
    """The app to load: `model.onnx` is served by blazerpc.contrib.onnx, which finds the file's
    path in the environment (so worker processes do too). Loaded here first, so a bad file is
    one clear line."""
    if not app_path.endswith(".onnx"):
        return app_path
    from .contrib.onnx import MODEL_ENV, onnx_app

    path = (app_dir / app_path).resolve()
    try:
        onnx_app(path)
    except ConfigurationError as exc:
        raise usage_error(str(exc)) from None
    os.environ[MODEL_ENV] = str(path)
    return "blazerpc.contrib.onnx:app"


def _set(**flags: float | None) -> dict[str, float]:
    """The flags that were given; the others keep the app's own settings."""
    return {name: value for name, value in flags.items() if value is not None}


def banner(
    app: BlazeApp,
    host: str,
    port: int | None,
    *,
    workers: int = 1,
    tls: bool = False,
    http_port: int | None = None,
    loop: Loop = Loop.asyncio,
    reflection: bool = True,
) -> str:
    """Each model with its version and how it runs, then where the server listens."""
    lines = [f"BlazeRPC '{app.name}' serving {len(app.registry)} model(s):"]
    for m in app.registry:
        if m.client_streaming:
            mode = "bidirectional streaming" if m.streaming else "client streaming"
            mode += ", never batched"
        elif m.streaming:
            mode = "streaming"
        elif (settings := app.batch_settings(m)) is not None:
            budget = settings.max_batch_tokens
            per_call = "" if budget is None else f", calls of at most {budget} batch_key units"
            mode = f"unary, batched (up to {settings.max_batch_size}{per_call}{_shared_when(m)})"
        else:
            mode = "unary"
        lines.append(f"  {m.name:<24} v{m.version:<6} {mode}, {_runs_where(m, app)}")
    scheme = "gRPC with TLS" if tls else "gRPC"
    procs = f", {workers} workers" if workers > 1 else ""
    services = "health and reflection enabled" if reflection else "health enabled, reflection off"
    if port is not None:
        lines.append(
            f"listening on {host}:{port} ({scheme}, with KServe v2{procs}; {services}; "
            f"{loop.value} event loop)"
        )
    if http_port is not None:
        http = "HTTPS" if tls else "HTTP"
        lines.append(
            f"{http} on {host}:{http_port} (KServe v2 REST at /v2, JSON-RPC at /jsonrpc, "
            "GET /health" + ("" if port is not None else f"; {loop.value} event loop") + ")"
        )
    return "\n".join(lines)


def _shared_when(entry: ModelEntry) -> str:
    """Say so when requests batch only with requests of the same length (e.g. "seq"), which
    on real text means batches of one or two: serve strings with a batch_key instead."""
    if not entry.stacks_tensors:
        return ""
    varying = sorted(
        {
            str(dim)
            for f in entry.signature.params
            if isinstance(f.type, Tensor)
            for dim in (f.type.dims or ())[1:]
            if isinstance(dim, str)
        }
    )
    if not varying:
        return ""
    names = " and ".join(f"'{d}'" for d in varying)
    return f"; only requests of equal {names} share a batch"


def _runs_where(entry: ModelEntry, app: BlazeApp) -> str:
    """Where calls run (runtime/executor.py); `server.modes()` says where they run now."""
    if (runs := getattr(entry.func, RUNS_ATTRIBUTE, None)) is not None:
        return str(runs)  # a helper that runs the model its own way (contrib.torch)
    if inspect.iscoroutinefunction(entry.func) or inspect.isasyncgenfunction(entry.func):
        return "on the event loop"
    if entry.streaming or entry.client_streaming or app.inline_limit_us <= 0:
        return "in threads"  # a model reading a stream waits on the loop for its items
    return f"in threads, inline on the loop while calls take < {app.inline_limit_us:g} µs"


@cli.command()
def serve(
    app_path: AppPath,
    host: Annotated[str, typer.Option(help="Address to bind")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 50051,
    app_dir: AppDir = Path("."),
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes sharing the port (SO_REUSEPORT)")
    ] = 1,
    reload: Annotated[bool, typer.Option(help="Restart on .py changes (development)")] = False,
    grace_period: Annotated[
        float, typer.Option(help="Seconds calls in flight may take to finish on SIGTERM")
    ] = 30.0,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port")
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option(
            help="Serve KServe v2 REST and JSON-RPC on this port [default: 8080 with "
            "--transport jsonrpc or both]"
        ),
    ] = None,
    transport: Annotated[
        Transport, typer.Option(help="grpc; jsonrpc: HTTP only; both (as in 2.2.1)")
    ] = Transport.grpc,
    max_message_mb: Annotated[
        float | None, typer.Option(help="Largest message accepted or sent [default: 64]")
    ] = None,
    max_connection_age: Annotated[
        float | None,
        typer.Option(help="Close connections after this many seconds, so clients rebalance"),
    ] = None,
    max_connection_age_grace: Annotated[
        float | None,
        typer.Option(help="Seconds calls on an aged connection may take to finish"),
    ] = None,
    keepalive_time: Annotated[
        float | None, typer.Option(help="Seconds between pings on an idle connection [default: 60]")
    ] = None,
    keepalive_timeout: Annotated[
        float | None, typer.Option(help="Seconds a ping may go unanswered [default: 20]")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate chain")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="Require client certificates signed by this CA")
    ] = None,
    reflection: Annotated[
        bool, typer.Option(help="Serve gRPC reflection (it lists every model, without auth)")
    ] = True,
    loop: Annotated[
        Loop, typer.Option(help="Event loop: uvloop when installed (auto), or asyncio's own")
    ] = Loop.auto,
) -> None:
    """Serve the app's models over gRPC until SIGINT or SIGTERM."""
    app_path = _app_target(app_path, app_dir)
    if reload and workers > 1:
        raise usage_error("--reload and --workers cannot be combined")
    if max_connection_age_grace is not None and max_connection_age is None:
        raise usage_error("--max-connection-age-grace needs --max-connection-age")
    if (tls_cert is None) != (tls_key is None) or (tls_client_ca and not tls_cert):
        raise usage_error("TLS needs both --tls-cert and --tls-key (and they for --tls-client-ca)")
    if transport is not Transport.grpc and http_port is None:
        http_port = 8080
    grpc_port = None if transport is Transport.jsonrpc else port
    tls = None
    if tls_cert is not None and tls_key is not None:
        tls = ServerTLS(str(tls_cert), str(tls_key), str(tls_client_ca) if tls_client_ca else None)
    config = ServeConfig(
        app_path,
        app_dir,
        host,
        grpc_port,
        grace_period,
        tls,
        metrics_port,
        max_message_mb,
        http_port=http_port,
        reflection=reflection,
        limits=_set(
            max_connection_age_s=max_connection_age,
            max_connection_age_grace_s=max_connection_age_grace,
            keepalive_time_s=keepalive_time,
            keepalive_timeout_s=keepalive_timeout,
        ),
        loop=loop.value,
    )
    app = load_app(app_path, app_dir)  # fail fast, in this process, on a bad import string
    reflection = reflection and app.reflection
    try:
        chosen = resolve_loop(loop)
    except ConfigurationError as exc:
        raise usage_error(str(exc)) from None
    typer.echo(
        banner(
            app,
            host,
            grpc_port,
            workers=workers,
            tls=tls is not None,
            http_port=http_port,
            reflection=reflection,
            loop=chosen,
        )
    )
    try:
        if reload:
            serve_with_reload(config)
        elif workers > 1:
            raise typer.Exit(supervise(config, workers))
        else:
            serve_process(config)
    except ConfigurationError as exc:
        raise usage_error(str(exc)) from None


@cli.command()
def proto(
    app_path: AppPath,
    output_dir: Annotated[Path, typer.Option(help="Where to write the .proto file")] = Path("."),
    app_dir: AppDir = Path("."),
) -> None:
    """Write the app's schema as a .proto file that protoc compiles."""
    app = load_app(_app_target(app_path, app_dir), app_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / FILE_NAME
    path.write_text(app.proto())
    typer.echo(f"wrote {path}")


def main() -> None:
    cli()
