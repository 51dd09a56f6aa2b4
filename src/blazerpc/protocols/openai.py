"""OpenAI-compatible endpoints on the HTTP port, for the models registered with `openai=True`.

`POST /v1/completions` and `POST /v1/chat/completions` (chat messages folded into the prompt by
the model's chat template) answer at once with `stream: false`, or as server-sent events with
`stream: true`: one `data:` chunk per chunk the model yields, then `data: [DONE]`.
`GET /v1/models` lists the exposed models. Calls go through the shared call pipeline (gate,
middleware, so `Authorization: Bearer ...` is checked by TokenAuthMiddleware, and runners) as
every other protocol; failures come back in OpenAI's error shape with the HTTP status of
their gRPC one.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web

from ..exceptions import ModelNotFoundError, ValidationError
from ..pipeline import CallerGone, Failure, ModelCall, Wire, admitted_lookup, fail
from ..policy import CallPolicy
from ..runtime.runner import ModelRunner
from . import http_wire, json_io
from .http_wire import http_caller, json_response
from .kserve_rest import HTTP_STATUS
from .openai_models import OpenAIModel

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error"}


class _Request:
    """One completion request, read and checked before the model runs."""

    def __init__(self, body: dict[str, Any], served: _Served, chat: bool, path: str) -> None:
        self.body, self.chat, self.path = body, chat, path
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


Piece = str | Failure  # what the pipeline hands back: a text, or how the call failed


async def _as_piece(request: web.Request, failure: Failure) -> Piece:
    return failure


class _Served:
    """An exposed model and its call through the shared pipeline."""

    def __init__(self, runner: ModelRunner, policy: CallPolicy) -> None:
        self.model: OpenAIModel = runner.entry.openai
        self.streaming = runner.entry.streaming
        model = self.model
        self.call: ModelCall[_Request, web.Request, Piece] = ModelCall(
            runner,
            policy,
            Wire(
                protocol="OpenAI",
                decode=lambda call: model.arguments(call.prompt, call.body),
                encode=lambda call, text: str(text),
                caller=lambda call, request: http_caller(call.path)(call, request),
                reject=_as_piece,
            ),
        )


def _error(failure: Failure, not_found: bool = False) -> web.Response:
    """A failure as OpenAI's error object, with the HTTP status of its gRPC status."""
    status = HTTP_STATUS.get(failure.code, 500)
    return json_response(_error_body(failure, not_found), status)


def _error_body(failure: Failure, not_found: bool = False) -> dict[str, Any]:
    status = HTTP_STATUS.get(failure.code, 500)
    kind = _ERROR_TYPES.get(status) or (
        "server_error" if status >= 500 else "invalid_request_error"
    )
    code = "model_not_found" if not_found else failure.code.name.lower()
    error = {"message": failure.details, "type": kind, "param": failure.field, "code": code}
    return {"error": error}


def _refused(exc: Exception, where: str) -> web.Response:
    """The answer to a request refused before it reached the pipeline."""
    failure = fail(exc, where)
    if isinstance(exc, json_io.BodyTooLarge):
        return json_response(_error_body(failure), 413)
    return _error(failure, not_found=isinstance(exc, ModelNotFoundError))


def _event(data: Any) -> bytes:
    return b"data: " + json_io.dumps(data) + b"\n\n"


class _Events:
    """A completion's server-sent events. Until the first text the call can still fail with
    its own HTTP status; after it, a failure travels as an event, which OpenAI clients raise."""

    def __init__(self, request: web.Request, call: _Request) -> None:
        self.request, self.call = request, call
        self.response: web.StreamResponse | None = None
        self.failure: Failure | None = None

    async def _prepared(self) -> web.StreamResponse:
        if self.response is None:
            self.response = web.StreamResponse(headers=_SSE_HEADERS)
            await self.response.prepare(self.request)
            if self.call.chat:
                await self.response.write(_event(_role(self.call)))
        return self.response

    async def send(self, piece: Piece) -> None:
        if isinstance(piece, Failure):
            if self.response is None:
                self.failure = piece
            else:
                await self.response.write(_event(_error_body(piece)))
            return
        response = self.response if self.response is not None else await self._prepared()
        await response.write(_event(self.call.chunk(piece)))

    async def finish(self, complete: bool) -> web.StreamResponse:
        """End the events: with `stop` and `[DONE]` when `complete`, else after the error."""
        if self.failure is not None:
            return _error(self.failure)
        response = await self._prepared()
        if complete:
            await response.write(_event(self.call.chunk(None, "stop")))
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


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

    async def _admitted(self, request: web.Request, path: str, name: Any) -> _Served:
        """The model `name` names; why not (unknown, or not a name) only once the gate and
        middleware (auth) have admitted the request, so who may not call learns nothing."""
        caller = http_caller(path)(None, request)
        return await admitted_lookup(self._policy, caller, lambda: self._find(name))

    async def list_models(self, request: web.Request) -> web.Response:
        try:
            async with self._policy.observed(http_caller("/v1/models")(None, request)):
                pass
        except Exception as exc:
            return _refused(exc, "GET /v1/models")
        return json_response({"object": "list", "data": [self._card(n) for n in self._served]})

    async def get_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        path = f"/v1/models/{name}"
        try:
            caller = http_caller(path)(None, request)
            async with self._policy.observed(caller):
                self._find(name)
        except Exception as exc:
            return _refused(exc, f"GET {path}")
        return json_response(self._card(name))

    def _card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "blazerpc"}

    def _find(self, name: Any) -> _Served:
        if not isinstance(name, str):
            raise ValidationError("'model' must name a model (see GET /v1/models)", field="model")
        served = self._served.get(name)
        if served is None:
            raise ModelNotFoundError(
                name,
                message=f"no model '{name}' on the OpenAI endpoints; they serve: "
                + (", ".join(self._served) or "none"),
            )
        return served

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        path = "/v1/chat/completions" if chat else "/v1/completions"
        try:
            body = await http_wire.read_json(request, self._max_json_bytes)
            if not isinstance(body, dict):
                raise ValidationError("the body must be a JSON object")
            served = await self._admitted(request, path, body.get("model"))
            call = _Request(body, served, chat, f"{path}/{served.model.name}")
        except Exception as exc:
            return _refused(exc, f"POST {path}")
        if not served.streaming:
            piece = await served.call.unary(call, request)
            if isinstance(piece, Failure):
                return _error(piece)
            if not call.stream:
                return json_response(call.whole(piece))
            pieces: list[Piece] = [piece]
        elif not call.stream:
            pieces = []
            await served.call.stream(call, request, _append(pieces))
            if pieces and isinstance(pieces[-1], Failure):
                return _error(pieces[-1])
            return json_response(call.whole("".join(str(p) for p in pieces)))
        events = _Events(request, call)
        try:
            if served.streaming:
                complete = await served.call.stream(call, request, events.send)
            else:
                await events.send(pieces[0])
                complete = True
            return await events.finish(complete)
        except (CallerGone, ConnectionResetError):
            # the client left (before the headers, or between events); the model is closed
            return events.response if events.response is not None else web.StreamResponse()


def _append(pieces: list[Piece]) -> Any:
    async def append(piece: Piece) -> None:
        pieces.append(piece)

    return append


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
