"""2.2.1's module name for the PyTorch helpers, which live in `blazerpc.contrib.torch`."""

from .torch import numpy_to_torch, torch_model, torch_to_numpy, warm_up

__all__ = ["numpy_to_torch", "torch_model", "torch_to_numpy", "warm_up"]
