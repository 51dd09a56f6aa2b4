"""`contrib.converting`, the body shared by `@torch_model` and `@tf_model`, with a stand-in
tensor type, so it is checked where neither framework is installed."""

from __future__ import annotations

import asyncio

import numpy as np

from blazerpc.contrib import converting


class Tensor:
    """A framework's tensor, as far as `converting` can tell."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


def to_numpy(tensor: Tensor) -> np.ndarray:
    return tensor.array


def test_numpy_arguments_arrive_as_tensors_and_tensor_results_leave_as_numpy() -> None:
    seen = []

    def model(x: object, label: str, *, y: object, scale: int) -> Tensor:
        seen.extend([type(x), type(label), type(y), type(scale)])
        assert isinstance(x, Tensor) and isinstance(y, Tensor)
        return Tensor(x.array * scale + y.array)

    wrapped = converting(model, Tensor, Tensor, to_numpy)
    out = wrapped(np.ones(3), "a", y=np.arange(3), scale=2)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, [2, 3, 4])
    assert seen == [Tensor, str, Tensor, int]  # only numpy arrays are converted
    assert wrapped.__name__ == "model"


def test_async_models_and_results_that_are_not_tensors() -> None:
    async def model(x: object) -> list[str]:
        assert isinstance(x, Tensor)
        return ["not", "a", "tensor"]

    wrapped = converting(model, Tensor, Tensor, to_numpy)
    assert asyncio.iscoroutinefunction(wrapped)
    assert asyncio.run(wrapped(np.zeros(2))) == ["not", "a", "tensor"]
