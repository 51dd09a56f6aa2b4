"""Lifting raw_input_contents out of an encoded ModelInferRequest, against protobuf's own parse."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from blazerpc.protocols.kserve import messages
from blazerpc.protocols.wire_scan import split_field

RAW = messages.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number


@st.composite
def infer_requests(draw: st.DrawFn) -> bytes:
    """An encoded ModelInferRequest whose top-level records come in any order (protobuf writes
    them in field order; a client need not): encoded messages concatenated merge into one."""
    parts = [
        messages.ModelInferRequest(model_name=draw(st.text(max_size=20))),
        messages.ModelInferRequest(model_version=draw(st.text(max_size=5))),
        messages.ModelInferRequest(id=draw(st.text(max_size=20))),
    ]
    for i in range(draw(st.integers(0, 3))):
        part = messages.ModelInferRequest()
        tensor = part.inputs.add(
            name=f"in{i}", datatype="FP32", shape=draw(st.lists(st.integers(-1, 2**40)))
        )
        tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=5)))
        parts.append(part)
    for name in draw(st.lists(st.text(max_size=8), max_size=3)):
        part = messages.ModelInferRequest()
        part.outputs.add(name=name)
        part.parameters[name].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
        parts.append(part)
    for raw in draw(st.lists(st.binary(max_size=300), max_size=4)):
        parts.append(messages.ModelInferRequest(raw_input_contents=[raw]))
    return b"".join(p.SerializeToString() for p in draw(st.permutations(parts)))


@given(infer_requests())
def test_the_rest_and_the_lifted_values_are_what_protobuf_parses(data: bytes) -> None:
    whole = messages.ModelInferRequest.FromString(data)
    rest, raw = split_field(data, RAW)
    assert [bytes(v) for v in raw] == list(whole.raw_input_contents)
    parsed = messages.ModelInferRequest.FromString(rest)
    assert not parsed.raw_input_contents
    del whole.raw_input_contents[:]
    assert parsed == whole


def test_values_are_views_of_the_received_bytes() -> None:
    payload = bytes(range(256)) * 4096
    request = messages.ModelInferRequest(model_name="m", raw_input_contents=[payload])
    data = request.SerializeToString()
    _, (view,) = split_field(data, RAW)
    assert view.obj is data and view.tobytes() == payload


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x3a\x05abc", "runs past the end"),  # raw_input_contents claims 5 bytes, has 3
        (b"\x0a", "truncated"),  # a key, then nothing
        (b"\x80\x80", "truncated"),  # a varint that never ends
        (b"\x0b", "wire type 3"),  # a group start: not used by this message
        (b"\x0d\x00\x00", "runs past the end"),  # a fixed32 cut short
    ],
)
def test_records_that_do_not_fit_are_decode_errors(data: bytes, problem: str) -> None:
    with pytest.raises(DecodeError, match=problem):
        split_field(data, RAW)
