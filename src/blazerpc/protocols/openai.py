"""OpenAI-compatible endpoints on the HTTP port, for the models registered with `openai=True`.

`POST /v1/completions` and `POST /v1/chat/completions` (chat messages folded into the prompt by
the model's chat template) answer at once with `stream: false`, or as server-sent events with
`stream: true`: one `data:` chunk per chunk the model yields, then `data: [DONE]`.
`GET /v1/models` lists the exposed models. Calls go through the same gate, middleware (so
`Authorization: Bearer ...` is checked by TokenAuthMiddleware) and runners as every other
protocol; failures come back in OpenAI's error shape with the HTTP status of their gRPC one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from functools import partial
from typing import Any

from aiohttp import web
from grpc import StatusCode

from ..exceptions import ModelNotFoundError, ValidationError, status_of
from ..runtime.runner import ModelRunner
from ..server.middleware import RequestEvent
from ..server.policy import CallPolicy
from . import json_io
from .calls import Caller, ModelCalls
from .kserve_rest import HTTP_STATUS
from .openai_models import OpenAIModel

logger = logging.getLogger("blazerpc.openai")

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error"}


class _Request:
    """One completion request, read and checked before the model runs."""

    def __init__(self, body: dict[str, Any], served: _Served, chat: bool) -> None:
        self.body, self.chat = body, chat
        self.stream = body.get("stream", False)
        if not isinstance(self.stream, bool):
            raise ValidationError("'stream' must be true or false", field="stream")
        if body.get("n", 1) != 1:
            raise ValidationError("only n=1 is supported", field="n")
        if chat:
            self.prompt = served.model.chat_prompt(body.get("messages"))
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise ValidationError("'prompt' must be a string", field="prompt")
            self.prompt = prompt
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = served.model.name

    def chunk(self, text: str | None, finish_reason: str | None = None) -> dict[str, Any]:
        """One streamed event: a piece of text, or (with `finish_reason`) the end."""
        if self.chat:
            delta = {} if text is None else {"content": text}
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None}
            choice["finish_reason"] = finish_reason
            kind = "text_completion"
        return self._envelope(kind, choice)

    def whole(self, text: str) -> dict[str, Any]:
        """The answer of a `stream: false` request."""
        if self.chat:
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return self._envelope("chat.completion", choice)
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
        return self._envelope("text_completion", choice)

    def _envelope(self, kind: str, choice: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }


class _Served:
    """An exposed model and its calls through the shared policy."""

    def __init__(self, runner: ModelRunner, policy: CallPolicy) -> None:
        self.model: OpenAIModel = runner.entry.openai
        self.calls = ModelCalls(runner, policy)
        self.streaming = runner.entry.streaming

    def texts(self, request: _Request, caller: Callable[[], Caller]) -> AsyncIterator[str]:
        """The model's text as it comes: each chunk of a streaming model, or the one result."""
        decode = partial(self.model.arguments, request.prompt, request.body)
        if self.streaming:
            return self.calls.stream(decode, caller)
        return self._once(decode, caller)

    async def _once(self, decode: Callable[[], dict[str, Any]], caller: Any) -> AsyncIterator[str]:
        yield await self.calls.unary(decode, str, caller, None)


