"""The registry becomes one FileDescriptorProto; message classes and .proto text derive from it.

The descriptor is the single source of truth: the server's message classes, the reflection
service, `blaze proto` and the client's discovery all read it, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message

from .exceptions import ConfigurationError
from .runtime.registry import ModelEntry
from .types import Field, ListOf, MapOf, Scalar, Struct, Tensor, TypeSpec

PACKAGE = "blazerpc"
SERVICE = "InferenceService"
SERVICE_FULL_NAME = f"{PACKAGE}.{SERVICE}"
FILE_NAME = "blaze_service.proto"
TENSOR_MESSAGE = "TensorProto"

_FDP = descriptor_pb2.FieldDescriptorProto
_SCALAR_TYPES = {
    str: _FDP.TYPE_STRING,
    int: _FDP.TYPE_INT64,
    float: _FDP.TYPE_FLOAT,  # 2.2.1's wire contract; BlazeApp(float64=True) makes it double
    bool: _FDP.TYPE_BOOL,
    bytes: _FDP.TYPE_BYTES,
}


@dataclass(frozen=True)
class Schema:
    """The built schema: its descriptor pool and the request/response classes of each model."""

    pool: descriptor_pool.DescriptorPool
    file: FileDescriptor

    def message_class(self, name: str) -> type[Message]:
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))

    def request_class(self, rpc: str) -> type[Message]:
        return self.message_class(f"{rpc}Request")

    def response_class(self, rpc: str) -> type[Message]:
        return self.message_class(f"{rpc}Response")

    def proto_text(self) -> str:
        return proto_text(self.file)


def _tensor_message() -> descriptor_pb2.DescriptorProto:
    msg = descriptor_pb2.DescriptorProto(name=TENSOR_MESSAGE)
    msg.field.add(name="shape", number=1, type=_FDP.TYPE_INT64, label=_FDP.LABEL_REPEATED)
    msg.field.add(name="dtype", number=2, type=_FDP.TYPE_STRING, label=_FDP.LABEL_OPTIONAL)
    msg.field.add(name="data", number=3, type=_FDP.TYPE_BYTES, label=_FDP.LABEL_OPTIONAL)
    return msg


class _FileBuilder:
    """Adds messages to one FileDescriptorProto, each dataclass once."""

    def __init__(self, float64: bool = False) -> None:
        self.file = descriptor_pb2.FileDescriptorProto(
            name=FILE_NAME, package=PACKAGE, syntax="proto3"
        )
        self._scalars = {**_SCALAR_TYPES, float: _FDP.TYPE_DOUBLE} if float64 else _SCALAR_TYPES
        self.file.message_type.append(_tensor_message())
        self._structs: dict[str, type] = {}

    def _set_type(self, fdp: descriptor_pb2.FieldDescriptorProto, spec: TypeSpec) -> None:
        if isinstance(spec, Scalar):
            fdp.type = self._scalars[spec.py]
        elif isinstance(spec, Tensor):
            fdp.type, fdp.type_name = _FDP.TYPE_MESSAGE, f".{PACKAGE}.{TENSOR_MESSAGE}"
        elif isinstance(spec, Struct):
            self.add_struct(spec)
            fdp.type, fdp.type_name = _FDP.TYPE_MESSAGE, f".{PACKAGE}.{spec.cls.__name__}"

    def add_struct(self, spec: Struct) -> None:
        name = spec.cls.__name__
        known = self._structs.get(name)
        if known is spec.cls:
            return
        if known is not None or name == TENSOR_MESSAGE:
            raise ConfigurationError(
                f"two different types are both named '{name}'; message names must be unique"
            )
        self._structs[name] = spec.cls
        self.add_message(name, spec.fields)

    def add_message(self, name: str, fields: Iterable[Field]) -> None:
        if any(m.name == name for m in self.file.message_type):
            raise ConfigurationError(f"message name '{name}' is used twice in the schema")
        msg = self.file.message_type.add(name=name)
        for number, field in enumerate(fields, start=1):
            fdp = msg.field.add(name=field.name, number=number, label=_FDP.LABEL_OPTIONAL)
            spec = field.type
            if isinstance(spec, ListOf):
                fdp.label = _FDP.LABEL_REPEATED
                self._set_type(fdp, spec.item)
            elif isinstance(spec, MapOf):
                entry = msg.nested_type.add(name=_pascal(field.name) + "Entry")
                entry.options.map_entry = True
                key = entry.field.add(name="key", number=1, label=_FDP.LABEL_OPTIONAL)
                self._set_type(key, Scalar(spec.key))
                value = entry.field.add(name="value", number=2, label=_FDP.LABEL_OPTIONAL)
                self._set_type(value, spec.value)
                fdp.label, fdp.type = _FDP.LABEL_REPEATED, _FDP.TYPE_MESSAGE
                fdp.type_name = f".{PACKAGE}.{name}.{entry.name}"
            else:
                self._set_type(fdp, spec)
                if field.optional and isinstance(spec, Scalar):
                    # proto3 `optional`: presence on the wire, so absent means the default.
                    fdp.proto3_optional = True
                    fdp.oneof_index = len(msg.oneof_decl)
                    msg.oneof_decl.add(name=f"_{field.name}")


def _pascal(snake: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in snake.split("_"))


def build_file(
    models: Iterable[ModelEntry], float64: bool = False
) -> descriptor_pb2.FileDescriptorProto:
    """`float64`: Python floats travel as protobuf `double` rather than 2.2.1's `float`."""
    builder = _FileBuilder(float64)
    service = builder.file.service.add(name=SERVICE)
    for model in models:
        builder.add_message(f"{model.rpc}Request", model.signature.params)
        builder.add_message(f"{model.rpc}Response", (model.signature.result,))
        for rpc in (model.rpc, *model.aliases):
            service.method.add(
                name=f"Predict{rpc}",
                input_type=f".{PACKAGE}.{model.rpc}Request",
                output_type=f".{PACKAGE}.{model.rpc}Response",
                client_streaming=model.client_streaming,
                server_streaming=model.streaming,
            )
    return builder.file


