"""JSON-RPC 2.0 over HTTP, as the reference implementation serves it.

`POST /jsonrpc` takes one call or a batch array of calls to `predict.<model>` with params by
name; `POST /jsonrpc/stream/<model>` with `{"params": {...}}` answers a streaming model as
server-sent events: `data: <chunk>` per chunk, `event: error` on failure, `event: done` last.
Failures carry the standard codes; `error.data.status` names the gRPC status the same failure
has on the native path, from the same table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import aclosing
from functools import partial
from typing import Any

import grpc
from aiohttp import web

from ..exceptions import ValidationError, status_of
from ..runtime.runner import ModelRunner
from ..server.policy import CallPolicy
from . import json_io
from .calls import Caller, ModelCalls, observed
from .json_values import Encode, encoder, fields_decoder

logger = logging.getLogger("blazerpc.jsonrpc")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class CallError(Exception):
    """A JSON-RPC error found before the model runs."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _error(code: int, message: str, status: grpc.StatusCode | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if status is not None:
        error["data"] = {"status": status.name}
    return error


def _error_reply(error: dict[str, Any], call_id: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": error, "id": call_id}


def _failure(exc: BaseException) -> dict[str, Any]:
    """The error object of a failed call: invalid params for INVALID_ARGUMENT, else internal."""
    if isinstance(exc, CallError):
        return _error(exc.code, str(exc))
    status, details = status_of(exc)
    if status is grpc.StatusCode.INTERNAL:
        logger.error("JSON-RPC call failed", exc_info=exc)
    code = INVALID_PARAMS if status is grpc.StatusCode.INVALID_ARGUMENT else INTERNAL_ERROR
    return _error(code, details, status)


class _Model:
    """A model's JSON decoder and encoder, built once."""

    def __init__(self, runner: ModelRunner, policy: CallPolicy) -> None:
        self.calls = ModelCalls(runner, policy)
        self.name, self.streaming = runner.entry.name, runner.entry.streaming
        self.decode: Callable[[Any, str], dict[str, Any]] = fields_decoder(
            runner.entry.signature.params
        )
        encode = encoder(runner.entry.signature.result.type)
        self.encode: Encode = lambda result: None if result is None else encode(result)

    def kwargs(self, params: Any) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise CallError(INVALID_PARAMS, "params must be an object of parameters by name")
        return self.decode(params, "")


class JsonRpc:
    """The two routes over the server's runners."""

    def __init__(
        self,
        runners: dict[str, ModelRunner],
        policy: CallPolicy,
        *,
        max_json_bytes: int,
        max_batch_calls: int,
    ) -> None:
        self._models = {name: _Model(runner, policy) for name, runner in runners.items()}
        self._policy = policy
        self._max_json_bytes = max_json_bytes
        self._max_batch_calls = max_batch_calls

    async def _body(self, request: web.Request) -> Any:
        json_io.check_size(request, self._max_json_bytes)
        return json_io.loads(await json_io.read_body(request))

    async def _admitted(
        self, lookup: Callable[[str], _Model], name: str, method: str, request: web.Request
    ) -> _Model:
        """`lookup(name)`; its error (which lists the models) only once middleware (auth) has
        admitted the call, so that without a token nobody learns which models exist."""
        try:
            return lookup(name)
        except CallError as exc:
            async with observed(self._policy, _caller(method, request), gated=False):
                raise exc from None

    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            raise CallError(
                METHOD_NOT_FOUND,
                f"no model named '{name}'; models: " + ", ".join(self._models),
            )
        return model

    def _unary_model(self, method: str) -> _Model:
        kind, _, name = method.partition(".")
        if kind == "stream" and name:
            self._model(name)
            raise CallError(
                INVALID_REQUEST, f"stream.{name} is served as events at POST /jsonrpc/stream/{name}"
            )
        if kind != "predict" or not name:
            raise CallError(METHOD_NOT_FOUND, f"unknown method '{method}'; call predict.<model>")
        model = self._model(name)
        if model.streaming:
            raise CallError(
                INVALID_REQUEST,
                f"model '{name}' streams its results; POST its params to /jsonrpc/stream/{name}",
            )
        return model

    async def _call(self, request: web.Request, call: Any) -> dict[str, Any] | None:
        """The response object of one call, or None for a notification (a call without id)."""
        if not isinstance(call, dict):
            return _error_reply(_error(INVALID_REQUEST, "a call is an object"))
        if call.get("jsonrpc") != "2.0" or not isinstance(call.get("method"), str):
            error = _error(INVALID_REQUEST, 'a call needs "jsonrpc": "2.0" and a string "method"')
            return _error_reply(error, call.get("id"))
        try:
            model = await self._admitted(
                self._unary_model, call["method"], f"/jsonrpc/{call['method']}", request
            )
            result = await model.calls.unary(
                partial(model.kwargs, call.get("params", {})),
                model.encode,
                partial(_caller, f"/jsonrpc/predict.{model.name}", request),
                None,
            )
            reply: dict[str, Any] = {"jsonrpc": "2.0", "result": result}
        except Exception as exc:
            reply = {"jsonrpc": "2.0", "error": _failure(exc)}
        if "id" not in call:
            return None  # a notification: run, never answered (JSON-RPC 2.0, section 4.1)
        reply["id"] = call["id"]
        return reply

    async def post(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
        except ValidationError as exc:
            return _unparsed(exc)
        if isinstance(body, list):
            if not body:
                return _json(_error_reply(_error(INVALID_REQUEST, "empty batch")))
            if len(body) > self._max_batch_calls:
                error = _error(
                    INVALID_REQUEST,
                    f"a batch of {len(body)} calls is over the limit of "
                    f"{self._max_batch_calls}; send fewer calls per request",
                )
                return _json(_error_reply(error))
            # Concurrently, so the calls of one batch can share a model batch.
            calls = [self._call(request, call) for call in body]
            replies = [r for r in await asyncio.gather(*calls) if r is not None]
            return _json(replies) if replies else web.Response(status=204)
        reply = await self._call(request, body)
        return _json(reply) if reply is not None else web.Response(status=204)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
        except ValidationError as exc:
            return _unparsed(exc, status=400)
        response = web.StreamResponse(headers=_SSE_HEADERS)
        try:
            await response.prepare(request)
            await self._stream_events(request, response, body)
            await response.write(_event("done", {}))
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client left; the model's generator is closed already
        return response

    async def _stream_events(
        self, request: web.Request, response: web.StreamResponse, body: Any
    ) -> None:
        """Write each chunk as an event, or an error event; the caller ends the stream."""
        try:
            name = request.match_info["model"]
            model = await self._admitted(self._model, name, f"/jsonrpc/stream/{name}", request)
            if not model.streaming:
                raise CallError(
                    INVALID_REQUEST,
                    f"model '{model.name}' does not stream; call predict.{model.name} at "
                    "POST /jsonrpc",
                )
            params = body.get("params", {}) if isinstance(body, dict) else body
            stream = model.calls.stream(
                partial(model.kwargs, params),
                partial(_caller, f"/jsonrpc/stream/{model.name}", request),
            )
            async with aclosing(stream) as chunks:
                async for chunk in chunks:
                    await response.write(_event(None, model.encode(chunk)))
        except ConnectionResetError:
            raise
        except Exception as exc:
            await response.write(_event("error", _failure(exc)))


def _caller(method: str, request: web.Request) -> Caller:
    headers = {k.lower(): v for k, v in request.headers.items()}
    return Caller(method, headers, request.remote or "")


_json = json_io.response


def _unparsed(exc: ValidationError, status: int = 200) -> web.Response:
    """The reply to a body that could not be read as JSON (413 when it was too large)."""
    if isinstance(exc, json_io.BodyTooLarge):
        return _json(_error_reply(_error(INVALID_REQUEST, str(exc))), status=413)
    return _json(_error_reply(_error(PARSE_ERROR, f"Parse error: {exc}")), status=status)


def _event(name: str | None, data: Any) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + json_io.dumps(data) + b"\n\n"


def add_jsonrpc_routes(
    app: web.Application,
    runners: dict[str, ModelRunner],
    policy: CallPolicy,
    *,
    max_json_bytes: int,
    max_batch_calls: int,
) -> None:
    handler = JsonRpc(
        runners, policy, max_json_bytes=max_json_bytes, max_batch_calls=max_batch_calls
    )
    app.router.add_post("/jsonrpc", handler.post)
    app.router.add_post("/jsonrpc/stream/{model}", handler.stream)
