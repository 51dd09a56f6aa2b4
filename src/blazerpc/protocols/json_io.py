"""JSON bodies in and out of the HTTP protocols: bounded before they are parsed, and always
valid JSON when written.

Python's JSON parser holds the event loop (and the GIL) for the whole document, so a JSON
body has its own, smaller limit (`Limits.max_json_bytes`) checked against Content-Length
before a byte is read; large tensors travel as binary data instead. Non-finite floats are
written as the strings "NaN", "Infinity" and "-Infinity" (protobuf's JSON mapping), which
strict parsers accept, and read back from those strings.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from aiohttp import web

from ..exceptions import ValidationError

NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class BodyTooLarge(ValidationError):
    """A body over its limit: HTTP 413, whatever protocol the port speaks."""


def check_size(request: web.Request, limit: int, what: str = "a JSON body") -> None:
    """Refuse a body whose declared length is over `limit`, before reading it."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(
            f"{what} of {length} bytes is over the limit of {limit} bytes; send large tensors "
            "as binary data"
        )


async def read_body(request: web.Request) -> bytes | memoryview:
    """The whole body, within aiohttp's limit (the message size limit; over it, 413).

    With a Content-Length, chunks land in one buffer of that size as they arrive: aiohttp's
    own read() grows a buffer and then copies all of it into bytes, in one step on the loop
    (tens of milliseconds for a 60 MB body, while every other call waits)."""
    size, limit = request.content_length, request.client_max_size
    if size is None:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise BodyTooLarge(exc.text or "request body too large") from None
    if limit and size > limit:
        raise BodyTooLarge(f"the body of {size} bytes is over the limit of {limit} bytes")
    # np.empty, unlike bytearray, leaves the pages untouched until each chunk is written
    body = np.empty(size, np.uint8).data
    filled = 0
    while chunk := await request.content.readany():
        body[filled : filled + len(chunk)] = chunk  # aiohttp holds the body to Content-Length
        filled += len(chunk)
    return body.toreadonly()


async def read_json(request: web.Request, limit: int) -> Any:
    """A whole JSON body: its size checked before it is read, then parsed."""
    check_size(request, limit)
    return loads(await read_body(request))


def loads(data: bytes | memoryview, what: str = "the request") -> Any:
    """Parse JSON; malformed or too deeply nested input is the client's error."""
    try:
        return json.loads(data if isinstance(data, bytes) else bytes(data))
    except RecursionError:
        raise ValidationError(f"{what} is nested too deeply to be parsed") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValidationError(f"{what} is not valid JSON: {exc}") from None


def dumps(body: Any) -> bytes:
    """Valid JSON; the walk that replaces non-finite floats runs only when there are any."""
    try:
        return json.dumps(body, allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(body), allow_nan=False).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value
