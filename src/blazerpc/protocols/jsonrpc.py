"""JSON-RPC 2.0 over HTTP, as the reference implementation serves it.

`POST /jsonrpc` takes one call or a batch array of calls to `predict.<model>` with params by
name; `POST /jsonrpc/stream/<model>` with `{"params": {...}}` answers a streaming model as
server-sent events: `data: <chunk>` per chunk, `event: error` on failure, `event: done` last.
Failures carry the standard codes; `error.data.status` names the gRPC status the same failure
has on the native path, from the same table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web

from ..exceptions import ModelNotFoundError, RPCError, ValidationError
from ..pipeline import CallerGone, Failure, ModelCall, Wire, admitted_lookup, fail
from ..policy import CallPolicy
from ..runtime.registry import served
from ..runtime.runner import ModelRunner
from . import json_io
from .http_wire import http_caller, json_response
from .json_values import encoder, fields_decoder

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}

Params = dict[str, Any]


# The gRPC status middleware sees for a call JSON-RPC refuses itself.
_STATUS_OF_ERROR = {
    INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    METHOD_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    INVALID_PARAMS: grpc.StatusCode.INVALID_ARGUMENT,
}


class CallError(RPCError):
    """A JSON-RPC error found before the model runs (`error_code`), which middleware sees as
    its gRPC twin: NOT_FOUND for an unknown method, INVALID_ARGUMENT otherwise."""

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(_STATUS_OF_ERROR[error_code], message)
        self.error_code = error_code


def _error(code: int, message: str, status: grpc.StatusCode | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if status is not None:
        error["data"] = {"status": status.name}
    return error


def _error_reply(error: dict[str, Any], call_id: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": error, "id": call_id}


def _failure(failure: Failure) -> dict[str, Any]:
    """The error object of a failed call: invalid params for INVALID_ARGUMENT, else internal."""
    invalid = failure.code is grpc.StatusCode.INVALID_ARGUMENT
    return _error(INVALID_PARAMS if invalid else INTERNAL_ERROR, failure.details, failure.code)


def _refusal(exc: Exception) -> dict[str, Any]:
    """The error object of a call refused before it reached a model."""
    if isinstance(exc, CallError):
        return _error(exc.error_code, str(exc))
    return _failure(fail(exc, "JSON-RPC call"))


async def _reply_error(request: web.Request, failure: Failure) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": _failure(failure)}


async def _event_error(request: web.Request, failure: Failure) -> bytes:
    return _event("error", _failure(failure))


def _params(params: Any) -> Params:
    if not isinstance(params, dict):
        raise CallError(INVALID_PARAMS, "params must be an object of parameters by name")
    return params


class _Model:
    """A model's JSON-RPC route (`predict.<model>`, or its event stream), built once."""

    def __init__(self, runner: ModelRunner, policy: CallPolicy) -> None:
        entry = runner.entry
        self.name, self.version, self.streaming = entry.name, entry.version, entry.streaming
        read = fields_decoder(entry.signature.params)
        encode = encoder(entry.signature.result)

        def decode(params: Params) -> dict[str, Any]:
            return read(params, "")

        if self.streaming:
            self.stream: ModelCall[Params, web.Request, bytes] = ModelCall(
                runner,
                policy,
                Wire(
                    protocol="JSON-RPC",
                    decode=decode,
                    encode=lambda params, chunk: _event(None, encode(chunk)),
                    caller=http_caller(f"stream.{entry.key}"),
                    reject=_event_error,
                ),
            )
        else:
            self.predict: ModelCall[Params, web.Request, dict[str, Any]] = ModelCall(
                runner,
                policy,
                Wire(
                    protocol="JSON-RPC",
                    decode=decode,
                    encode=lambda params, result: {"jsonrpc": "2.0", "result": encode(result)},
                    caller=http_caller(f"predict.{entry.key}"),
                    reject=_reply_error,
                ),
            )


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
        return await json_io.read_json(request, self._max_json_bytes)

    async def _admitted(
        self, lookup: Callable[[str], _Model], name: str, method: str, request: web.Request
    ) -> _Model:
        """`lookup(name)`; its error (which lists the models) only once middleware (auth) has
        admitted the call, so that without a token nobody learns which models exist."""
        caller = http_caller(method)(None, request)
        return await admitted_lookup(self._policy, caller, lambda: lookup(name))

    def _model(self, name: str) -> _Model:
        # issue 13: `name@version` picks a version, `name` the highest
        name, _, version = name.partition("@")
        try:
            return served(self._models, name, version, lambda m: m.version)
        except ModelNotFoundError as exc:
            names = ", ".join(dict.fromkeys(m.name for m in self._models.values()))
            raise CallError(METHOD_NOT_FOUND, f"{exc}; models: {names}") from None

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
            method = call["method"]
            model = await self._admitted(self._unary_model, method, method, request)
            params = _params(call.get("params", {}))
        except Exception as exc:
            reply: dict[str, Any] = {"jsonrpc": "2.0", "error": _refusal(exc)}
        else:
            reply = await model.predict.unary(params, request)
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
                return json_response(_error_reply(_error(INVALID_REQUEST, "empty batch")))
            if len(body) > self._max_batch_calls:
                error = _error(
                    INVALID_REQUEST,
                    f"a batch of {len(body)} calls is over the limit of "
                    f"{self._max_batch_calls}; send fewer calls per request",
                )
                return json_response(_error_reply(error))
            # Concurrently, so the calls of one batch can share a model batch.
            calls = [self._call(request, call) for call in body]
            replies = [r for r in await asyncio.gather(*calls) if r is not None]
            return json_response(replies) if replies else web.Response(status=204)
        reply = await self._call(request, body)
        return json_response(reply) if reply is not None else web.Response(status=204)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
        except ValidationError as exc:
            return _unparsed(exc, status=400)
        response = web.StreamResponse(headers=_SSE_HEADERS)
        try:
            await response.prepare(request)
            await self._events(request, response, body)
            await response.write(_event("done", {}))
            await response.write_eof()
        except (CallerGone, ConnectionResetError):
            pass  # the client left; the model's generator has been stopped
        return response

    async def _events(self, request: web.Request, response: web.StreamResponse, body: Any) -> None:
        """A streaming model's chunks as events, or an error event; the caller ends the stream."""
        try:
            name = request.match_info["model"]
            model = await self._admitted(self._model, name, f"stream.{name}", request)
            if not model.streaming:
                raise CallError(
                    INVALID_REQUEST,
                    f"model '{model.name}' does not stream; call predict.{model.name} at "
                    "POST /jsonrpc",
                )
            params = _params(body.get("params", {}) if isinstance(body, dict) else body)
        except Exception as exc:
            await response.write(_event("error", _refusal(exc)))
        else:
            await model.stream.stream(params, request, response.write)


def _unparsed(exc: ValidationError, status: int = 200) -> web.Response:
    """The reply to a body that could not be read as JSON (413 when it was too large)."""
    if isinstance(exc, json_io.BodyTooLarge):
        return json_response(_error_reply(_error(INVALID_REQUEST, str(exc))), status=413)
    return json_response(_error_reply(_error(PARSE_ERROR, f"Parse error: {exc}")), status=status)


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
