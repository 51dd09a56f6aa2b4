"""Helpers for models written with PyTorch, ONNX Runtime or TensorFlow, under 2.2.1's names.

Each module imports without its framework; using a helper without the framework installed
raises `MissingExtra` naming the extra to install (`pip install 'blazerpc[pytorch]'`, ...).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..exceptions import ConfigurationError


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
