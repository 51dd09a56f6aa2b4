"""Every supported annotation round-trips through a real server; bad ones fail at decoration.

No `from __future__ import annotations` here: models are defined inside tests and their
annotations must be real objects, not strings to resolve later.
"""

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor

from blazerpc import (
    BlazeApp,
    BlazeClient,
    ConfigurationError,
    ModelNotFoundError,
    TensorInput,
    TensorOutput,
)

from .support import client_for, path, running
from .wire import raw_call


@dataclass
class Point:
    x: float
    y: float


@dataclass
class Box:
    label: str
    top_left: Point
    bottom_right: Point
    score: float = 0.5
    tags: list[str] = field(default_factory=list)


@dataclass
class Scene:
    name: str
    boxes: list[Box]
    by_name: dict[str, Point]
    counts: dict[str, int]
    best: Box | None = None


@pytest.fixture
def app() -> BlazeApp:
    """Round trips here check exact values, so floats travel 64-bit (the 32-bit default is
    checked in test_compat_221.py)."""
    return BlazeApp(float64=True)


def scene_app() -> BlazeApp:
    app = BlazeApp(float64=True)

    @app.model("scene")
    async def scene(scene: Scene, shift: Point) -> Scene:
        def move(p: Point) -> Point:
            return Point(p.x + shift.x, p.y + shift.y)

        boxes = [
            Box(b.label, move(b.top_left), move(b.bottom_right), b.score, [*b.tags, "moved"])
            for b in scene.boxes
        ]
        return Scene(
            scene.name.upper(),
            boxes,
            {k: move(v) for k, v in scene.by_name.items()},
            {k: v * 2 for k, v in scene.counts.items()},
            max(boxes, key=lambda b: b.score) if boxes else None,
        )

    return app


SCENE_IN = Scene(
    "room",
    [
        Box("cat", Point(0.0, 0.0), Point(1.5, 2.5), 0.9, ["pet"]),
        Box("dog", Point(2.0, 2.0), Point(3.0, 4.0)),
    ],
    {"door": Point(-1.0, 0.25)},
    {"cats": 1, "dogs": 2},
)
SCENE_OUT = Scene(
    "ROOM",
    [
        Box("cat", Point(10.0, 20.0), Point(11.5, 22.5), 0.9, ["pet", "moved"]),
        Box("dog", Point(12.0, 22.0), Point(13.0, 24.0), 0.5, ["moved"]),
    ],
    {"door": Point(9.0, 20.25)},
    {"cats": 2, "dogs": 4},
    Box("cat", Point(10.0, 20.0), Point(11.5, 22.5), 0.9, ["pet", "moved"]),
)


# --- scalars ---------------------------------------------------------------------------------


@pytest.mark.parametrize("registry", [False, True], ids=["reflection", "registry"])
async def test_scalars_round_trip(app: BlazeApp, registry: bool) -> None:
    @app.model("scalars")
    async def scalars(s: str, i: int, f: float, b: bool, raw: bytes) -> str:
        return repr((s, i, f, b, raw, type(i), type(f), type(b), type(raw)))

    @app.model("echo-str")
    async def echo_str(value: str) -> str:
        return value

    @app.model("echo-int")
    async def echo_int(value: int) -> int:
        return value

    @app.model("echo-float")
    async def echo_float(value: float) -> float:
        return value

    @app.model("echo-bool")
    async def echo_bool(value: bool) -> bool:
        return not value

    @app.model("echo-bytes")
    async def echo_bytes(value: bytes) -> bytes:
        return value[::-1]

    async with client_for(app, registry=registry) as client:
        got = await client.predict(
            "scalars", s="héllo ✓", i=-(2**40), f=0.1, b=True, raw=b"\x00\xff"
        )
        assert got == repr(("héllo ✓", -(2**40), 0.1, True, b"\x00\xff", int, float, bool, bytes))
        assert await client.predict("echo-str", value="ünïcode ✓") == "ünïcode ✓"
        # int is int64: values beyond 32 bits survive.
        assert await client.predict("echo-int", value=2**62 + 3) == 2**62 + 3
        assert await client.predict("echo-int", value=-(2**63)) == -(2**63)
        # float is double: a 64-bit float comes back bit for bit (float32 would round it).
        third = 1 / 3
        assert await client.predict("echo-float", value=third) == third
        assert await client.predict("echo-float", value=1e300) == 1e300
        assert await client.predict("echo-bool", value=False) is True
        assert await client.predict("echo-bool", value=True) is False
        assert await client.predict("echo-bytes", value=b"\x00\x01\xfe") == b"\xfe\x01\x00"


