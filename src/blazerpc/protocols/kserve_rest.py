"""KServe v2 over HTTP/REST: health, metadata and inference with JSON tensors, plus Triton's
binary tensor extension (raw tensor bytes after the JSON, sized by `binary_data_size`).

Health and readiness answer 200 for true and 400 for false, as the protocol defines. Errors
answer `{"error": details}` with the HTTP status of the same failure's gRPC status
(Google's standard mapping), so REST, KServe gRPC and the native service agree.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from aiohttp import web
from grpc import StatusCode

from ..exceptions import ValidationError
from ..pipeline import Failure, ModelCall, Wire, fail
from ..policy import CallPolicy
from ..runtime.runner import ModelRunner
from .http_wire import http_caller, json_response
from .json_values import is_shape
from .kserve.model import KServeModel, find, kserve_models, server_metadata

HEADER_LENGTH = "Inference-Header-Content-Length"
_STREAM_HINT = "call it with ModelStreamInfer over gRPC, or at POST /jsonrpc/stream/<model>"

HTTP_STATUS = {
    StatusCode.CANCELLED: 499,
    StatusCode.UNKNOWN: 500,
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.DEADLINE_EXCEEDED: 504,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.FAILED_PRECONDITION: 400,
    StatusCode.ABORTED: 409,
    StatusCode.OUT_OF_RANGE: 400,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.INTERNAL: 500,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DATA_LOSS: 500,
    StatusCode.UNAUTHENTICATED: 401,
}


def _error(failure: Failure) -> web.Response:
    return json_response({"error": failure.details}, HTTP_STATUS.get(failure.code, 500))


async def _reject(request: web.Request, failure: Failure) -> web.Response:
    return _error(failure)


class _Body(NamedTuple):
    """An inference request: its JSON header and the binary tensor data after it."""

    doc: dict[str, Any]
    binary: memoryview


def _split_body(body: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    """The JSON inference header and the binary tensor data after it."""
    size = len(body)
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise ValidationError(
                f"{HEADER_LENGTH} must be an integer, got '{header_length}'"
            ) from None
        if not 0 <= size <= len(body):
            raise ValidationError(
                f"{HEADER_LENGTH} is {size}, but the body holds {len(body)} bytes"
            )
    view = memoryview(body)
    try:
        return json.loads(view[:size].tobytes()), view[size:]
    except ValueError as exc:
        raise ValidationError(f"the inference request is not valid JSON: {exc}") from None


def _shape(tensor: dict[str, Any], name: str) -> list[int]:
    shape = tensor.get("shape")
    if not is_shape(shape):
        raise ValidationError(f"input '{name}': shape must be an array of integers", field=name)
    return shape


def _kwargs(model: KServeModel, doc: dict[str, Any], binary: memoryview) -> dict[str, Any]:
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise ValidationError('the inference request needs "inputs": an array of tensor objects')
    received: dict[str, Any] = {}
    offset = 0
    for tensor in inputs:
        spec = model.input(str(tensor.get("name")), received)
        datatype, shape = str(tensor.get("datatype")), _shape(tensor, spec.name)
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or offset + size > len(binary):
                raise ValidationError(
                    f"input '{spec.name}': binary_data_size {size!r} runs past the "
                    f"{len(binary)} bytes of binary data",
                    field=spec.name,
                )
            received[spec.name] = spec.from_raw(datatype, shape, binary[offset : offset + size])
            offset += size
        elif isinstance(tensor.get("data"), list):
            received[spec.name] = spec.from_values(datatype, shape, tensor["data"])
        else:
            raise ValidationError(
                f"input '{spec.name}': needs a \"data\" array or binary data", field=spec.name
            )
    if offset != len(binary):
        raise ValidationError(f"{len(binary) - offset} bytes of binary data belong to no input")
    outputs = doc.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise ValidationError('"outputs" must be an array of objects')
    model.check_outputs([str(o.get("name")) for o in outputs])
    return model.complete(received)


def _binary_output(doc: dict[str, Any]) -> bool:
    """Whether the client asked for the result as binary data (Triton's extension)."""
    default = bool((doc.get("parameters") or {}).get("binary_data_output", False))
    outputs = doc.get("outputs")
    if outputs:  # checked by _kwargs: the model's one output
        return bool((outputs[0].get("parameters") or {}).get("binary_data", default))
    return default


def _response(
    model: KServeModel, doc: dict[str, Any], result: Any, *, binary: bool
) -> web.Response:
    output = model.output
    shape, data = output.encode(result)
    tensor: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": shape}
    head: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if "id" in doc:
        head["id"] = doc["id"]
    head["outputs"] = [tensor]
    if not binary:
        elements = output.elements(data)
        if output.datatype == "BYTES":
            try:
                elements = [e.decode() for e in elements]
            except UnicodeDecodeError:
                raise ValidationError(
                    "the result holds bytes that are not UTF-8; request it as binary data "
                    '("binary_data": true)'
                ) from None
        tensor["data"] = elements
        return json_response(head)
    raw = output.raw(data)
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(head).encode()
    return web.Response(
        body=header + raw,
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def _infer_call(
    model: KServeModel, policy: CallPolicy
) -> ModelCall[_Body, web.Request, web.Response]:
    return ModelCall(
        model.runner,
        policy,
        Wire(
            protocol="KServe REST",
            decode=lambda body: _kwargs(model, body.doc, body.binary),
            encode=lambda body, result: _response(
                model, body.doc, result, binary=_binary_output(body.doc)
            ),
            caller=http_caller(f"/v2/models/{model.name}/infer"),
            reject=_reject,
        ),
    )


class KServeRest:
    """The REST routes over the server's runners."""

    def __init__(self, runners: dict[str, ModelRunner], policy: CallPolicy) -> None:
        self._models = kserve_models(runners)
        self._infer = {name: _infer_call(m, policy) for name, m in self._models.items()}
        self._gate = policy.gate

    def _ready(self) -> bool:
        return self._gate.reason is None

    def _find(self, request: web.Request) -> KServeModel:
        info = request.match_info
        return find(self._models, info["name"], info.get("version", ""))

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response(server_metadata())

    async def live(self, request: web.Request) -> web.Response:
        return web.Response()

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._ready() else 400)

    async def model_metadata(self, request: web.Request) -> web.Response:
        try:
            return json_response(self._find(request).metadata())
        except Exception as exc:
            return _error(fail(exc, "KServe REST model metadata"))

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            self._find(request)
        except Exception as exc:
            return _error(fail(exc, "KServe REST model readiness"))
        return web.Response(status=200 if self._ready() else 400)

    async def infer(self, request: web.Request) -> web.Response:
        try:
            model = self._find(request)
            model.check_unary(_STREAM_HINT)
            doc, binary = _split_body(await request.read(), request.headers.get(HEADER_LENGTH))
            if not isinstance(doc, dict):
                raise ValidationError("the inference request must be a JSON object")
        except Exception as exc:
            return _error(fail(exc, "KServe REST inference"))
        return await self._infer[model.name].unary(_Body(doc, binary), request)


def add_kserve_routes(
    app: web.Application, runners: dict[str, ModelRunner], policy: CallPolicy
) -> None:
    rest = KServeRest(runners, policy)
    app.router.add_get("/v2", rest.server_metadata)
    app.router.add_get("/v2/health/live", rest.live)
    app.router.add_get("/v2/health/ready", rest.ready)
    for model in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(model, rest.model_metadata)
        app.router.add_get(f"{model}/ready", rest.model_ready)
        app.router.add_post(f"{model}/infer", rest.infer)