def _error(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """An exception as OpenAI's error object and the HTTP status of its gRPC status."""
    code, details = status_of(exc)
    if code is StatusCode.INTERNAL:
        logger.error("OpenAI-compatible call failed", exc_info=exc)
    status = 413 if isinstance(exc, json_io.BodyTooLarge) else HTTP_STATUS.get(code, 500)
    kind = _ERROR_TYPES.get(status) or (
        "server_error" if status >= 500 else "invalid_request_error"
    )
    error_code = "model_not_found" if isinstance(exc, ModelNotFoundError) else code.name.lower()
    param = getattr(exc, "field", None)
    return status, {"error": {"message": details, "type": kind, "param": param, "code": error_code}}


def _failure(exc: BaseException) -> web.Response:
    status, body = _error(exc)
    return _json(body, status)


_json = json_io.response


def _event(data: Any) -> bytes:
    return b"data: " + json_io.dumps(data) + b"\n\n"


def _caller(method: str, request: web.Request) -> Caller:
    headers = {k.lower(): v for k, v in request.headers.items()}
    return Caller(method, headers, request.remote or "")


class OpenAIRoutes:
    """The endpoints over the server's runners of models registered with `openai=True`."""

    def __init__(
        self, runners: dict[str, ModelRunner], policy: CallPolicy, max_json_bytes: int
    ) -> None:
        self._max_json_bytes = max_json_bytes
        self._served = {
            name: _Served(runner, policy)
            for name, runner in runners.items()
            if runner.entry.openai is not None
        }
        self._policy = policy

    async def _admitted(self, request: web.Request, method: str) -> None:
        """The gate and middleware (auth) for a request that reaches no model."""
        who = _caller(method, request)
        async with self._policy.observed(RequestEvent(who.method, who.metadata, who.peer)):
            pass

    async def list_models(self, request: web.Request) -> web.Response:
        try:
            await self._admitted(request, "/v1/models")
        except Exception as exc:
            return _failure(exc)
        return _json({"object": "list", "data": [self._card(n) for n in self._served]})

    async def get_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        try:
            await self._admitted(request, f"/v1/models/{name}")
            self._find(name)
        except Exception as exc:
            return _failure(exc)
        return _json(self._card(name))

    def _card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "blazerpc"}

    def _find(self, name: Any) -> _Served:
        if not isinstance(name, str):
            raise ValidationError("'model' must name a model (see GET /v1/models)", field="model")
        served = self._served.get(name)
        if served is None:
            raise ModelNotFoundError(
                f"no model '{name}' on the OpenAI endpoints; they serve: "
                + (", ".join(self._served) or "none")
            )
        return served

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        path = "/v1/chat/completions" if chat else "/v1/completions"
        try:
            json_io.check_size(request, self._max_json_bytes)
            body = json_io.loads(await json_io.read_body(request))
            if not isinstance(body, dict):
                raise ValidationError("the body must be a JSON object")
            name = body.get("model")
            if not isinstance(name, str) or name not in self._served:
                await self._admitted(request, path)  # who may not call learns nothing more
            served = self._find(name)
            call = _Request(body, served, chat)
        except Exception as exc:
            return _failure(exc)
        texts = served.texts(call, partial(_caller, f"{path}/{served.model.name}", request))
        async with aclosing(texts) as chunks:  # type: ignore[type-var]
            # Until the first chunk the call can still fail with its own HTTP status.
            try:
                first = await anext(chunks, None)
            except Exception as exc:
                return _failure(exc)
            if not call.stream:
                pieces = [first] if first is not None else []
                try:
                    pieces += [text async for text in chunks]
                except Exception as exc:
                    return _failure(exc)
                return _json(call.whole("".join(pieces)))
            return await self._events(request, call, first, chunks)

    async def _events(
        self, request: web.Request, call: _Request, first: str | None, rest: AsyncIterator[str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        try:
            await response.prepare(request)
            try:
                if call.chat:
                    await response.write(_event(_role(call)))
                if first is not None:
                    await response.write(_event(call.chunk(first)))
                async for text in rest:
                    await response.write(_event(call.chunk(text)))
                await response.write(_event(call.chunk(None, "stop")))
                await response.write(b"data: [DONE]\n\n")
            except ConnectionResetError:
                raise
            except Exception as exc:
                # Headers are gone: the error travels as an event, which OpenAI clients raise.
                await response.write(_event(_error(exc)[1]))
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client left (before the headers, or between events); the model is closed
        return response


def _role(call: _Request) -> dict[str, Any]:
    """The first chat event announces the assistant's role, as OpenAI's does."""
    chunk = call.chunk(None)
    chunk["choices"][0]["delta"] = {"role": "assistant", "content": ""}
    return chunk


def add_openai_routes(
    app: web.Application, runners: dict[str, ModelRunner], policy: CallPolicy, max_json_bytes: int
) -> None:
    routes = OpenAIRoutes(runners, policy, max_json_bytes)
    app.router.add_get("/v1/models", routes.list_models)
    app.router.add_get("/v1/models/{model}", routes.get_model)
    app.router.add_post("/v1/completions", routes.completions)
    app.router.add_post("/v1/chat/completions", routes.chat_completions)