@pytest.mark.parametrize("float64", [False, True])
def test_float_width_follows_the_app_setting_and_int_is_int64(float64: bool) -> None:
    app = BlazeApp(float64=float64)

    @app.model("num")
    async def num(f: float, i: int, fs: list[float], p: Point) -> float:
        return f * 2 + i

    want = FieldDescriptor.TYPE_DOUBLE if float64 else FieldDescriptor.TYPE_FLOAT
    fields = app.schema.request_class("Num").DESCRIPTOR.fields_by_name
    assert [fields[n].type for n in ("f", "fs")] == [want, want]
    assert fields["i"].type == FieldDescriptor.TYPE_INT64
    assert {f.type for f in fields["p"].message_type.fields} == {want}
    result = app.schema.response_class("Num").DESCRIPTOR.fields_by_name["result"]
    assert result.type == want


# --- lists, maps -----------------------------------------------------------------------------


@pytest.mark.parametrize("registry", [False, True], ids=["reflection", "registry"])
async def test_lists_and_maps_round_trip(app: BlazeApp, registry: bool) -> None:
    @app.model("lists")
    async def lists(
        words: list[str], nums: list[int], xs: list[float], flags: list[bool], blobs: list[bytes]
    ) -> list[str]:
        return [*reversed(words), str(sum(nums)), str(sum(xs)), str(flags), repr(blobs)]

    @app.model("maps")
    async def maps(counts: dict[str, int], weights: dict[str, float]) -> dict[str, float]:
        return {k: v * weights.get(k, 1.0) for k, v in counts.items()}

    @app.model("points")
    async def points(points: list[Point], named: dict[str, Point]) -> list[Point]:
        return [*points, *named.values()]

    @app.model("empty-list")
    async def empty_list(words: list[str]) -> list[int]:
        return [len(words)]

    async with client_for(app, registry=registry) as client:
        got = await client.predict(
            "lists",
            words=["a", "b", "c"],
            nums=[1, 2, 2**40],
            xs=[0.5, 0.25],
            flags=[True, False],
            blobs=[b"x", b""],
        )
        assert list(got) == ["c", "b", "a", str(3 + 2**40), "0.75", "[True, False]", "[b'x', b'']"]

        got = await client.predict("maps", counts={"a": 2, "b": 3}, weights={"a": 0.5})
        assert dict(got) == {"a": 1.0, "b": 3.0}

        got = await client.predict("points", points=[Point(1.0, 2.0)], named={"p": Point(3.0, 4.0)})
        assert [dataclasses.astuple(p) for p in got] == [(1.0, 2.0), (3.0, 4.0)]
        if registry:
            assert all(isinstance(p, Point) for p in got)

        assert list(await client.predict("empty-list", words=[])) == [0]


# --- dataclasses -----------------------------------------------------------------------------


async def test_nested_dataclasses_round_trip_with_registry() -> None:
    app = scene_app()
    async with client_for(app, registry=True) as client:
        got = await client.predict("scene", scene=SCENE_IN, shift=Point(10.0, 20.0))
    # The registry's own classes come back, equal field for field.
    assert got == SCENE_OUT
    assert isinstance(got, Scene)
    assert isinstance(got.boxes[0], Box)
    assert isinstance(got.best.top_left, Point)


async def test_nested_dataclasses_round_trip_by_reflection() -> None:
    app = scene_app()
    async with client_for(app) as client:
        got = await client.predict("scene", scene=SCENE_IN, shift=Point(10.0, 20.0))
    # Without the server's code the client makes equivalent dataclasses from the descriptors.
    assert dataclasses.is_dataclass(got)
    assert dataclasses.asdict(got) == dataclasses.asdict(SCENE_OUT)
    assert type(got).__name__ == "Scene"


async def test_dataclass_inputs_may_be_mappings(app: BlazeApp) -> None:
    @app.model("norm")
    async def norm(p: Point) -> float:
        return abs(p.x) + abs(p.y)

    async with client_for(app) as client:
        assert await client.predict("norm", p={"x": -1.5, "y": 2.0}) == 3.5


async def test_dataclass_with_all_default_fields_is_present(app: BlazeApp) -> None:
    @dataclass
    class Settings:
        n: int = 0
        name: str = ""

    @app.model("settings")
    async def settings(s: Settings) -> Settings:
        return Settings(s.n, s.name)

    async with client_for(app, registry=True) as client:
        # Every field holds its zero value, yet the message must still count as sent.
        assert await client.predict("settings", s=Settings()) == Settings()


# --- Optional and defaults -------------------------------------------------------------------


