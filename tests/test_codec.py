"""Tensors in and out of messages: a view of protobuf's bytes, never a copy; the declared dtype
and dims checked both ways, whether a tensor takes the one-step path or the checked one."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from blazerpc import BlazeApp, TensorInput, TensorOutput
from blazerpc.codec import Codec
from blazerpc.convert import WrongResult
from blazerpc.exceptions import ValidationError

MB = 2**20
SHAPE = (4096, 1024)  # 16 MiB of float32


def blob_codecs() -> tuple[type, Codec, Codec]:
    app = BlazeApp()

    @app.model("blob")
    def blob(x: TensorInput[np.float32, 4096, 1024]) -> TensorOutput[np.float32, 4096, 1024]:
        return x

    (entry,) = app.registry.list_models()
    request = app.schema.request_class(entry.rpc)
    response = app.schema.response_class(entry.rpc)
    return (
        request,
        Codec(request, entry.signature.params),
        Codec(response, (entry.signature.result,)),
    )


def test_a_16mb_tensor_decodes_as_an_aligned_read_only_view_without_a_copy() -> None:
    request, decoder, _ = blob_codecs()
    sent = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    wire = request(x={"shape": SHAPE, "dtype": "float", "data": sent.tobytes()})
    message = request.FromString(wire.SerializeToString())
    tracemalloc.start()
    try:
        x = decoder.decode(message)["x"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Reading the bytes field is protobuf's one copy (16 MiB); the array adds none.
    assert 16 * MB <= peak < 16 * MB + 64 * 1024, f"decoding allocated {peak / MB:.1f} MiB"
    assert x.shape == SHAPE and x.dtype == np.float32
    assert not x.flags.owndata and not x.flags.writeable  # a view of the bytes
    assert x.flags.aligned and x.flags.c_contiguous
    np.testing.assert_array_equal(x, sent)


def test_encoding_a_16mb_result_copies_it_once_before_protobuf_does() -> None:
    _, _, encoder = blob_codecs()
    y = np.ones(SHAPE, np.float32)
    tracemalloc.start()
    try:
        message = encoder.wrap(y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Protobuf takes only bytes (not a buffer): array -> bytes is one copy, the field's own
    # storage the other. Nothing else: no cast, no intermediate list.
    assert peak < 2 * 16 * MB + 64 * 1024, f"encoding allocated {peak / MB:.1f} MiB"
    assert len(message.result.data) == 16 * MB


def free_codecs() -> tuple[type, Codec, Codec]:
    app = BlazeApp()

    @app.model("free")
    def free(x: TensorInput[np.float32, "rows", "cols"]) -> TensorOutput[np.float32, "rows", 3]:
        return x

    (entry,) = app.registry.list_models()
    request, response = app.schema.request_class(entry.rpc), app.schema.response_class(entry.rpc)
    return (
        request,
        Codec(request, entry.signature.params),
        Codec(response, (entry.signature.result,)),
    )


@pytest.mark.parametrize(
    ("shape", "data", "fragment"),
    [
        # Two negative sizes whose product is the byte count: only the sign check refuses it.
        ([-2, -4], np.zeros(8, np.float32).tobytes(), "non-negative"),
        ([2, 4], np.zeros(7, np.float32).tobytes(), "expected 32"),
        ([8], np.zeros(8, np.float32).tobytes(), "expected 2 dimensions"),
    ],
    ids=["negative-sizes", "short-data", "wrong-rank"],
)
def test_a_tensor_that_is_not_as_declared_is_refused_naming_the_field(
    shape: list[int], data: bytes, fragment: str
) -> None:
    request, decoder, _ = free_codecs()
    message = request(x={"shape": shape, "dtype": "float", "data": data})
    with pytest.raises(ValidationError, match=fragment) as caught:
        decoder.decode(message)
    assert caught.value.field == "x"


def test_a_missing_tensor_is_refused_as_missing() -> None:
    request, decoder, _ = free_codecs()
    with pytest.raises(ValidationError, match="missing required field 'x'"):
        decoder.decode(request())


def test_a_tensor_as_declared_decodes_to_its_values() -> None:
    request, decoder, _ = free_codecs()
    sent = np.arange(6, dtype=np.float32).reshape(2, 3)
    x = decoder.decode(request(x={"shape": [2, 3], "dtype": "float", "data": sent.tobytes()}))["x"]
    np.testing.assert_array_equal(x, sent)
    assert not x.flags.writeable


@pytest.mark.parametrize(
    ("result", "wire"),
    [
        (np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(6, dtype="<f4")),
        # Not the declared dtype or byte order, or not an array: cast, then written.
        (np.arange(6, dtype=np.float64).reshape(2, 3), np.arange(6, dtype="<f4")),
        (np.arange(6, dtype=">f4").reshape(2, 3), np.arange(6, dtype="<f4")),
        ([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], np.arange(6, dtype="<f4")),
    ],
    ids=["as-declared", "float64", "big-endian", "nested-list"],
)
def test_a_tensor_result_is_written_in_the_declared_dtype(result: object, wire: np.ndarray) -> None:
    _, _, encoder = free_codecs()
    message = encoder.wrap(result)
    assert list(message.result.shape) == [2, 3] and message.result.dtype == "float"
    assert message.result.data == wire.tobytes()


def test_a_tensor_result_of_other_dims_is_a_wrong_result() -> None:
    _, _, encoder = free_codecs()
    with pytest.raises(WrongResult, match="dimension 1 must be 3"):
        encoder.wrap(np.zeros((2, 4), np.float32))
