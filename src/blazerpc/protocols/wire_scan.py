"""Lift one length-delimited field out of an encoded protobuf message without parsing it.

A message's top level is a run of (key, value) records; walking the keys costs a few varint
reads per field, however large the values are. So a field of megabytes (KServe's
`raw_input_contents`) can be handed on as views of the received bytes while protobuf parses
only what is left, which is small.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos`, and the position after it."""
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 64:
            break
    raise DecodeError("a varint is truncated or longer than 10 bytes")


def split_field(data: bytes, number: int) -> tuple[bytes, list[memoryview]]:
    """`data` without the top-level field `number` (length-delimited), and that field's values
    in order, as views of `data`. DecodeError if the records do not fit in `data`; what the
    records hold is left to protobuf, which parses the rest."""
    view = memoryview(data)
    kept: list[memoryview] = []
    values: list[memoryview] = []
    pos = start = 0
    end = len(data)
    while pos < end:
        record = pos
        key, pos = _varint(data, pos)
        wire_type = key & 7
        if wire_type == _VARINT:
            _, pos = _varint(data, pos)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        elif wire_type == _LENGTH_DELIMITED:
            size, pos = _varint(data, pos)
            if key >> 3 == number and pos + size <= end:
                kept.append(view[start:record])
                values.append(view[pos : pos + size])
                start = pos + size
            pos += size
        else:
            raise DecodeError(f"field {key >> 3} has wire type {wire_type}, not used here")
        if pos > end:
            raise DecodeError(f"field {key >> 3} runs past the end of the message")
    kept.append(view[start:end])
    return b"".join(kept), values
