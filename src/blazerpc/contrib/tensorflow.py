"""TensorFlow helpers: numpy <-> TensorFlow conversion and `@tf_model`, which hands a model
TF tensors and returns numpy arrays. Needs `pip install 'blazerpc[tensorflow]'`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import converting, require


def _tf() -> Any:
    return require("tensorflow", "tensorflow")


def tf_to_numpy(tensor: Any) -> np.ndarray:
    """A TensorFlow tensor as a numpy array."""
    tf = _tf()
    if not isinstance(tensor, tf.Tensor):
        raise TypeError(f"expected a tf.Tensor, got {type(tensor).__name__}")
    return np.asarray(tensor.numpy())


def numpy_to_tf(array: np.ndarray, dtype: Any = None) -> Any:
    """A numpy array as a TensorFlow tensor, cast to `dtype` if given."""
    tf = _tf()
    tensor = tf.convert_to_tensor(array)
    return tensor if dtype is None else tf.cast(tensor, dtype)


def tf_model(func: Callable[..., Any] | None = None, *, dtype: Any = None) -> Any:
    """Decorate a model (under `@app.model`) so numpy arguments arrive as TF tensors (cast to
    `dtype` if given) and a TF tensor result leaves as a numpy array; sync or async."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        tf = _tf()
        return converting(fn, lambda array: numpy_to_tf(array, dtype), tf.Tensor, tf_to_numpy)

    return decorate(func) if func is not None else decorate
