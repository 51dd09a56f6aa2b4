"""What a model may return for its declared type, decided once for every protocol.

The native service hands a result to protobuf, which refuses 3.7 for an int64 and 123 for a
string; JSON and KServe build their replies without protobuf, so they ask this module, whose
checks are protobuf's: an `int` takes ints and numpy integers (not bool, not float, within
int64), a `float` any real number, a `bool` bools and integers, a `str` str or UTF-8 bytes,
`bytes` only bytes. A result that fails is `WrongResult`, which the call pipeline turns into
one INTERNAL error naming the model, the field, what was declared and what came.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .types import _WIRE_NAME_OF, Field, ListOf, MapOf, Scalar, Struct, Tensor, TypeSpec

Convert = Callable[[Any], Any]

_INT64 = (-(2**63), 2**63 - 1)


class WrongResult(TypeError):
    """A result (or a part of it, at `path`) that its declared type cannot carry."""

    def __init__(self, path: str, declared: str, value: Any, reason: str = "") -> None:
        got = "None" if value is None else f"{type(value).__name__} {_short(value)}"
        super().__init__(
            f"returned {got} for field '{path}', declared {declared}"
            + (f" ({reason})" if reason else "")
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def declared(spec: TypeSpec) -> str:
    """A type as the user annotated it, for error messages."""
    if isinstance(spec, Scalar):
        return spec.py.__name__
    if isinstance(spec, Tensor):
        dims = ", ".join(map(str, spec.dims or ()))
        return f"a tensor of {spec.wire_dtype or 'any dtype'}" + (f" [{dims}]" if dims else "")
    if isinstance(spec, ListOf):
        return f"list[{declared(spec.item)}]"
    if isinstance(spec, MapOf):
        return f"dict[{spec.key.__name__}, {declared(spec.value)}]"
    return spec.cls.__name__


def _int64(value: Any) -> int:
    number = operator.index(value)
    if not _INT64[0] <= number <= _INT64[1]:
        raise ValueError("out of the int64 range")
    return number


def _to_int(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError
    return _int64(value)


def _to_float(value: Any) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating, np.bool_)):
        raise TypeError
    return float(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return bool(_int64(value))


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    raise TypeError


def _to_bytes(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError
    return value


_SCALARS: dict[type, Convert] = {
    int: _to_int,
    float: _to_float,
    bool: _to_bool,
    str: _to_str,
    bytes: _to_bytes,
}


def scalar(py: type, path: str) -> Convert:
    """The value of a `py` scalar field as protobuf would store it, or WrongResult."""
    to, name = _SCALARS[py], py.__name__

    def convert(value: Any) -> Any:
        try:
            return to(value)
        except TypeError:
            raise WrongResult(path, name, value) from None
        except ValueError as exc:  # out of range, or bytes that are not UTF-8
            raise WrongResult(path, name, value, str(exc)) from None

    return convert


def result_array(value: Any, spec: Tensor, path: str = "result") -> np.ndarray:
    """An array-like result as the declared tensor: cast to its dtype if numpy calls that a
    safe kind of cast (float64 -> float32, never float -> int), little-endian, dims checked."""
    try:
        arr = np.asarray(value)
        target = spec.dtype if spec.dtype is not None else arr.dtype.newbyteorder("<")
        if arr.dtype != target:
            arr = arr.astype(target, casting="same_kind")
    except (TypeError, ValueError) as exc:
        raise WrongResult(path, declared(spec), value, str(exc)) from None
    if arr.dtype not in _WIRE_NAME_OF:
        raise WrongResult(path, declared(spec), value, f"dtype {arr.dtype} has no tensor form")
    if spec.dims is not None and not dims_fit(spec.dims)(arr.shape):
        problem = dims_problem(arr.shape, spec.dims)
        if problem:
            raise WrongResult(path, declared(spec), value, problem)
    return arr


@functools.cache
def dims_fit(dims: tuple[int | str, ...]) -> Callable[[tuple[int, ...]], bool]:
    """A fast yes for a shape that fits `dims`, built once per declaration: the rank, then the
    fixed sizes compared in one C call (`dims_problem` words the answer when it is no)."""
    rank = len(dims)
    fixed = [(axis, size) for axis, size in enumerate(dims) if isinstance(size, int)]
    if not fixed:
        return lambda shape: len(shape) == rank
    get = operator.itemgetter(*(axis for axis, _ in fixed))
    sizes = fixed[0][1] if len(fixed) == 1 else tuple(size for _, size in fixed)
    return lambda shape: len(shape) == rank and get(shape) == sizes


def dims_problem(shape: tuple[int, ...], dims: tuple[int | str, ...]) -> str | None:
    """What is wrong with `shape` for the declared `dims`, or None."""
    if len(shape) != len(dims):
        return f"expected {len(dims)} dimensions {_dims(dims)}, got shape {list(shape)}"
    for axis, (got, want) in enumerate(zip(shape, dims, strict=True)):
        if isinstance(want, int) and got != want:
            return f"dimension {axis} must be {want} (shape {_dims(dims)}), got shape {list(shape)}"
    return None


def _dims(dims: tuple[int | str, ...]) -> str:
    return "[" + ", ".join(map(str, dims)) + "]"


def converter(spec: TypeSpec, path: str, optional: bool = False) -> Convert:
    """The checked Python value of a whole result (a tensor becomes an ndarray, a dataclass a
    dict of its set fields), for protocols that build replies without protobuf."""
    convert = _converter(spec, path)
    if optional:
        return lambda value: None if value is None else convert(value)

    def required(value: Any) -> Any:
        if value is None:
            raise WrongResult(path, declared(spec), value)
        return convert(value)

    return required


def _converter(spec: TypeSpec, path: str) -> Convert:
    if isinstance(spec, Scalar):
        return scalar(spec.py, path)
    if isinstance(spec, Tensor):
        return lambda value: result_array(value, spec, path)
    if isinstance(spec, ListOf):
        item = converter(spec.item, f"{path}[]")

        def items(value: Any) -> list[Any]:
            if not hasattr(value, "__iter__"):  # protobuf extends a repeated field by any
                raise WrongResult(path, declared(spec), value)
            return [item(v) for v in value]

        return items
    if isinstance(spec, MapOf):
        key = scalar(spec.key, f"{path} key")
        entry = converter(spec.value, f"{path}[]")

        def entries(value: Any) -> dict[Any, Any]:
            if not isinstance(value, Mapping):
                raise WrongResult(path, declared(spec), value)
            return {key(k): entry(v) for k, v in value.items()}

        return entries
    return _struct(spec, path)


def _struct(spec: Struct, path: str) -> Convert:
    fields = [(f.name, _field(f, f"{path}.{f.name}")) for f in spec.fields]

    def struct(value: Any) -> dict[str, Any]:
        # As protobuf is filled: from a mapping, or from any object's attributes.
        if isinstance(value, Mapping):
            present = ((name, convert, value.get(name)) for name, convert in fields)
        else:
            present = ((name, convert, getattr(value, name, None)) for name, convert in fields)
        return {name: convert(v) for name, convert, v in present if v is not None}

    return struct


def _field(field: Field, path: str) -> Convert:
    # A dataclass field left None is unset, as protobuf leaves it.
    return _converter(field.type, path)