@pytest.mark.parametrize("registry", [False, True], ids=["reflection", "registry"])
async def test_optional_and_defaults(app: BlazeApp, registry: bool) -> None:
    @app.model("opts")
    async def opts(
        text: str,
        n: int = 3,
        scale: float = 0.5,
        flag: bool = True,
        name: str = "anon",
        maybe: Optional[int] = None,  # noqa: UP045 (the spelling users write)
        note: str | None = None,
        origin: Point | None = None,
        tags: list[str] | None = None,
    ) -> str:
        return repr((text, n, scale, flag, name, maybe, note, origin, tags))

    async with client_for(app, registry=registry) as client:
        # Absent fields take the function's defaults.
        got = await client.predict("opts", text="t")
        assert got == repr(("t", 3, 0.5, True, "anon", None, None, None, None))
        # Zero values that differ from the default are sent and received (field presence).
        got = await client.predict(
            "opts", text="", n=0, scale=0.0, flag=False, name="", maybe=0, note=""
        )
        assert got == repr(("", 0, 0.0, False, "", 0, "", None, None))
        got = await client.predict(
            "opts", text="t", maybe=7, note="x", origin=Point(1.0, 2.0), tags=["a"]
        )
        assert got == repr(("t", 3, 0.5, True, "anon", 7, "x", Point(1.0, 2.0), ["a"]))


@pytest.mark.parametrize("registry", [False, True], ids=["reflection", "registry"])
async def test_optional_results(app: BlazeApp, registry: bool) -> None:
    @app.model("maybe-str")
    async def maybe_str(give: bool) -> Optional[str]:  # noqa: UP045
        return "" if give else None

    @app.model("maybe-point")
    async def maybe_point(give: bool) -> Point | None:
        return Point(0.0, 0.0) if give else None

    async with client_for(app, registry=registry) as client:
        assert await client.predict("maybe-str", give=True) == ""
        assert await client.predict("maybe-str", give=False) is None
        got = await client.predict("maybe-point", give=True)
        assert dataclasses.astuple(got) == (0.0, 0.0)
        assert await client.predict("maybe-point", give=False) is None


async def test_absent_required_scalars_are_zero_values(app: BlazeApp) -> None:
    """proto3 scalars without a default have no presence: absent is the zero value."""

    @app.model("zeros")
    async def zeros(text: str, n: int, x: float, b: bool, words: list[str]) -> str:
        return repr((text, n, x, b, words))

    async with running(app) as server:
        reply = await raw_call(server.port, path("Zeros"), b"")
    response = app.schema.response_class("Zeros").FromString(reply.data)
    assert response.result == repr(("", 0, 0.0, False, []))


# --- tensors ---------------------------------------------------------------------------------

ALL_DTYPES = {
    np.float16: "float16",
    np.float32: "float",
    np.float64: "double",
    np.int8: "int8",
    np.int16: "int16",
    np.int32: "int32",
    np.int64: "int64",
    np.uint8: "uint8",
    np.uint16: "uint16",
    np.uint32: "uint32",
    np.uint64: "uint64",
    np.bool_: "bool",
}


