"""Python values <-> JSON, following the model's field specs; built once per model.

The JSON forms are the reference implementation's: a tensor is
`{"shape": [...], "dtype": "float", "data": "<base64 of little-endian bytes>"}`, bytes are
base64 strings, dataclasses and maps are objects. Received tensors go through codec's checks
exactly as native TensorProtos do, and every error names the field as the native path does.
A result is first checked by `convert` (protobuf's verdict, so 3.7 is no `int` here either),
then written in these forms.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, TypeGuard

import numpy as np

from ..codec import tensor_from_wire
from ..convert import converter
from ..exceptions import ValidationError
from ..types import _WIRE_NAME_OF, Field, ListOf, MapOf, Scalar, Tensor, TypeSpec
from .json_io import NON_FINITE

Decode = Callable[[Any, str], Any]
Encode = Callable[[Any], Any]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {str: "a string", int: "an integer", float: "a number", list: "an array"}.get(
        type(value), "an object"
    )


def _wrong(path: str, expected: str, value: Any) -> ValidationError:
    return ValidationError(f"field '{path}': expected {expected}, got {_kind(value)}", field=path)


def is_shape(value: Any) -> TypeGuard[list[int]]:
    """A JSON array of integers (a JSON `true` is no dimension, though Python's bool is an int)."""
    return isinstance(value, list) and all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    )


def _base64(value: Any, path: str) -> bytes:
    if not isinstance(value, str):
        raise _wrong(path, "a base64 string", value)
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValidationError(f"field '{path}': not valid base64: {exc}", field=path) from None


def _scalar_decoder(py: type) -> Decode:
    if py is bytes:
        return _base64
    if py is float:

        def number(value: Any, path: str) -> float:
            if isinstance(value, str) and value in NON_FINITE:
                return NON_FINITE[value]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _wrong(path, 'a number (or "NaN", "Infinity", "-Infinity")', value)
            try:
                return float(value)
            except OverflowError:
                raise ValidationError(
                    f"field '{path}': {value} is out of range for a 64-bit float", field=path
                ) from None

        return number

    def exact(value: Any, path: str) -> Any:
        # bool is an int in Python, never in JSON
        if not isinstance(value, py) or (py is int and isinstance(value, bool)):
            raise _wrong(path, _JSON_NAMES[py], value)
        if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
            raise ValidationError(
                f"field '{path}': {value} is out of range for a 64-bit integer", field=path
            )
        return value

    return exact


def _tensor_decoder(spec: Tensor) -> Decode:
    def tensor(value: Any, path: str) -> Any:
        if not isinstance(value, dict) or not {"shape", "dtype", "data"} <= value.keys():
            raise _wrong(path, 'a tensor object {"shape", "dtype", "data"}', value)
        shape, dtype = value["shape"], value["dtype"]
        if not is_shape(shape):
            raise _wrong(f"{path}.shape", "an array of integers", shape)
        if not isinstance(dtype, str):
            raise _wrong(f"{path}.dtype", "a string", dtype)
        data = _base64(value["data"], f"{path}.data")
        return tensor_from_wire(dtype, shape, data, spec, path)

    return tensor


def decoder(spec: TypeSpec) -> Decode:
    """How to turn one JSON value into the Python value `spec` describes."""
    if isinstance(spec, Scalar):
        return _scalar_decoder(spec.py)
    if isinstance(spec, Tensor):
        return _tensor_decoder(spec)
    if isinstance(spec, ListOf):
        item = decoder(spec.item)

        def items(value: Any, path: str) -> list[Any]:
            if not isinstance(value, list):
                raise _wrong(path, "an array", value)
            return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

        return items
    if isinstance(spec, MapOf):
        entry, int_keys = decoder(spec.value), spec.key is int

        def entries(value: Any, path: str) -> dict[Any, Any]:
            if not isinstance(value, dict):
                raise _wrong(path, "an object", value)
            out = {}
            for key, v in value.items():
                if int_keys:
                    try:
                        key = int(key)
                    except ValueError:
                        raise ValidationError(
                            f"field '{path}': key {key!r} is not an integer", field=path
                        ) from None
                out[key] = entry(v, f"{path}[{key!r}]")
            return out

        return entries
    read = fields_decoder(spec.fields)
    return lambda value, path: spec.cls(**read(value, path + "."))


def fields_decoder(fields: tuple[Field, ...]) -> Callable[[Any, str], dict[str, Any]]:
    """An object's fields as keyword arguments: null or absent takes the default, a required
    field missing or an unknown one is an error naming it."""
    decoders = {f.name: (f, decoder(f.type)) for f in fields}

    def read(value: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _wrong(prefix.rstrip(".") or "params", "an object", value)
        unknown = [k for k in value if k not in decoders]
        if unknown:
            raise ValidationError(
                f"unknown field '{prefix}{unknown[0]}'; the fields are: "
                + (", ".join(decoders) or "none"),
                field=prefix + unknown[0],
            )
        out = {}
        for name, (field, decode) in decoders.items():
            item = value.get(name)
            if item is not None:
                out[name] = decode(item, prefix + name)
            elif field.has_default:
                out[name] = field.default
            else:
                raise ValidationError(
                    f"missing required field '{prefix}{name}'", field=prefix + name
                )
        return out

    return read


def encoder(result: Field) -> Encode:
    """How to turn a model's result into JSON, once `convert` has checked it."""
    check, to_json = converter(result.type, result.name, result.optional), _json_form(result.type)
    return lambda value: None if (checked := check(value)) is None else to_json(checked)


def _tensor_json(arr: np.ndarray) -> dict[str, Any]:
    return {
        "shape": list(arr.shape),
        "dtype": _WIRE_NAME_OF[arr.dtype],
        "data": base64.b64encode(arr.tobytes()).decode(),
    }


def _json_form(spec: TypeSpec) -> Encode:
    """A checked value (as `convert` gives it) in its JSON form."""
    if isinstance(spec, Scalar):
        if spec.py is bytes:
            return lambda value: base64.b64encode(value).decode()
        return lambda value: value
    if isinstance(spec, Tensor):
        return _tensor_json
    if isinstance(spec, ListOf):
        item = _json_form(spec.item)
        return lambda value: [item(v) for v in value]
    if isinstance(spec, MapOf):
        entry = _json_form(spec.value)
        return lambda value: {str(k): entry(v) for k, v in value.items()}
    fields = [(f.name, _json_form(f.type)) for f in spec.fields]
    return lambda value: {name: form(value[name]) for name, form in fields if name in value}
