"""Finding the user's app and running the event loop: what `blaze serve` and the worker
processes it starts share (so neither imports the other)."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import typer

from .app import BlazeApp


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


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (a faster loop for the same code), else asyncio."""
    runner: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run  # called outside the except: no chained ImportError in tracebacks
    else:
        runner = uvloop.run
    runner(coro)
