"""An aiohttp request as the call pipeline sees it, shared by KServe REST, JSON-RPC and the
OpenAI routes: who calls, its body read within its limits, and JSON replies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import web

from ..server.middleware import RequestEvent
from .json_io import BodyTooLarge, dumps, loads


def http_caller(method: str) -> Callable[[Any, web.Request], RequestEvent]:
    """Who is calling `method`: the request's headers (lower-case keys) and remote address."""

    def caller(body: Any, request: web.Request) -> RequestEvent:
        headers = {k.lower(): v for k, v in request.headers.items()}
        return RequestEvent(method, headers, request.remote or "")

    return caller


def json_response(body: Any, status: int = 200) -> web.Response:
    """`body` as valid JSON (non-finite floats as strings, see `json_io`)."""
    return web.Response(body=dumps(body), status=status, content_type="application/json")


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