def load_schema(file_proto: descriptor_pb2.FileDescriptorProto) -> Schema:
    """Load a FileDescriptorProto (built here or fetched by reflection) into a private pool."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return Schema(pool, pool.FindFileByName(file_proto.name))


def build_schema(models: Iterable[ModelEntry], float64: bool = False) -> Schema:
    return load_schema(build_file(models, float64))


# By FieldDescriptor.type, an int (FieldDescriptorProto's enum values are the same numbers).
_PY_TYPES: dict[int, type] = {
    **{
        t: int
        for t in (
            _FDP.TYPE_INT64,
            _FDP.TYPE_INT32,
            _FDP.TYPE_UINT64,
            _FDP.TYPE_UINT32,
            _FDP.TYPE_SINT64,
            _FDP.TYPE_SINT32,
            _FDP.TYPE_FIXED64,
            _FDP.TYPE_FIXED32,
            _FDP.TYPE_SFIXED64,
            _FDP.TYPE_SFIXED32,
        )
    },
    _FDP.TYPE_DOUBLE: float,
    _FDP.TYPE_FLOAT: float,
    _FDP.TYPE_STRING: str,
    _FDP.TYPE_BOOL: bool,
    _FDP.TYPE_BYTES: bytes,
}


def fields_of(message: Descriptor, memo: dict[str, Struct] | None = None) -> tuple[Field, ...]:
    """The field specs of a message descriptor: the inverse of `build_file`, for clients that
    learn the schema by reflection. Nested messages become dataclasses made on the fly; any
    field with presence is optional (None when absent), since the server already validated."""
    memo = {} if memo is None else memo
    return tuple(
        Field(f.name, _spec_of(f, memo), optional=True, default=None)
        if f.has_presence
        else Field(f.name, _spec_of(f, memo))
        for f in message.fields
    )


def _spec_of(field: FieldDescriptor, memo: dict[str, Struct], element: bool = False) -> TypeSpec:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        key, value = message.fields_by_name["key"], message.fields_by_name["value"]
        return MapOf(_PY_TYPES[key.type], _spec_of(value, memo))
    if field.is_repeated and not element:
        return ListOf(_spec_of(field, memo, element=True))
    if message is None:
        return Scalar(_PY_TYPES[field.type])
    if message.name == TENSOR_MESSAGE:
        return Tensor(None, None)
    if message.full_name not in memo:
        fields = fields_of(message, memo)
        cls = dataclasses.make_dataclass(
            message.name, [(f.name, Any, dataclasses.field(default=None)) for f in fields]
        )
        memo[message.full_name] = Struct(cls, fields)
    return memo[message.full_name]


_TYPE_NAMES = {v: k for k, v in vars(_FDP).items() if k.startswith("TYPE_")}


def _field_type(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type in (_FDP.TYPE_MESSAGE, _FDP.TYPE_ENUM):
        return field.type_name.removeprefix(f".{PACKAGE}.")
    return _TYPE_NAMES[field.type].removeprefix("TYPE_").lower()


def _message_text(msg: descriptor_pb2.DescriptorProto) -> list[str]:
    entries = {f".{PACKAGE}.{msg.name}.{n.name}": n for n in msg.nested_type}
    lines = [f"message {msg.name} {{"]
    for field in msg.field:
        entry = entries.get(field.type_name)
        if entry is not None:
            key, value = entry.field
            kind = f"map<{_field_type(key)}, {_field_type(value)}>"
        elif field.label == _FDP.LABEL_REPEATED:
            kind = f"repeated {_field_type(field)}"
        elif field.proto3_optional:
            kind = f"optional {_field_type(field)}"
        else:
            kind = _field_type(field)
        lines.append(f"  {kind} {field.name} = {field.number};")
    lines.append("}")
    return lines


def proto_text(file: FileDescriptor) -> str:
    """The .proto source of the schema, for `blaze proto` and humans; protoc compiles it."""
    fdp = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(fdp)
    out = [
        "// Generated by BlazeRPC from the model annotations. Do not edit.",
        'syntax = "proto3";',
        "",
        f"package {fdp.package};",
        "",
    ]
    for msg in fdp.message_type:
        out += [*_message_text(msg), ""]
    for service in fdp.service:
        out.append(f"service {service.name} {{")
        for m in service.method:
            stream_in = "stream " if m.client_streaming else ""
            stream_out = "stream " if m.server_streaming else ""
            out.append(
                f"  rpc {m.name}({stream_in}{m.input_type.removeprefix('.' + PACKAGE + '.')}) "
                f"returns ({stream_out}{m.output_type.removeprefix('.' + PACKAGE + '.')});"
            )
        out += ["}", ""]
    return "\n".join(out)
