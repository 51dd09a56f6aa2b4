"""PyTorch helpers: numpy <-> torch conversion and `@torch_model`, which hands a model torch
tensors and returns numpy arrays. Needs `pip install 'blazerpc[pytorch]'`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import converting, require


def _torch() -> Any:
    return require("torch", "pytorch")


def torch_to_numpy(tensor: Any) -> np.ndarray:
    """A torch tensor as a numpy array (detached, on the CPU)."""
    torch = _torch()
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(tensor).__name__}")
    return np.asarray(tensor.detach().cpu().numpy())


def numpy_to_torch(array: np.ndarray, device: str = "cpu", dtype: Any = None) -> Any:
    """A numpy array as a torch tensor on `device` (sharing memory on the CPU when it can),
    converted to `dtype` if given. A read-only array (request tensors are decoded without a
    copy, straight from the message bytes) is copied: torch has no read-only tensors, and an
    in-place op would write into the request."""
    torch = _torch()
    array = np.asarray(array)
    tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    if dtype is not None:
        tensor = tensor.to(dtype)
    return tensor if device == "cpu" else tensor.to(device)


def torch_model(func: Callable[..., Any] | None = None, *, device: str = "cpu") -> Any:
    """Decorate a model (under `@app.model`) so numpy arguments arrive as torch tensors on
    `device` and a torch tensor result leaves as a numpy array. `@torch_model` or
    `@torch_model(device="cuda")`; sync or async functions."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        torch = _torch()
        return converting(
            fn, lambda array: numpy_to_torch(array, device), torch.Tensor, torch_to_numpy
        )

    return decorate(func) if func is not None else decorate
