"""JsonRpcClient: call models over the JSON-RPC 2.0 route of a server's HTTP port.

2.2.1's client, with the same calls: `predict(model_name, **params)`, `stream(...)`, `close()`
and `async with`. numpy arrays travel as `{"shape", "dtype", "data": base64}` tensors and come
back as arrays; bytes travel as base64. `model_name` may be `name@version`. A failed call raises
the exception BlazeClient raises for the same status, its message `JSON-RPC error CODE: ...`.
Needs aiohttp: `pip install 'blazerpc[jsonrpc]'`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import numpy as np

from .client import _Closed, _model_name
from .exceptions import (
    BlazeRPCError,
    ConfigurationError,
    InferenceError,
    ModelNotFoundError,
    ValidationError,
)
from .types import WIRE_DTYPES

_WIRE_NAMES = {dtype: name for name, dtype in WIRE_DTYPES.items()}
_METHOD_NOT_FOUND = -32601


def _to_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        name = _WIRE_NAMES.get(array.dtype.newbyteorder("<"))
        if name is None:
            raise ValidationError(f"numpy dtype {array.dtype} has no tensor wire form")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        return {
            "shape": list(array.shape),
            "dtype": name,
            "data": base64.b64encode(data).decode("ascii"),
        }
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _is_tensor(value: Any) -> bool:
    return isinstance(value, dict) and value.keys() == {"shape", "dtype", "data"}


def _from_json(value: Any) -> Any:
    if _is_tensor(value) and value["dtype"] in WIRE_DTYPES:
        data = base64.b64decode(value["data"])
        return np.frombuffer(data, WIRE_DTYPES[value["dtype"]]).reshape(value["shape"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _error(error: dict[str, Any]) -> BlazeRPCError:
    """The exception for a JSON-RPC error object, by the gRPC status the server names."""
    code, message = error.get("code"), error.get("message", "")
    status = grpc.StatusCode.__members__.get((error.get("data") or {}).get("status", ""))
    if status is None:
        status = (
            grpc.StatusCode.NOT_FOUND
            if code == _METHOD_NOT_FOUND
            else grpc.StatusCode.INVALID_ARGUMENT
            if code == -32602
            else grpc.StatusCode.INTERNAL
        )
    text = f"JSON-RPC error {code}: {message}"
    exc: BlazeRPCError
    if status is grpc.StatusCode.NOT_FOUND:
        exc = ModelNotFoundError(message=text)
    elif status is grpc.StatusCode.INVALID_ARGUMENT:
        exc = ValidationError(text)
    elif status is grpc.StatusCode.INTERNAL:
        exc = InferenceError(text)
    else:
        exc = BlazeRPCError(text)
    exc.code = status
    return exc


class JsonRpcClient:
    """`async with JsonRpcClient("http://127.0.0.1:8080/jsonrpc") as c: await c.predict(...)`"""

    def __init__(self, url: str, *, timeout: float | None = None) -> None:
        try:
            import aiohttp
        except ImportError:
            raise ConfigurationError(
                "JsonRpcClient needs aiohttp: pip install 'blazerpc[jsonrpc]'"
            ) from None
        self._aiohttp = aiohttp
        self._url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: Any = None
        self._ids = itertools.count(1)

    def _http(self) -> Any:
        if self._session is None or self._session.closed:
            self._session = self._aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def predict(self, model_name: str = "", /, **params: Any) -> Any:
        """Call `predict.<model_name>` and return its result."""
        model_name = _model_name(model_name, params)
        call = {
            "jsonrpc": "2.0",
            "method": f"predict.{model_name}",
            "params": _to_json(params),
            "id": next(self._ids),
        }
        async with self._http().post(self._url, json=call) as response:
            reply = await response.json(content_type=None)
        if "error" in reply:
            raise _error(reply["error"])
        return _from_json(reply.get("result"))

    async def stream(self, model_name: str = "", /, **params: Any) -> AsyncIterator[Any]:
        """Iterate a streaming model's chunks (server-sent events) as they arrive."""
        model_name = _model_name(model_name, params)
        url = f"{self._url}/stream/{model_name}"
        async with self._http().post(url, json={"params": _to_json(params)}) as response:
            if response.content_type != "text/event-stream":
                reply = await response.json(content_type=None)
                raise _error(reply.get("error", {"message": str(reply)}))
            event = ""
            async for raw in response.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    data = json.loads(line.removeprefix("data:").strip())
                    if event == "done":
                        return
                    if event == "error":
                        raise _error(data)
                    yield _from_json(data)
                elif not line:
                    event = ""

    def close(self) -> Awaitable[None]:
        """Close the HTTP session; awaiting the result waits until it is closed."""
        session, self._session = self._session, None
        if session is None or session.closed:
            return _Closed()
        closing: Awaitable[None] = asyncio.ensure_future(session.close())
        return closing

    async def __aenter__(self) -> JsonRpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
