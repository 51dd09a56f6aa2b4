"""JSON-RPC 2.0 over HTTP, as the reference implementation serves it.

`POST /jsonrpc` takes one call or a batch array of calls to `predict.<model>` with params by
name; `POST /jsonrpc/stream/<model>` with `{"params": {...}}` answers a streaming model as
server-sent events: `data: <chunk>` per chunk, `event: error` on failure, `event: done` last.
Failures carry the standard codes; `error.data.status` names the gRPC status the same failure
has on the native path, from the same table.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from contextlib import aclosing
from functools import partial
from typing import Any

import grpc
from aiohttp import web

from ..exceptions import ModelNotFoundError, status_of
from ..runtime.registry import served
from ..runtime.runner import ModelRunner
from ..server.policy import CallPolicy
from .calls import Caller, ModelCalls
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
        self.version = runner.entry.version
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

    def __init__(self, runners: dict[str, ModelRunner], policy: CallPolicy) -> None:
        self._models = {name: _Model(runner, policy) for name, runner in runners.items()}

    def _model(self, name: str) -> _Model:
        # issue 13: `name@version` picks a version, `name` the highest
        name, _, version = name.partition("@")
        try:
            return served(self._models, name, version, lambda m: m.version)
        except ModelNotFoundError as exc:
            raise CallError(METHOD_NOT_FOUND, str(exc)) from None

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
            model = self._unary_model(call["method"])
            result = await model.calls.unary(
                partial(model.kwargs, call.get("params", {})),
                model.encode,
                partial(_caller, call["method"], request),
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
            body = json.loads(await request.read())
        except ValueError as exc:
            return _json(_error_reply(_error(PARSE_ERROR, f"Parse error: {exc}")))
        if isinstance(body, list):
            if not body:
                return _json(_error_reply(_error(INVALID_REQUEST, "empty batch")))
            # Concurrently, so the calls of one batch can share a model batch.
            calls = [self._call(request, call) for call in body]
            replies = [r for r in await asyncio.gather(*calls) if r is not None]
            return _json(replies) if replies else web.Response(status=204)
        reply = await self._call(request, body)
        return _json(reply) if reply is not None else web.Response(status=204)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            return _json(_error_reply(_error(PARSE_ERROR, f"Parse error: {exc}")), status=400)
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        try:
            model = self._model(request.match_info["model"])
            if not model.streaming:
                raise CallError(
                    INVALID_REQUEST,
                    f"model '{model.name}' does not stream; call predict.{model.name} at "
                    "POST /jsonrpc",
                )
            params = body.get("params", {}) if isinstance(body, dict) else body
            stream = model.calls.stream(
                partial(model.kwargs, params),
                partial(_caller, f"stream.{request.match_info['model']}", request),
            )
            async with aclosing(stream) as chunks:
                async for chunk in chunks:
                    await response.write(_event(None, model.encode(chunk)))
        except ConnectionResetError:
            return response  # the client left; aclosing has stopped the model
        except Exception as exc:
            await response.write(_event("error", _failure(exc)))
        await response.write(_event("done", {}))
        await response.write_eof()
        return response


def _caller(method: str, request: web.Request) -> Caller:
    headers = {k.lower(): v for k, v in request.headers.items()}
    return Caller(method, headers, request.remote or "")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body), status=status, content_type="application/json")


def _event(name: str | None, data: Any) -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def add_jsonrpc_routes(
    app: web.Application, runners: dict[str, ModelRunner], policy: CallPolicy
) -> None:
    handler = JsonRpc(runners, policy)
    app.router.add_post("/jsonrpc", handler.post)
    app.router.add_post("/jsonrpc/stream/{model}", handler.stream)
