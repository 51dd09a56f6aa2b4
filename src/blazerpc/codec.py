"""Python values <-> protobuf messages, with tensor validation; built once per message type.

`Codec(cls, fields)` compiles, at start-up, one small function per field; the hot path only
calls them. Scalars are read straight off the message (protobuf's C runtime); tensors become
numpy views of the received bytes, checked against the declared dtype and dims.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .exceptions import ValidationError
from .types import _WIRE_NAME_OF, WIRE_DTYPES, Field, ListOf, MapOf, Scalar, Struct, Tensor

Decode = Callable[[Any, str], Any]
Fill = Callable[[Message, Any], None]

_EXPECTED_DTYPES = ", ".join(WIRE_DTYPES)


def decode_tensor(proto: Any, spec: Tensor, path: str) -> np.ndarray:
    """A TensorProto as a read-only numpy view of its bytes, or a ValidationError naming `path`."""
    dtype = WIRE_DTYPES.get(proto.dtype)
    if dtype is None:
        raise ValidationError(
            f"field '{path}': unknown dtype '{proto.dtype}'; expected one of {_EXPECTED_DTYPES}",
            field=path,
        )
    if spec.dtype is not None and dtype != spec.dtype:
        raise ValidationError(
            f"field '{path}': expected dtype '{spec.wire_dtype}', got '{proto.dtype}'", field=path
        )
    shape = tuple(proto.shape)
    if any(d < 0 for d in shape):
        raise ValidationError(
            f"field '{path}': expected non-negative dimensions, got shape {list(shape)}",
            field=path,
        )
    if spec.dims is not None:
        _check_dims(shape, spec.dims, path, ValidationError)
    data = proto.data
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValidationError(
            f"field '{path}': data holds {len(data)} bytes, expected {expected} "
            f"(shape {list(shape)} x {dtype.itemsize}-byte {proto.dtype})",
            field=path,
        )
    try:
        return np.frombuffer(data, dtype).reshape(shape)
    except ValueError as exc:  # numpy's own limits: too many dimensions, or an empty array too big
        raise ValidationError(
            f"field '{path}': shape {list(shape)} cannot be an array: {exc}", field=path
        ) from None


def _check_dims(
    shape: tuple[int, ...], dims: tuple[int | str, ...], path: str, error: Callable[..., Exception]
) -> None:
    if len(shape) != len(dims):
        raise error(
            f"field '{path}': expected {len(dims)} dimensions {_declared(dims)}, "
            f"got shape {list(shape)}"
        )
    for axis, (got, want) in enumerate(zip(shape, dims, strict=True)):
        if isinstance(want, int) and got != want:
            raise error(
                f"field '{path}': dimension {axis} must be {want} (shape {_declared(dims)}), "
                f"got shape {list(shape)}"
            )


def _declared(dims: tuple[int | str, ...]) -> str:
    return "[" + ", ".join(map(str, dims)) + "]"


def fill_tensor(proto: Any, value: Any, spec: Tensor, path: str = "result") -> None:
    """Write an array-like into a TensorProto, cast to the declared dtype if it is a safe kind."""
    arr = np.asarray(value)
    target = spec.dtype if spec.dtype is not None else arr.dtype.newbyteorder("<")
    if arr.dtype != target:
        arr = arr.astype(target, casting="same_kind")
    name = _WIRE_NAME_OF.get(arr.dtype)
    if name is None:
        raise TypeError(f"field '{path}': dtype {arr.dtype} cannot travel as a tensor")
    if spec.dims is not None:
        _check_dims(arr.shape, spec.dims, path, ValueError)
    proto.shape.extend(arr.shape)
    proto.dtype = name
    proto.data = arr.tobytes()


def _decoder(spec: Any) -> Decode | None:
    """How to turn a field's wire value into Python; None where it already is Python."""
    if isinstance(spec, Scalar):
        return None
    if isinstance(spec, Tensor):
        return lambda proto, path: decode_tensor(proto, spec, path)
    if isinstance(spec, Struct):
        read = _message_reader(spec.fields)
        return lambda msg, path: spec.cls(**read(msg, path + "."))
    if isinstance(spec, ListOf):
        item = _decoder(spec.item)
        if item is None:
            return lambda values, path: list(values)
        return lambda values, path: [item(v, f"{path}[{i}]") for i, v in enumerate(values)]
    if isinstance(spec, MapOf):
        value = _decoder(spec.value)
        if value is None:
            return lambda values, path: dict(values)
        return lambda values, path: {k: value(v, f"{path}[{k!r}]") for k, v in values.items()}
    raise TypeError(spec)


def _field_reader(field: Field) -> Callable[[Message, str], Any]:
    name, default, decode = field.name, field.default, _decoder(field.type)
    is_message = isinstance(field.type, (Tensor, Struct))
    if is_message and not field.optional:
        what = "a TensorProto" if isinstance(field.type, Tensor) else field.type.cls.__name__

        def required(msg: Message, prefix: str) -> Any:
            if not msg.HasField(name):
                raise ValidationError(
                    f"missing required field '{prefix}{name}': expected {what}",
                    field=prefix + name,
                )
            return decode(getattr(msg, name), prefix + name)  # type: ignore[misc]

        return required
    if is_message or (field.optional and isinstance(field.type, Scalar)):

        def present(msg: Message, prefix: str) -> Any:
            if not msg.HasField(name):
                return default
            value = getattr(msg, name)
            return value if decode is None else decode(value, prefix + name)

        return present
    if field.has_default:  # a list or map: proto3 cannot tell empty from absent

        def or_default(msg: Message, prefix: str) -> Any:
            value = getattr(msg, name)
            return decode(value, prefix + name) if value else default  # type: ignore[misc]

        return or_default
    if decode is None:
        return lambda msg, prefix: getattr(msg, name)
    return lambda msg, prefix: decode(getattr(msg, name), prefix + name)