def sample(dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """Values that use the dtype's range (extremes included), so truncation would show."""
    rng = np.random.default_rng(7)
    if dtype is np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        arr = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
        arr.flat[0], arr.flat[-1] = info.min, info.max
        return arr
    return (rng.standard_normal(shape) * 1000).astype(dtype)


@pytest.mark.parametrize("dtype", list(ALL_DTYPES), ids=list(ALL_DTYPES.values()))
@pytest.mark.parametrize("registry", [False, True], ids=["reflection", "registry"])
async def test_every_tensor_dtype_round_trips(app: BlazeApp, dtype: type, registry: bool) -> None:
    seen: list[np.ndarray] = []

    @app.model("ident")
    async def ident(x: TensorInput[dtype, "batch", 3]) -> TensorOutput[dtype, "batch", 3]:
        seen.append(x)
        return x

    arr = sample(dtype, (5, 3))
    async with client_for(app, registry=registry) as client:
        got = await client.predict("ident", x=arr)
    # The model saw a numpy array of the declared dtype and the sent shape and values.
    assert seen[0].dtype == np.dtype(dtype)
    assert seen[0].shape == (5, 3)
    np.testing.assert_array_equal(seen[0], arr)
    # The client got one back, likewise.
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.dtype(dtype)
    assert got.shape == (5, 3)
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("dtype", list(ALL_DTYPES), ids=list(ALL_DTYPES.values()))
async def test_tensor_wire_format(app: BlazeApp, dtype: type) -> None:
    """On the wire: the contract's dtype name, the shape, and little-endian raw bytes."""

    @app.model("twice")
    async def twice(x: TensorInput[dtype, 2, "n"]) -> TensorOutput[dtype, 2, "n"]:
        return np.concatenate([x[:, :1], x[:, 1:]], axis=1)

    arr = sample(dtype, (2, 4))
    request = app.schema.request_class("Twice")()
    request.x.shape.extend([2, 4])
    request.x.dtype = ALL_DTYPES[dtype]
    request.x.data = arr.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    async with running(app) as server:
        reply = await raw_call(server.port, path("Twice"), request.SerializeToString())
    assert reply.code.name == "OK", reply.details
    result = app.schema.response_class("Twice").FromString(reply.data).result
    assert list(result.shape) == [2, 4]
    assert result.dtype == ALL_DTYPES[dtype]
    assert result.data == arr.astype(np.dtype(dtype).newbyteorder("<")).tobytes()


async def test_symbolic_dims_accept_any_size_and_fixed_dims_are_kept(app: BlazeApp) -> None:
    @app.model("shape")
    async def shape(
        x: TensorInput[np.float32, "batch", "seq", 4],
    ) -> TensorOutput[np.int64, 3]:
        return np.array([x.shape[0], x.shape[1], x.shape[2]], dtype=np.int64)

    async with client_for(app, registry=True) as client:
        for batch, seq in [(1, 1), (3, 7), (0, 2)]:
            got = await client.predict("shape", x=np.zeros((batch, seq, 4), np.float32))
            assert got.tolist() == [batch, seq, 4]


async def test_tensor_outputs_cast_lists_and_other_array_likes(app: BlazeApp) -> None:
    @app.model("probs")
    async def probs(n: int) -> TensorOutput[np.float32, "n"]:
        return [0.5] * n  # a plain list becomes a float32 tensor

    async with client_for(app) as client:
        got = await client.predict("probs", n=3)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.full(3, 0.5, np.float32))


async def test_tensors_in_lists_maps_and_dataclasses(app: BlazeApp) -> None:
    @dataclass
    class Sample:
        image: TensorInput[np.uint8, "h", "w", 3]
        label: str

    @app.model("tensors")
    async def tensors(
        frames: list[TensorInput[np.float32, "n"]],
        named: dict[str, TensorInput[np.int32, 2]],
        sample: Sample,
    ) -> list[TensorOutput[np.float64, "n"]]:
        return [
            *(f.astype(np.float64) * 2 for f in frames),
            *(v.astype(np.float64) for v in named.values()),
            np.array([sample.image.sum()], np.float64),
        ]

    image = np.full((2, 2, 3), 3, np.uint8)
    for registry in (False, True):
        async with client_for(app, registry=registry) as client:
            got = await client.predict(
                "tensors",
                frames=[np.array([1, 2], np.float32), np.array([3], np.float32)],
                named={"a": np.array([5, 6], np.int32)},
                sample=Sample(image, "img"),
            )
        assert [g.tolist() for g in got] == [[2.0, 4.0], [6.0], [5.0, 6.0], [36.0]]
        assert all(g.dtype == np.float64 for g in got)


# --- registration --------------------------------------------------------------------------


def test_public_names() -> None:
    import blazerpc

    for name in (
        "BlazeApp",
        "BlazeClient",
        "SyncBlazeClient",
        "TensorInput",
        "TensorOutput",
        "BlazeRPCError",
        "ValidationError",
        "ModelNotFoundError",
        "SerializationError",
        "InferenceError",
        "ConfigurationError",
    ):
        assert name in blazerpc.__all__
        assert getattr(blazerpc, name) is not None
    for error in (
        blazerpc.ValidationError,
        blazerpc.ModelNotFoundError,
        blazerpc.SerializationError,
        blazerpc.InferenceError,
        blazerpc.ConfigurationError,
    ):
        assert issubclass(error, blazerpc.BlazeRPCError)
    assert issubclass(blazerpc.BlazeRPCError, Exception)


def test_model_decorator_returns_the_function_unchanged(app: BlazeApp) -> None:
    async def echo(text: str) -> str:
        return text

    def gen(prompt: str) -> typing.Iterator[str]:
        yield prompt

    assert app.model("echo")(echo) is echo
    assert app.model("gen", version="2", streaming=True)(gen) is gen
    entries = app.registry.list_models()
    assert [(m.name, m.version, m.streaming) for m in entries] == [
        ("echo", "1", False),
        ("gen", "2", True),
    ]
    assert app.registry.get("gen").name == "gen"
    with pytest.raises(ModelNotFoundError):
        app.registry.get("nope")


