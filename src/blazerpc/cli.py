"""The `blaze` command: `blaze serve MODULE:ATTR` and `blaze proto MODULE:ATTR`."""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from .app import BlazeApp
from .exceptions import ConfigurationError
from .schema import FILE_NAME

cli = typer.Typer(
    name="blaze",
    help="Serve typed Python functions as gRPC inference endpoints.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

AppPath = Annotated[str, typer.Argument(help="The app to load, as MODULE:ATTR, e.g. main:app")]
AppDir = Annotated[
    Path, typer.Option(help="Directory to import the app from (the current one is always used)")
]


def _fail(message: str) -> typer.Exit:
    typer.secho(f"Error: {message}", err=True, fg="red")
    return typer.Exit(2)


def load_app(target: str, app_dir: Path = Path(".")) -> BlazeApp:
    """Import `MODULE:ATTR` as uvicorn does; each way it can go wrong is one clear line."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise _fail(f"'{target}' is not of the form MODULE:ATTR (for example main:app)")
    for path in {str(Path(app_dir).resolve()), str(Path.cwd())}:
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise _fail(f"cannot import module '{module_name}'") from None
        raise
    app: Any = module
    for part in attr.split("."):
        app = getattr(app, part, None)
        if app is None:
            raise _fail(f"module '{module_name}' has no attribute '{attr}'")
    if not isinstance(app, BlazeApp):
        raise _fail(f"'{target}' is a {type(app).__name__}, not a BlazeApp")
    return app


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (a faster loop for the same code), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def banner(app: BlazeApp, host: str, port: int) -> str:
    lines = [f"BlazeRPC '{app.name}' serving {len(app.registry)} model(s):"]
    for m in app.registry:
        lines.append(f"  {m.name:<24} v{m.version:<6} {'streaming' if m.streaming else 'unary'}")
    lines.append(f"listening on {host}:{port} (gRPC; health and reflection enabled)")
    return "\n".join(lines)


@cli.command()
def serve(
    app_path: AppPath,
    host: Annotated[str, typer.Option(help="Address to bind")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 50051,
    app_dir: AppDir = Path("."),
) -> None:
    """Serve the app's models over gRPC until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = load_app(app_path, app_dir)
    typer.echo(banner(app, host, port))
    try:
        run(app.serve(host, port))
    except ConfigurationError as exc:
        raise _fail(str(exc)) from None


@cli.command()
def proto(
    app_path: AppPath,
    output_dir: Annotated[Path, typer.Option(help="Where to write the .proto file")] = Path("."),
    app_dir: AppDir = Path("."),
) -> None:
    """Write the app's schema as a .proto file that protoc compiles."""
    app = load_app(app_path, app_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / FILE_NAME
    path.write_text(app.proto())
    typer.echo(f"wrote {path}")


def main() -> None:
    cli()