def _message_reader(fields: tuple[Field, ...]) -> Callable[[Message, str], dict[str, Any]]:
    readers = [(f.name, _field_reader(f)) for f in fields]
    return lambda msg, prefix: {name: read(msg, prefix) for name, read in readers}


def _filler(spec: Any, name: str) -> Fill:
    """How to set field `name` of a message from a Python value."""
    if isinstance(spec, Scalar):
        return lambda msg, value: setattr(msg, name, value)
    if isinstance(spec, Tensor):
        return lambda msg, value: fill_tensor(getattr(msg, name), value, spec, name)
    if isinstance(spec, Struct):
        fill = _message_filler(spec.fields)

        def fill_struct(msg: Message, value: Any) -> None:
            sub = getattr(msg, name)
            sub.SetInParent()  # present even when every field holds its default
            fill(sub, value)

        return fill_struct
    if isinstance(spec, ListOf):
        if isinstance(spec.item, Scalar):
            return lambda msg, values: getattr(msg, name).extend(values)
        item = _element_filler(spec.item)

        def fill_list(msg: Message, values: Any) -> None:
            container = getattr(msg, name)
            for value in values:
                item(container.add(), value)

        return fill_list
    if isinstance(spec, MapOf):
        if isinstance(spec.value, Scalar):
            return lambda msg, values: getattr(msg, name).update(values)
        entry = _element_filler(spec.value)

        def fill_map(msg: Message, values: Any) -> None:
            container = getattr(msg, name)
            for key, value in values.items():
                entry(container[key], value)

        return fill_map
    raise TypeError(spec)


def _element_filler(spec: Tensor | Struct) -> Callable[[Message, Any], None]:
    if isinstance(spec, Tensor):
        return lambda proto, value: fill_tensor(proto, value, spec)
    return _message_filler(spec.fields)


def _message_filler(fields: tuple[Field, ...]) -> Callable[[Message, Any], None]:
    """Fill a message from a dataclass instance or a mapping; None leaves a field unset."""
    fillers = [(f.name, _filler(f.type, f.name)) for f in fields]

    def fill(msg: Message, value: Any) -> None:
        get = (
            value.get
            if isinstance(value, Mapping)
            else (lambda key, default: getattr(value, key, default))
        )
        for name, set_field in fillers:
            item = get(name, None)
            if item is not None:
                set_field(msg, item)

    return fill


def _is_plain(spec: Any) -> bool:
    if isinstance(spec, ListOf):
        return isinstance(spec.item, Scalar)
    if isinstance(spec, MapOf):
        return isinstance(spec.value, Scalar)
    return isinstance(spec, Scalar)


class Codec:
    """Converts between one message class and keyword arguments described by `fields`.

    `decode(msg)` gives the keyword arguments of a parsed message and raises a ValidationError
    naming the field; it is compiled per message type, with a fast path for plain scalars.
    """

    decode: Callable[[Message], dict[str, Any]]

    def __init__(self, cls: type[Message], fields: tuple[Field, ...]) -> None:
        self.cls = cls
        self.fields = fields
        self._fill = _message_filler(fields)
        # Messages of scalars, and lists and maps of them, go through protobuf's own constructor.
        self._constructor_ok = all(_is_plain(f.type) for f in fields)
        read = _message_reader(fields)
        self.decode = _fast_reader(fields) or (lambda msg: read(msg, ""))

    def wrap(self, value: Any) -> Message:
        """The message of a single-field type (a response) holding `value`; a value of the
        wrong type is a TypeError naming the field (the server's fault, so INTERNAL)."""
        name = self.fields[0].name
        try:
            if self._constructor_ok:
                return self.cls(**{name: value})
            msg = self.cls()
            self._fill(msg, {name: value})
            return msg
        except (TypeError, ValueError) as exc:
            raise TypeError(self._mismatch(name, value, exc)) from None

    def encode(self, values: Mapping[str, Any]) -> Message:
        """A message from keyword values (None and missing keys stay unset); a value of the
        wrong type is a ValidationError naming the field."""
        try:
            if self._constructor_ok:
                return self.cls(**{k: v for k, v in values.items() if v is not None})
            msg = self.cls()
            self._fill(msg, values)
            return msg
        except (TypeError, ValueError) as exc:
            name = next((k for k in values if self._fails(k, values[k])), None)
            if name is None:
                raise
            raise ValidationError(self._mismatch(name, values[name], exc), field=name) from None

    def _fails(self, name: str, value: Any) -> bool:
        try:
            self._fill(self.cls(), {name: value})
        except (TypeError, ValueError):
            return True
        return False

    def _mismatch(self, name: str, value: Any, exc: Exception) -> str:
        field = self.cls.DESCRIPTOR.fields_by_name[name]
        kind = field.message_type.name if field.message_type else _PROTO_TYPE_NAMES[field.type]
        if field.is_repeated:
            kind = f"repeated {kind}"
        return f"field '{name}': expected {kind}, got {type(value).__name__} ({exc})"


_PROTO_TYPE_NAMES = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_BYTES: "bytes",
}


def _fast_reader(fields: tuple[Field, ...]) -> Callable[[Message], dict[str, Any]] | None:
    """For messages of required scalars only (the common case), read them in one C call."""
    if not fields or not all(isinstance(f.type, Scalar) and not f.optional for f in fields):
        return None
    names = tuple(f.name for f in fields)
    if len(names) == 1:
        (name,) = names
        return lambda msg: {name: getattr(msg, name)}
    get = operator.attrgetter(*names)
    return lambda msg: dict(zip(names, get(msg), strict=True))
