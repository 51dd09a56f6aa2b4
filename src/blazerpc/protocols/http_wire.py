"""An aiohttp request as the call pipeline sees it, shared by KServe REST and JSON-RPC."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..server.middleware import RequestEvent
from .json_io import dumps


def http_caller(method: str) -> Callable[[Any, web.Request], RequestEvent]:
    """Who is calling `method`: the request's headers (lower-case keys) and remote address."""

    def caller(body: Any, request: web.Request) -> RequestEvent:
        headers = {k.lower(): v for k, v in request.headers.items()}
        return RequestEvent(method, headers, request.remote or "")

    return caller


def json_response(body: Any, status: int = 200) -> web.Response:
    """`body` as valid JSON (non-finite floats as strings, see `json_io`)."""
    return web.Response(body=dumps(body), status=status, content_type="application/json")