def test_blazeapp_defaults_and_batching_options_are_accepted() -> None:
    app = BlazeApp()
    assert app.name == "blazerpc"
    assert (app.enable_batching, app.max_batch_size, app.batch_timeout_ms) == (True, 32, 10.0)
    app = BlazeApp(
        name="x", enable_batching=False, max_batch_size=8, batch_timeout_ms=2.5, middleware=None
    )
    assert (app.name, app.enable_batching, app.max_batch_size) == ("x", False, 8)


def test_missing_annotation_is_a_configuration_error(app: BlazeApp) -> None:
    with pytest.raises(ConfigurationError) as info:

        @app.model("bad")
        async def unannotated_model(text, n: int) -> str:  # type: ignore[no-untyped-def]
            return text

    assert "unannotated_model" in str(info.value)
    assert "'text'" in str(info.value)
    assert len(app.registry) == 0


@pytest.mark.parametrize(
    "annotation",
    [object, complex, set[int], tuple[int, int], dict[float, str], list[list[int]], np.ndarray],
    ids=["object", "complex", "set", "tuple", "float-key", "nested-list", "bare-ndarray"],
)
def test_unmappable_annotation_names_function_and_parameter(
    app: BlazeApp, annotation: object
) -> None:
    with pytest.raises(ConfigurationError) as info:

        @app.model("bad")
        async def weird_model(ok: str, odd_param: annotation) -> str:  # type: ignore[valid-type]
            return ok

    assert "weird_model" in str(info.value)
    assert "odd_param" in str(info.value)
    assert len(app.registry) == 0


def test_unmappable_return_annotation(app: BlazeApp) -> None:
    with pytest.raises(ConfigurationError, match="weird_result"):

        @app.model("bad")
        async def weird_result(ok: str) -> complex:
            return 1j


def test_unsupported_tensor_dtype_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="complex"):
        TensorInput[np.complex64, 3]
    with pytest.raises(ConfigurationError):
        TensorInput[np.float32, -1]


def test_two_models_mapping_to_the_same_rpc(app: BlazeApp) -> None:
    @app.model("a-b")
    async def first(text: str) -> str:
        return text

    with pytest.raises(ConfigurationError) as info:

        @app.model("a_b")
        async def second(text: str) -> str:
            return text

    assert "PredictAB" in str(info.value)
    assert "a-b" in str(info.value)
    assert [m.name for m in app.registry.list_models()] == ["a-b"]


def test_same_name_twice_is_an_error(app: BlazeApp) -> None:
    @app.model("echo")
    async def first(text: str) -> str:
        return text

    with pytest.raises(ConfigurationError):

        @app.model("echo")
        async def second(text: str) -> str:
            return text


def test_streaming_needs_a_generator_and_a_generator_needs_streaming(app: BlazeApp) -> None:
    with pytest.raises(ConfigurationError, match="generator"):

        @app.model("s1", streaming=True)
        async def not_a_generator(prompt: str) -> str:
            return prompt

    with pytest.raises(ConfigurationError, match="generator"):

        @app.model("s2", streaming=True)
        def sync_not_a_generator(prompt: str) -> str:
            return prompt

    with pytest.raises(ConfigurationError, match="streaming=True"):

        @app.model("s3")
        async def async_gen(prompt: str) -> typing.AsyncIterator[str]:
            yield prompt

    with pytest.raises(ConfigurationError, match="streaming=True"):

        @app.model("s4")
        def sync_gen(prompt: str) -> typing.Iterator[str]:
            yield prompt

    assert len(app.registry) == 0


def test_streaming_result_annotation_may_be_the_item_or_an_iterator(app: BlazeApp) -> None:
    @app.model("g1", streaming=True)
    async def g1(prompt: str) -> str:
        yield prompt

    @app.model("g2", streaming=True)
    async def g2(prompt: str) -> typing.AsyncIterator[str]:
        yield prompt

    @app.model("g3", streaming=True)
    def g3(prompt: str) -> typing.Iterator[int]:
        yield 1

    result = app.schema.response_class("G2").DESCRIPTOR.fields_by_name["result"]
    assert result.type == result.TYPE_STRING
    result = app.schema.response_class("G3").DESCRIPTOR.fields_by_name["result"]
    assert result.type == result.TYPE_INT64


async def test_client_for_missing_model(app: BlazeApp) -> None:
    @app.model("echo")
    async def echo(text: str) -> str:
        return text

    async with running(app) as server, BlazeClient("127.0.0.1", server.port) as client:
        with pytest.raises(ModelNotFoundError, match="nope"):
            await client.predict("nope", text="x")
