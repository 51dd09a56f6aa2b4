"""Finding the user's app and running the event loop: what `blaze serve` and the worker
processes it starts share (so neither imports the other)."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import sys
from collections.abc import Coroutine
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from .app import BlazeApp
from .exceptions import ConfigurationError


def usage_error(message: str) -> typer.Exit:
    typer.secho(f"Error: {message}", err=True, fg="red")
    return typer.Exit(2)


def load_app(target: str, app_dir: Path = Path(".")) -> BlazeApp:
    """Import `MODULE:ATTR` as uvicorn does; each way it can go wrong is one clear line."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise usage_error(f"'{target}' is not of the form MODULE:ATTR (for example main:app)")
    for path in {str(Path(app_dir).resolve()), str(Path.cwd())}:
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise usage_error(f"cannot import module '{module_name}'") from None
        raise
    app: Any = module
    for part in attr.split("."):
        app = getattr(app, part, None)
        if app is None:
            raise usage_error(f"module '{module_name}' has no attribute '{attr}'")
    if not isinstance(app, BlazeApp):
        raise usage_error(f"'{target}' is a {type(app).__name__}, not a BlazeApp")
    return app


class Loop(str, Enum):
    """The event loop to serve on; `auto` is uvloop (a dependency wherever it builds: not on
    Windows or PyPy), else asyncio's own."""

    auto = "auto"
    asyncio = "asyncio"
    uvloop = "uvloop"


def resolve_loop(loop: Loop) -> Loop:
    """`auto` made concrete; uvloop asked for but not installed is a ConfigurationError."""
    if loop is Loop.asyncio:
        return loop
    if importlib.util.find_spec("uvloop") is None:
        if loop is Loop.uvloop:
            raise ConfigurationError(
                "--loop uvloop needs uvloop, which is not installed (it does not build on "
                "Windows or PyPy): pip install uvloop, or --loop asyncio"
            )
        return Loop.asyncio
    return Loop.uvloop


def run(coro: Coroutine[Any, Any, None], loop: Loop = Loop.auto) -> None:
    """Run on the chosen loop; uvloop runs the same code with less per-call overhead. The
    import is outside any except block, so no chained ImportError reaches a traceback."""
    if resolve_loop(loop) is Loop.uvloop:
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)
