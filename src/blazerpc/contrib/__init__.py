"""Helpers for models written with PyTorch, ONNX Runtime or TensorFlow, under 2.2.1's names.

Each module imports without its framework; using a helper without the framework installed
raises `MissingExtra` naming the extra to install (`pip install 'blazerpc[pytorch]'`, ...).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from ..exceptions import ConfigurationError
from ..server.workers import WORKERS_ENV


class MissingExtra(ConfigurationError, ImportError):
    """A contrib helper was used without its framework installed."""


def require(module: str, extra: str) -> ModuleType:
    """Import `module` when a helper first needs it, or say which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"this helper needs {module}, which is not installed: pip install 'blazerpc[{extra}]'"
        ) from None


def converting(
    fn: Callable[..., Any],
    to_framework: Callable[[np.ndarray], Any],
    tensor_type: type,
    to_numpy: Callable[[Any], np.ndarray],
) -> Callable[..., Any]:
    """`fn` (sync or async) taking numpy arguments as the framework's tensors and giving a
    tensor result back as numpy: the shared body of `@torch_model` and `@tf_model`."""

    def convert(value: Any) -> Any:
        return to_framework(value) if isinstance(value, np.ndarray) else value

    def output(result: Any) -> Any:
        return to_numpy(result) if isinstance(result, tensor_type) else result

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            converted = {k: convert(v) for k, v in kwargs.items()}
            return output(await fn(*map(convert, args), **converted))

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        return output(fn(*map(convert, args), **{k: convert(v) for k, v in kwargs.items()}))

    return run


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, as in a container), not the
    machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_share() -> int:
    """A framework's threads per worker: this process's cores divided between the workers that
    `blaze serve --workers N` started (one worker when run otherwise), at least one."""
    workers = max(1, int(os.environ.get(WORKERS_ENV, "1")))
    return max(1, cpu_count() // workers)
