"""What a model's annotations mean: TensorInput / TensorOutput, and annotations -> field specs.

Everything downstream (schema, codec, batching) works from the small spec tree built here, so
an annotation is interpreted exactly once, at decoration time.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple, Union

import numpy as np

from .exceptions import ConfigurationError


class DType(NamedTuple):
    """One tensor dtype: numpy's (little-endian, as it travels), its name in the native
    TensorProto (the reference implementation's contract), its KServe v2 datatype."""

    numpy: np.dtype
    wire: str
    kserve: str


# The one table of tensor dtypes; every protocol's names for them come from here.
DTYPES: tuple[DType, ...] = (
    DType(np.dtype("<f4"), "float", "FP32"),
    DType(np.dtype("<f8"), "double", "FP64"),
    DType(np.dtype("<f2"), "float16", "FP16"),
    DType(np.dtype("i1"), "int8", "INT8"),
    DType(np.dtype("<i2"), "int16", "INT16"),
    DType(np.dtype("<i4"), "int32", "INT32"),
    DType(np.dtype("<i8"), "int64", "INT64"),
    DType(np.dtype("u1"), "uint8", "UINT8"),
    DType(np.dtype("<u2"), "uint16", "UINT16"),
    DType(np.dtype("<u4"), "uint32", "UINT32"),
    DType(np.dtype("<u8"), "uint64", "UINT64"),
    DType(np.dtype("?"), "bool", "BOOL"),
)
WIRE_DTYPES: dict[str, np.dtype] = {d.wire: d.numpy for d in DTYPES}
_WIRE_NAME_OF: dict[np.dtype, str] = {d.numpy: d.wire for d in DTYPES}
KSERVE_DTYPES: dict[str, np.dtype] = {d.kserve: d.numpy for d in DTYPES}
KSERVE_NAME_OF: dict[np.dtype, str] = {d.numpy: d.kserve for d in DTYPES}

SCALARS: tuple[type, ...] = (str, int, float, bool, bytes)


@dataclass(frozen=True)
class Scalar:
    """A proto3 scalar: str, int (int64), float (float, or double with BlazeApp(float64=True)),
    bool or bytes."""

    py: type


@dataclass(frozen=True)
class Tensor:
    """An n-d array of one dtype; dims are ints (fixed) or names (symbolic, any size).

    `dims is None` means unchecked (a schema discovered from a server carries no dims).
    """

    dtype: np.dtype | None
    dims: tuple[int | str, ...] | None

    @property
    def wire_dtype(self) -> str | None:
        return None if self.dtype is None else _WIRE_NAME_OF[self.dtype]

    @property
    def leading_symbolic(self) -> bool:
        """True when axis 0 is a named dimension, so requests can be stacked along it."""
        return self.dims is not None and len(self.dims) > 0 and isinstance(self.dims[0], str)


@dataclass(frozen=True)
class ListOf:
    item: TypeSpec


@dataclass(frozen=True)
class MapOf:
    key: type
    value: TypeSpec


@dataclass(frozen=True)
class Struct:
    """A dataclass, travelling as a nested message of the same name."""

    cls: type
    fields: tuple[Field, ...]


TypeSpec = Scalar | Tensor | ListOf | MapOf | Struct

_NO_DEFAULT: Any = inspect.Parameter.empty


@dataclass(frozen=True)
class Field:
    """One message field: a model parameter, a dataclass field, or a response's `result`.

    `optional` fields have presence on the wire: when absent they take `default` (None for an
    `Optional[...]` without a default).
    """

    name: str
    type: TypeSpec
    optional: bool = False
    default: Any = _NO_DEFAULT

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT


def _parse_dtype(dtype: Any) -> np.dtype:
    if isinstance(dtype, str) and dtype in WIRE_DTYPES:
        return WIRE_DTYPES[dtype]
    try:
        parsed: np.dtype = np.dtype(dtype).newbyteorder("<")
    except TypeError as exc:
        raise ConfigurationError(f"tensor dtype {dtype!r} is not a numpy dtype") from exc
    if parsed not in _WIRE_NAME_OF:
        raise ConfigurationError(
            f"tensor dtype {parsed.name} is not supported; use one of "
            + ", ".join(sorted({d.name for d in WIRE_DTYPES.values()}))
        )
    return parsed


def _literal_dims(shape: Any) -> list[Any] | None:
    """2.2.1's shape form, `tuple[Literal["batch"], Literal[4]]`, as plain dims; None when
    `shape` is not of that form."""
    if typing.get_origin(shape) is not tuple:
        return None
    dims = []
    for arg in typing.get_args(shape):
        values = typing.get_args(arg) if typing.get_origin(arg) is typing.Literal else ()
        if len(values) != 1:
            raise ConfigurationError(
                f"tensor shape {shape!r}: each dim must be one Literal, e.g. "
                'tuple[Literal["batch"], Literal[4]]'
            )
        dims.append(values[0])
    return dims


def _tensor_annotation(params: Any) -> Any:
    params = params if isinstance(params, tuple) else (params,)
    dtype, *dims = params
    if len(dims) == 1 and (literal := _literal_dims(dims[0])) is not None:
        dims = literal
    for dim in dims:
        if (
            isinstance(dim, bool)
            or not isinstance(dim, (int, str))
            or (isinstance(dim, int) and dim < 0)
        ):
            raise ConfigurationError(
                f"tensor dimension {dim!r} must be a non-negative int or a name such as 'batch'"
            )
    return Annotated[np.ndarray, Tensor(_parse_dtype(dtype), tuple(dims))]


class TensorInput:
    """`TensorInput[np.float32, "batch", 4]`: a tensor parameter, decoded to a numpy array."""

    def __class_getitem__(cls, params: Any) -> Any:
        return _tensor_annotation(params)


class TensorOutput:
    """`TensorOutput[np.float32, "batch", 3]`: a tensor result, encoded from an array-like."""

    def __class_getitem__(cls, params: Any) -> Any:
        return _tensor_annotation(params)


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def type_spec(annotation: Any, where: str) -> TypeSpec:
    """Map one annotation (already stripped of Optional) to its spec, or say what is wrong."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        meta = [m for m in annotation.__metadata__ if isinstance(m, Tensor)]
        if meta:
            return meta[0]
        return type_spec(typing.get_args(annotation)[0], where)
    if annotation in SCALARS:
        return Scalar(annotation)
    if origin in (list, collections.abc.Sequence):
        (item_ann,) = typing.get_args(annotation) or (None,)
        item = type_spec(item_ann, where) if item_ann is not None else None
        if not isinstance(item, (Scalar, Tensor, Struct)):
            raise ConfigurationError(
                f"{where}: list items must be a scalar, a tensor or a dataclass, got {annotation!r}"
            )
        return ListOf(item)
    if origin in (dict, collections.abc.Mapping):
        key, value_ann = typing.get_args(annotation) or (None, None)
        if key not in (str, int):
            raise ConfigurationError(f"{where}: map keys must be str or int, got {annotation!r}")
        value = type_spec(value_ann, where)
        if isinstance(value, (ListOf, MapOf)):
            raise ConfigurationError(
                f"{where}: map values cannot be lists or maps (wrap them in a dataclass)"
            )
        return MapOf(key, value)
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return Struct(annotation, _dataclass_fields(annotation))
    if annotation is np.ndarray:
        raise ConfigurationError(
            f"{where}: a bare np.ndarray has no dtype or shape; "
            "annotate it as TensorInput[np.float32, 'batch', 4] (or TensorOutput[...])"
        )
    raise ConfigurationError(
        f"{where}: cannot map annotation {annotation!r} to a protobuf field; use str, int, "
        "float, bool, bytes, list[T], dict[str, T], a dataclass, Optional[T], "
        "TensorInput[...] or TensorOutput[...]"
    )


def field_spec(name: str, annotation: Any, default: Any, where: str) -> Field:
    inner, is_optional = _unwrap_optional(annotation)
    spec = type_spec(inner, where)
    if is_optional and default is _NO_DEFAULT:
        default = None
    return Field(name, spec, optional=default is not _NO_DEFAULT, default=default)


def _dataclass_fields(cls: type) -> tuple[Field, ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    specs = []
    for f in dataclasses.fields(cls):
        default = _NO_DEFAULT
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        specs.append(field_spec(f.name, hints[f.name], default, f"{cls.__name__}.{f.name}"))
    return tuple(specs)


_STREAM_ORIGINS = (
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
    collections.abc.Iterator,
    collections.abc.Iterable,
    collections.abc.Generator,
)


def _batch_item(annotation: Any, where: str) -> Any:
    if typing.get_origin(annotation) is not list or not typing.get_args(annotation):
        raise ConfigurationError(
            f"{where}: a batched=True model receives one list per parameter and returns a list; "
            f"annotate it as list[T] (T is what one request carries), got {annotation!r}"
        )
    return typing.get_args(annotation)[0]


_INPUT_STREAMS: dict[Any, bool] = {
    collections.abc.AsyncIterator: True,
    collections.abc.AsyncIterable: True,
    collections.abc.Iterator: False,
    collections.abc.Iterable: False,
}


@dataclass(frozen=True)
class Signature:
    """A model function's wire-visible parameters and result, plus what is injected.

    `streamed` names the parameter that receives a stream of requests (client-streaming and
    bidirectional models); its one field in `params` is the type of one item.
    """

    params: tuple[Field, ...]
    result: Field
    injected: dict[str, Any]
    streamed: str | None = None


def _streamed_item(func: Callable[..., Any], name: str, annotation: Any, where: str) -> Any | None:
    """The item type of a parameter annotated as a stream, or None for any other parameter."""
    origin = typing.get_origin(annotation) or annotation
    is_async = _INPUT_STREAMS.get(origin) if isinstance(origin, type) else None
    if is_async is None:
        return None
    args = typing.get_args(annotation)
    if not args:
        raise ConfigurationError(
            f"{where}: say what one item is, e.g. '{name}: AsyncIterator[str]'"
        )
    model_is_async = inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
    if model_is_async and not is_async:
        raise ConfigurationError(
            f"{where}: an async def model receives its stream as "
            f"'{name}: AsyncIterator[...]' and reads it with 'async for'"
        )
    if is_async and not model_is_async:
        raise ConfigurationError(
            f"{where}: a plain def model runs in a thread and receives its stream as "
            f"'{name}: Iterator[...]'; or make it 'async def' to keep AsyncIterator"
        )
    return args[0]


def signature_of(
    func: Callable[..., Any],
    *,
    streaming: bool,
    batched: bool = False,
    is_injected: Callable[[inspect.Parameter, Any], Any] | None = None,
) -> Signature:
    """Read a model function's annotations into field specs; every problem names the parameter.

    A `batched` function takes `list[T]` per parameter and returns `list[R]`; the schema
    describes one request, so its fields are `T` and `R`.

    `is_injected(param, annotation)` returns a non-None marker for parameters that the server
    supplies (context, dependencies); those stay out of the schema.
    """
    where = getattr(func, "__qualname__", repr(func))
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:  # an annotation naming something undefined
        raise ConfigurationError(f"{where}: cannot resolve annotations: {exc}") from exc
    params: list[Field] = []
    injected: dict[str, Any] = {}
    streamed: list[str] = []
    for p in inspect.signature(func).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ConfigurationError(f"{where}: *args and **kwargs cannot become message fields")
        annotation = hints.get(p.name, _NO_DEFAULT)
        marker = is_injected(p, annotation) if is_injected else None
        if marker is not None:
            injected[p.name] = marker
            continue
        if annotation is _NO_DEFAULT:
            raise ConfigurationError(
                f"{where}: parameter '{p.name}' has no type annotation; "
                f"annotate it, e.g. '{p.name}: str'"
            )
        item = _streamed_item(func, p.name, annotation, f"{where}, parameter '{p.name}'")
        if item is not None:
            streamed.append(p.name)
            params.append(field_spec(p.name, item, _NO_DEFAULT, f"{where}, items of '{p.name}'"))
            continue
        if batched:
            annotation = _batch_item(annotation, f"{where}, parameter '{p.name}'")
        params.append(field_spec(p.name, annotation, p.default, f"{where}, parameter '{p.name}'"))
    if streamed:
        _check_streamed(where, streamed, params, batched)
    if "return" not in hints:
        raise ConfigurationError(f"{where}: add a return annotation, e.g. '-> str'")
    result_ann = hints["return"]
    if streaming and typing.get_origin(result_ann) in _STREAM_ORIGINS:
        result_ann = typing.get_args(result_ann)[0]
    if batched:
        result_ann = _batch_item(result_ann, f"{where}, return annotation")
    return Signature(
        tuple(params),
        field_spec("result", result_ann, _NO_DEFAULT, f"{where}, return annotation"),
        injected,
        streamed[0] if streamed else None,
    )


def _check_streamed(where: str, streamed: list[str], params: list[Field], batched: bool) -> None:
    if len(streamed) > 1:
        raise ConfigurationError(
            f"{where}: only one parameter can be a stream, got {', '.join(map(repr, streamed))}; "
            "stream a dataclass that holds each of them"
        )
    others = [f.name for f in params if f.name != streamed[0]]
    if others:
        # Every request message of the stream is one item, so a per-call field has no home.
        raise ConfigurationError(
            f"{where}: a model that takes a stream ('{streamed[0]}') takes no other request "
            f"fields, got {', '.join(map(repr, others))}; put them in each item (stream a "
            "dataclass) or read them from metadata through a Context parameter"
        )
    if batched:
        raise ConfigurationError(
            f"{where}: a model that takes a stream is never batched; drop batched=True"
        )
