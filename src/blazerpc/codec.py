"""Python values <-> protobuf messages, with tensor validation; built once per message type.

`Codec(cls, fields)` compiles, at start-up, one small function per field; the hot path only
calls them. Scalars are read straight off the message (protobuf's C runtime); tensors become
numpy views of the received bytes, checked against the declared dtype and dims.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .convert import WrongResult, converter, declared, dims_fit, dims_problem, result_array
from .exceptions import ValidationError
from .types import (
    _WIRE_NAME_OF,
    WIRE_DTYPES,
    Field,
    ListOf,
    MapOf,
    Scalar,
    Struct,
    Tensor,
    TypeSpec,
)

Decode = Callable[[Any, str], Any]
Fill = Callable[[Message, Any], None]

_EXPECTED_DTYPES = ", ".join(WIRE_DTYPES)


def decode_tensor(proto: Any, spec: Tensor, path: str) -> np.ndarray:
    """A TensorProto as a read-only numpy view of its bytes, or a ValidationError naming `path`."""
    return tensor_from_wire(proto.dtype, proto.shape, proto.data, spec, path)


def tensor_from_wire(
    dtype_name: str, shape: Sequence[int], data: bytes | memoryview, spec: Tensor, path: str
) -> np.ndarray:
    """A tensor in the native form (dtype by wire name, shape, raw bytes), checked."""
    dtype = WIRE_DTYPES.get(dtype_name)
    if dtype is None:
        raise ValidationError(
            f"field '{path}': unknown dtype '{dtype_name}'; expected one of {_EXPECTED_DTYPES}",
            field=path,
        )
    if spec.dtype is not None and dtype != spec.dtype:
        raise ValidationError(
            f"field '{path}': expected dtype '{spec.wire_dtype}', got '{dtype_name}'", field=path
        )
    return tensor_from_bytes(data, dtype, shape, spec, path)


def check_shape(shape: Sequence[int], spec: Tensor, path: str) -> tuple[int, ...]:
    """The one check of a received tensor's shape, whichever protocol carried it: no negative
    dimension, and the declared number of dimensions and fixed sizes."""
    shape = tuple(shape)
    if shape and min(shape) < 0:
        raise ValidationError(
            f"field '{path}': expected non-negative dimensions, got shape {list(shape)}",
            field=path,
        )
    if spec.dims is not None and not dims_fit(spec.dims)(shape):
        problem = dims_problem(shape, spec.dims)
        if problem is not None:
            raise ValidationError(f"field '{path}': {problem}", field=path)
    return shape


def tensor_from_bytes(
    data: bytes | memoryview, dtype: np.dtype, shape: Sequence[int], spec: Tensor, path: str
) -> np.ndarray:
    """Raw little-endian bytes as a read-only array of `shape`, checked."""
    shape = check_shape(shape, spec, path)
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValidationError(
            f"field '{path}': data holds {len(data)} bytes, expected {expected} "
            f"(shape {list(shape)} x {dtype.itemsize}-byte {_WIRE_NAME_OF[dtype]})",
            field=path,
        )
    try:
        return np.frombuffer(data, dtype).reshape(shape)
    except ValueError as exc:  # numpy's own limits: too many dimensions, or an empty array too big
        raise ValidationError(
            f"field '{path}': shape {list(shape)} cannot be an array: {exc}", field=path
        ) from None


def tensor_from_elements(
    elements: np.ndarray, shape: Sequence[int], spec: Tensor, path: str
) -> np.ndarray:
    """A flat array of elements (protocols that send numbers, not bytes) as a read-only array
    of `shape`, checked: read-only like one decoded from bytes, so a model sees the same
    inputs whatever the protocol."""
    shape = check_shape(shape, spec, path)
    expected = math.prod(shape)
    if elements.size != expected:
        raise ValidationError(
            f"field '{path}': shape {list(shape)} needs {expected} elements, got {elements.size}",
            field=path,
        )
    arr = elements.reshape(shape)
    arr.flags.writeable = False
    return arr


def fill_tensor(proto: Any, value: Any, spec: Tensor, path: str = "result") -> None:
    """Write an array-like into a TensorProto, cast to the declared dtype if it is a safe kind."""
    arr = result_array(value, spec, path)
    _write_tensor(proto, arr, _WIRE_NAME_OF[arr.dtype])


def _write_tensor(proto: Any, arr: np.ndarray, wire_dtype: str) -> None:
    proto.shape.extend(arr.shape)
    proto.dtype = wire_dtype
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
        what = field.type.cls.__name__ if isinstance(field.type, Struct) else "a TensorProto"
        assert decode is not None  # tensors and dataclasses always decode
        read = decode

        def required(msg: Message, prefix: str) -> Any:
            if not msg.HasField(name):
                raise ValidationError(
                    f"missing required field '{prefix}{name}': expected {what}",
                    field=prefix + name,
                )
            return read(getattr(msg, name), prefix + name)

        if isinstance(field.type, Tensor):
            return _fitting_tensor(name, field.type, required)
        return required
    if is_message or (field.optional and isinstance(field.type, Scalar)):

        def present(msg: Message, prefix: str) -> Any:
            if not msg.HasField(name):
                return default
            value = getattr(msg, name)
            return value if decode is None else decode(value, prefix + name)

        return present
    if field.has_default:  # a list or map: proto3 cannot tell empty from absent
        assert decode is not None  # lists and maps always decode
        read_list = decode

        def or_default(msg: Message, prefix: str) -> Any:
            value = getattr(msg, name)
            return read_list(value, prefix + name) if value else default

        return or_default
    if decode is None:
        return lambda msg, prefix: getattr(msg, name)
    return lambda msg, prefix: decode(getattr(msg, name), prefix + name)


def _fitting_tensor(
    name: str, spec: Tensor, checked: Callable[[Message, str], Any]
) -> Callable[[Message, str], Any]:
    """Field `name`, a required tensor, read in one step when it is what was declared (dtype,
    dims, byte count), as nearly every request is; anything else goes to `checked`, which
    says what is wrong. A message whose dtype matches was sent: an absent one's is empty."""
    if spec.dtype is None or spec.dims is None:
        return checked
    wire, dtype, itemsize = spec.wire_dtype, spec.dtype, spec.dtype.itemsize
    fits, prod, frombuffer = dims_fit(spec.dims), math.prod, np.frombuffer
    free = any(isinstance(size, str) for size in spec.dims)  # a size that may come negative

    def fitting(msg: Message, prefix: str) -> Any:
        proto = getattr(msg, name)
        if proto.dtype == wire:
            shape = tuple(proto.shape)
            data = proto.data
            if (
                fits(shape)
                and len(data) == prod(shape) * itemsize
                and not (free and min(shape) < 0)
            ):
                try:
                    return frombuffer(data, dtype).reshape(shape)
                except ValueError:  # numpy's own limits, which `checked` words
                    pass
        return checked(msg, prefix)

    return fitting


