"""What decoding a large tensor costs in memory: a view of protobuf's bytes, never a copy."""

from __future__ import annotations

import tracemalloc

import numpy as np

from blazerpc import BlazeApp, TensorInput, TensorOutput
from blazerpc.codec import Codec

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
