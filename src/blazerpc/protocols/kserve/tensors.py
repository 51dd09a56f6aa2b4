"""How model parameters and results travel as KServe v2 tensors, checked as the native path
checks them.

A parameter is one input tensor of its own name and the result is the output `result`.
Tensors keep their dtype and dims (a symbolic dim is -1 in metadata); Python scalars are
shape [1] tensors and lists of scalars 1-D tensors; str and bytes travel as BYTES. Datatype
names come from the one dtype table in `types`; received numeric data, raw bytes or element
lists alike, goes straight into an array checked by codec's `check_shape`, as native tensors
are; a result is checked by `convert`, as on every protocol.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...codec import tensor_from_bytes, tensor_from_elements
from ...convert import converter, result_array
from ...exceptions import ValidationError
from ...runtime.executor import drop_gradually
from ...types import KSERVE_NAME_OF, Field, ListOf, MapOf, Scalar, Struct, Tensor
from ..json_io import NON_FINITE

BYTES = "BYTES"
# The tensor dtype a Python scalar travels as; str and bytes travel as BYTES.
_SCALAR_DTYPES = {bool: np.dtype("?"), int: np.dtype("<i8"), float: np.dtype("<f8")}

# Where typed (non-raw) contents of each datatype live in InferTensorContents; FP16 has no
# field, so it only ever travels raw.
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# numpy kinds a typed or JSON element list may hold for each target kind (no float -> int).
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "fiu"}


class Unsupported(Exception):
    """A parameter or result whose type has no KServe tensor form (dataclass, dict, ...)."""


def _describe(spec: Any) -> str:
    if isinstance(spec, Struct):
        return f"a {spec.cls.__name__} dataclass"
    if isinstance(spec, MapOf):
        return "a dict"
    return "a list of tensors or dataclasses"


def split_bytes(data: bytes | memoryview, name: str, count: int | None = None) -> list[bytes]:
    """BYTES elements from their raw form: each a 4-byte little-endian length, then the bytes;
    with `count`, exactly that many, checked as they are read rather than after."""
    view, pos = memoryview(data), 0
    items: list[bytes] = []
    while pos < len(view):
        if count is not None and len(items) == count:
            raise ValidationError(
                f"input '{name}': BYTES data holds more than the {count} elements of its shape",
                field=name,
            )
        if pos + 4 > len(view):
            raise ValidationError(
                f"input '{name}': BYTES data ends inside an element's 4-byte length", field=name
            )
        (size,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if pos + size > len(view):
            raise ValidationError(
                f"input '{name}': a BYTES element claims {size} bytes, only "
                f"{len(view) - pos} remain",
                field=name,
            )
        items.append(bytes(view[pos : pos + size]))
        pos += size
    return items


def join_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _tensor_kind(spec: Any) -> tuple[str, type | None, Tensor]:
    """('tensor' | 'scalar' | 'list', the Python scalar type, the Tensor spec to check with)."""
    if isinstance(spec, Tensor):
        return "tensor", None, spec
    if isinstance(spec, Scalar):
        return "scalar", spec.py, _scalar_tensor(spec.py)
    if isinstance(spec, ListOf) and isinstance(spec.item, Scalar):
        return "list", spec.item.py, _scalar_tensor(spec.item.py)
    raise Unsupported(_describe(spec))


def _scalar_tensor(py: type) -> Tensor:
    return Tensor(_SCALAR_DTYPES.get(py), None)


class _TensorForm:
    """How a parameter's or a result's type travels as a KServe tensor."""

    def __init__(self, spec: Any) -> None:
        self._kind, self._py, self._tensor = _tensor_kind(spec)
        self._dtype = self._tensor.dtype
        self.datatype = BYTES if self._dtype is None else KSERVE_NAME_OF[self._dtype]
        if self._kind == "tensor":
            self.shape = [-1 if isinstance(d, str) else d for d in self._tensor.dims or ()]
        else:
            self.shape = [1] if self._kind == "scalar" else [-1]


class InputSpec(_TensorForm):
    """One model parameter as a KServe input tensor: its metadata, and how a received tensor
    is checked and turned into the keyword argument."""

    def __init__(self, field: Field) -> None:
        try:
            super().__init__(field.type)
        except Unsupported as exc:
            raise Unsupported(f"parameter '{field.name}' is {exc}") from None
        self.name = field.name
        self.required = not field.has_default
        self.default = field.default

    def _check_datatype(self, datatype: str) -> None:
        if datatype != self.datatype:
            raise ValidationError(
                f"input '{self.name}': expected datatype {self.datatype}, got '{datatype}'",
                field=self.name,
            )

    def from_raw(self, datatype: str, shape: Sequence[int], data: bytes | memoryview) -> Any:
        """The argument from a raw tensor (raw_input_contents, or the binary extension)."""
        self._check_datatype(datatype)
        if self._dtype is None:
            count = self._element_count(shape)
            return self._from_items(shape, split_bytes(data, self.name, count))
        arr = tensor_from_bytes(data, self._dtype, shape, self._tensor, self.name)
        return self._from_array(arr, shape)

    def from_values(self, datatype: str, shape: Sequence[int], values: Any) -> Any:
        """The argument from an element list: typed contents, or a JSON `data` array (nested
        row-major lists are fine). `values` is None where the datatype only travels raw."""
        self._check_datatype(datatype)
        if values is None:
            raise ValidationError(
                f"input '{self.name}': {datatype} data travels only as raw bytes "
                "(raw_input_contents, or binary data over HTTP)",
                field=self.name,
            )
        if self._dtype is None:
            return self._from_items(shape, [_element(v, self.name) for v in _flat(values)])
        flat = self._array(values, self._dtype, datatype).reshape(-1)
        return self._from_array(tensor_from_elements(flat, shape, self._tensor, self.name), shape)

    def _array(self, values: Any, dtype: np.dtype, datatype: str) -> np.ndarray:
        try:
            inferred = np.asarray(values)
            if inferred.dtype.kind == "U" and dtype.kind == "f":
                values = _non_finite(values)
                inferred = np.asarray(values)
            if inferred.size and inferred.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
                raise ValueError(f"{inferred.dtype.name} elements")
            return np.asarray(values, dtype=dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ValidationError(
                f"input '{self.name}': data does not fit datatype {datatype}: {exc}",
                field=self.name,
            ) from None

    def _check_count(self, shape: Sequence[int], count: int) -> None:
        what = "a list" if self._py is None or self._kind == "list" else f"a {self._py.__name__}"
        form = "of shape [1]" if self._kind == "scalar" else "of one dimension"
        if (self._kind == "scalar" and count != 1) or (self._kind == "list" and len(shape) != 1):
            raise ValidationError(
                f"input '{self.name}': {what} travels as a {self.datatype} tensor {form}, "
                f"got shape {list(shape)}",
                field=self.name,
            )

    def _from_array(self, arr: np.ndarray, shape: Sequence[int]) -> Any:
        if self._kind == "tensor":
            return arr
        self._check_count(shape, arr.size)
        return arr.item() if self._kind == "scalar" else arr.tolist()

    def _element_count(self, shape: Sequence[int]) -> int:
        """How many BYTES elements `shape` holds, refused before any is read if this input
        cannot take that many (a str or bytes parameter takes one)."""
        if any(d < 0 for d in shape):
            raise ValidationError(
                f"input '{self.name}': expected non-negative dimensions, got shape {list(shape)}",
                field=self.name,
            )
        count = math.prod(shape)
        self._check_count(shape, count)
        return count

    def _from_items(self, shape: Sequence[int], items: list[bytes]) -> Any:
        if any(d < 0 for d in shape) or math.prod(shape) != len(items):
            raise ValidationError(
                f"input '{self.name}': shape {list(shape)} does not match the "
                f"{len(items)} BYTES elements sent",
                field=self.name,
            )
        self._check_count(shape, len(items))
        values: list[Any] = items
        if self._py is str:
            try:
                values = [item.decode() for item in items]
            except UnicodeDecodeError as exc:
                raise ValidationError(
                    f"input '{self.name}': a str must be UTF-8: {exc}", field=self.name
                ) from None
            drop_gradually(items)  # the bytes, freed without holding the loop up
        return values[0] if self._kind == "scalar" else values


def _non_finite(values: Any) -> Any:
    """Floats sent as the strings "NaN", "Infinity", "-Infinity", as they are written."""
    if isinstance(values, list):
        return [_non_finite(v) for v in values]
    if isinstance(values, str):
        if values not in NON_FINITE:
            raise ValueError(f"the string element {values!r}")
        return NON_FINITE[values]
    return values


def _flat(values: Any) -> list[Any]:
    """Row-major elements of a possibly nested list (JSON allows either form)."""
    out: list[Any] = []
    for v in values:
        if isinstance(v, list):
            out.extend(_flat(v))
        else:
            out.append(v)
    return out


def _element(value: Any, name: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    raise ValidationError(
        f"input '{name}': a BYTES element must be str or bytes, got {type(value).__name__}",
        field=name,
    )


# A result ready to send: a numeric array, or the elements of a BYTES tensor.
Encoded = np.ndarray | list[bytes]


class OutputSpec(_TensorForm):
    """The model's result as the KServe output tensor `result`."""

    name = "result"

    def __init__(self, field: Field) -> None:
        try:
            super().__init__(field.type)
        except Unsupported as exc:
            raise Unsupported(f"its result is {exc}") from None
        # A tensor has no null: a None result is wrong here even where it is Optional.
        self._check = converter(field.type, field.name)

    def encode(self, value: Any) -> tuple[list[int], Encoded]:
        """The result's shape and data, checked by `convert` as on every protocol."""
        if self._kind == "tensor":
            arr = result_array(value, self._tensor, self.name)
            return list(arr.shape), arr
        checked = self._check(value)
        items = [checked] if self._kind == "scalar" else checked
        if self._dtype is None:
            return [len(items)], [v.encode() if isinstance(v, str) else v for v in items]
        return [len(items)], np.asarray(items, dtype=self._dtype)

    def raw(self, data: Encoded) -> bytes:
        """The protocol's raw form: little-endian bytes, or length-prefixed BYTES elements."""
        return data.tobytes() if isinstance(data, np.ndarray) else join_bytes(data)

    def elements(self, data: Encoded) -> list[Any]:
        """The flat element list, for typed contents and JSON."""
        return data.reshape(-1).tolist() if isinstance(data, np.ndarray) else data
