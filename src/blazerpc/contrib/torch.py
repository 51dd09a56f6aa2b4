"""Serving PyTorch models: `@torch_model` hands a model torch tensors and returns numpy arrays,
runs it under `torch.inference_mode()`, optionally caps how many forwards run at once, and
divides the machine's cores between `blaze serve --workers`; `warm_up` runs it once at
start-up. Needs `pip install 'blazerpc[pytorch]'`.

Request tensors are decoded without a copy, as read-only views of the request's bytes, and
`@torch_model` hands them to the model without a copy too. Torch has no read-only tensors, so
an in-place op on an input (`x.add_(1)`) would write into the request's buffer: treat inputs
as read-only and write `x = x.clone()` first where a model must edit in place.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ..exceptions import ConfigurationError
from ..runtime.executor import RUNS_ATTRIBUTE
from . import converting, require, thread_share

# Arrays this small are copied: a copy costs nothing at this size, and CPython shares the
# `bytes` objects of zero or one byte, which an in-place op on a view would corrupt.
_COPY_BELOW_BYTES = 64


def _torch() -> Any:
    return require("torch", "pytorch")


def torch_to_numpy(tensor: Any) -> np.ndarray:
    """A torch tensor as a numpy array (detached, on the CPU; bfloat16, which numpy lacks, as
    float32)."""
    torch = _torch()
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(tensor).__name__}")
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return np.asarray(tensor.numpy())


def numpy_to_torch(array: np.ndarray, device: str = "cpu", dtype: Any = None) -> Any:
    """A numpy array as a torch tensor on `device` (sharing memory on the CPU when it can),
    converted to `dtype` if given. A read-only array is copied, so the tensor may be written
    to; `@torch_model` shares it instead (see the module's docstring)."""
    torch = _torch()
    array = np.asarray(array)
    tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    if dtype is not None:
        tensor = tensor.to(dtype)
    return tensor if device == "cpu" else tensor.to(device)


class _Unlocked:
    """A read-only array's memory as numpy's array interface without the read-only flag, so
    `torch.from_numpy` shares it without its warning (torch has no read-only tensors; the
    module's docstring says why inputs are still not to be written to). It holds the array,
    and so the request's bytes, for as long as the tensor lives."""

    __slots__ = ("__array_interface__", "_array")

    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        interface = dict(array.__array_interface__)
        interface["data"] = (interface["data"][0], False)
        self.__array_interface__ = interface


def _shared(array: np.ndarray, device: Any, dtype: Any) -> Any:
    """A request's array as a tensor on `device` without a copy where torch allows one;
    floating-point arrays converted to `dtype` if given (integer ids are left alone)."""
    torch = _torch()
    if array.nbytes < _COPY_BELOW_BYTES:
        array = array.copy()
    elif not array.flags.writeable:
        array = np.asarray(_Unlocked(array))
    tensor = torch.from_numpy(array)
    if dtype is not None and tensor.is_floating_point():
        return tensor.to(device=device, dtype=dtype)
    return tensor.to(device)


def _to_numpy(torch: Any, result: Any) -> Any:
    """A model's result with its tensors (alone, or in a tuple, list or dict) as numpy."""
    if isinstance(result, torch.Tensor):
        return torch_to_numpy(result)
    if isinstance(result, tuple | list):
        return type(result)(_to_numpy(torch, item) for item in result)
    if isinstance(result, dict):
        return {key: _to_numpy(torch, value) for key, value in result.items()}
    return result


def torch_model(
    func: Callable[..., Any] | None = None,
    *,
    device: str = "cpu",
    dtype: Any = None,
    concurrency: int | None = None,
    threads: int | None = None,
) -> Any:
    """Decorate a model (under `@app.model`) so numpy arguments arrive as torch tensors on
    `device` (floating-point ones as `dtype` if given) and torch results leave as numpy.

    A plain `def` model runs under `torch.inference_mode()`, in the server's thread pool like
    any plain `def` model. `concurrency=N` caps the calls running at once in this worker
    (calls beyond it wait on the event loop, holding no thread), e.g. to bound a GPU's memory.
    `threads` sets torch's threads for the process (default: this process's cores divided
    between `--workers`). An `async def` model is only converted: it runs on the event loop,
    where it should await, not compute.

    `@torch_model` or `@torch_model(device="cuda", dtype=torch.float16, concurrency=1)`.
    """
    if concurrency is not None and concurrency < 1:
        raise ConfigurationError(f"torch_model: concurrency must be at least 1, got {concurrency}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        torch = _torch()
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise ConfigurationError(
                f"torch_model: '{fn.__name__}' is a generator; decorate the functions it calls"
            )
        torch.set_num_threads(threads or thread_share())
        to_device = torch.device(device)
        if inspect.iscoroutinefunction(fn):
            return converting(
                fn, lambda a: _shared(a, to_device, dtype), torch.Tensor, torch_to_numpy
            )
        forward = _forward(fn, torch, to_device, dtype)
        if concurrency is None:

            @functools.wraps(fn)
            def run(*args: Any, **kwargs: Any) -> Any:
                return forward(args, kwargs)

            return run
        return _gated(fn, forward, concurrency)

    return decorate(func) if func is not None else decorate


def _forward(
    fn: Callable[..., Any], torch: Any, device: Any, dtype: Any
) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
    """`fn` on converted arguments, in inference mode, its tensors returned as numpy."""

    def convert(value: Any) -> Any:
        return _shared(value, device, dtype) if isinstance(value, np.ndarray) else value

    def forward(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with torch.inference_mode():
            result = fn(*map(convert, args), **{k: convert(v) for k, v in kwargs.items()})
            return _to_numpy(torch, result)

    return forward


def _gated(
    fn: Callable[..., Any],
    forward: Callable[[tuple[Any, ...], dict[str, Any]], Any],
    concurrency: int,
) -> Callable[..., Awaitable[Any]]:
    """`forward` in a thread, at most `concurrency` at once; the others wait on the loop."""
    # One gate per event loop: an asyncio.Semaphore belongs to the loop that first awaits it.
    gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
        weakref.WeakKeyDictionary()
    )

    @functools.wraps(fn)
    async def run(*args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        gate = gates.get(loop)
        if gate is None:
            gate = gates[loop] = asyncio.Semaphore(concurrency)
        await gate.acquire()
        try:
            call = functools.partial(contextvars.copy_context().run, forward, args, kwargs)
            done = loop.run_in_executor(None, call)
        except BaseException:
            gate.release()
            raise
        # Released when the forward really ends: a caller that gives up (deadline, cancel)
        # does not stop a running thread, so its slot stays taken until then.
        done.add_done_callback(functools.partial(_ended, gate))
        return await asyncio.shield(done)

    # For the `blaze serve` banner: awaited on the loop, but the forward runs in a thread.
    at_once = "one call" if concurrency == 1 else f"{concurrency} calls"
    run.__dict__[RUNS_ATTRIBUTE] = f"in threads, {at_once} at a time (torch_model)"
    return run


def _ended(gate: asyncio.Semaphore, done: asyncio.Future[Any]) -> None:
    gate.release()
    if not done.cancelled():
        done.exception()  # read, so a forward whose caller left is not logged as unretrieved


def warm_up(model: Callable[..., Any], **example: Any) -> Callable[[], Awaitable[None]]:
    """A start-up hook that runs `model` once on `example` (its keyword arguments), so the
    first request does not pay for lazy initialisation (allocators, kernels, thread pools):
    `app.on_startup(warm_up(classify, x=np.zeros((1, 4), np.float32)))`. Health stays
    NOT_SERVING until it has run."""

    async def hook() -> None:
        result = model(**example)
        if inspect.isawaitable(result):
            await result

    return hook
