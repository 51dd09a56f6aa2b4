"""TensorFlow helpers: numpy <-> TensorFlow conversion and `@tf_model`, which hands a model
TF tensors and returns numpy arrays. Needs `pip install 'blazerpc[tensorflow]'`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from . import require


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

        def inputs(
            args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[list[Any], dict[str, Any]]:
            def convert(v: Any) -> Any:
                return numpy_to_tf(v, dtype) if isinstance(v, np.ndarray) else v

            return [convert(a) for a in args], {k: convert(v) for k, v in kwargs.items()}

        def output(result: Any) -> Any:
            return tf_to_numpy(result) if isinstance(result, tf.Tensor) else result

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                a, k = inputs(args, kwargs)
                return output(await fn(*a, **k))

            return run_async

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            a, k = inputs(args, kwargs)
            return output(fn(*a, **k))

        return run

    return decorate(func) if func is not None else decorate