def _message_reader(fields: tuple[Field, ...]) -> Callable[[Message, str], dict[str, Any]]:
    readers = [(f.name, _field_reader(f)) for f in fields]
    if len(readers) == 1:  # most models take one argument: no loop to set up
        ((name, read),) = readers
        return lambda msg, prefix: {name: read(msg, prefix)}
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


def _element_filler(spec: TypeSpec) -> Callable[[Message, Any], None]:
    """How to fill one message element of a list or map: a tensor or a dataclass."""
    if isinstance(spec, Tensor):
        return lambda proto, value: fill_tensor(proto, value, spec)
    if isinstance(spec, Struct):
        return _message_filler(spec.fields)
    raise TypeError(spec)


def _message_filler(fields: tuple[Field, ...]) -> Callable[[Message, Any], None]:
    """Fill a message from a dataclass instance or a mapping; None leaves a field unset."""
    fillers = [(f.name, _filler(f.type, f.name)) for f in fields]

    def fill(msg: Message, value: Any) -> None:
        for name, set_field in fillers:
            item = value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)
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
    wrap: Callable[[Any], Message]

    def __init__(self, cls: type[Message], fields: tuple[Field, ...]) -> None:
        self.cls = cls
        self.fields = fields
        self._fill = _message_filler(fields)
        # Messages of scalars, and lists and maps of them, go through protobuf's own constructor.
        self._constructor_ok = all(_is_plain(f.type) for f in fields)
        read = _message_reader(fields)
        self.decode = _fast_reader(fields) or (lambda msg: read(msg, ""))
        self.wrap = _fitting_result(cls, fields[0], self._wrap) if fields else self._wrap

    def _wrap(self, value: Any) -> Message:
        """`wrap(value)`: the message of a single-field type (a response) holding `value`.
        Protobuf checks the value; one it refuses (or None for a required result) is
        WrongResult, with the verdict of `convert`, as on every other protocol."""
        field = self.fields[0]
        if value is None and not field.optional:
            raise WrongResult(field.name, declared(field.type), value)
        try:
            if self._constructor_ok:
                return self.cls(**{field.name: value})
            msg = self.cls()
            self._fill(msg, {field.name: value})
            return msg
        except (TypeError, ValueError, OverflowError) as exc:
            converter(field.type, field.name, field.optional)(value)  # raises with its verdict
            raise WrongResult(field.name, declared(field.type), value, str(exc)) from None

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


def _fitting_result(
    cls: type[Message], field: Field, checked: Callable[[Any], Message]
) -> Callable[[Any], Message]:
    """`Codec.wrap` for a tensor result, in one step when the model returned an array of the
    declared dtype and dims, as nearly every model does; anything else goes to `checked`,
    which casts it or says what is wrong."""
    spec = field.type
    if not isinstance(spec, Tensor) or spec.dtype is None or spec.dims is None:
        return checked
    name, dtype, wire, fits, ndarray = (
        field.name,
        spec.dtype,
        spec.wire_dtype,
        dims_fit(spec.dims),
        np.ndarray,
    )
    assert wire is not None

    def fitting(value: Any) -> Message:
        if type(value) is ndarray and value.dtype == dtype and fits(value.shape):
            msg = cls()
            _write_tensor(getattr(msg, name), value, wire)
            return msg
        return checked(value)

    return fitting


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
