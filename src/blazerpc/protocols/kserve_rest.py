"""KServe v2 over HTTP/REST: health, metadata and inference with JSON tensors, plus Triton's
binary tensor extension (raw tensor bytes after the JSON, sized by `binary_data_size`).

Health and readiness answer 200 for true and 400 for false, as the protocol defines. Errors
answer `{"error": details}` with the HTTP status of the same failure's gRPC status
(Google's standard mapping), so REST, KServe gRPC and the native service agree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from aiohttp import web
from grpc import StatusCode

from ..exceptions import ValidationError
from ..pipeline import Failure, ModelCall, Wire, admitted_lookup, fail
from ..policy import CallPolicy
from ..runtime.runner import ModelRunner
from . import json_io
from .http_wire import http_caller, json_response
from .json_values import is_shape
from .kserve.model import OFF_LOOP_BYTES, KServeModel, find, kserve_models, server_metadata

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


def _refused(exc: Exception, where: str) -> web.Response:
    """The answer to a request refused before it reached the pipeline."""
    if isinstance(exc, json_io.BodyTooLarge):
        return json_response({"error": str(exc)}, 413)
    return _error(fail(exc, where))


async def _reject(request: web.Request, failure: Failure) -> web.Response:
    return _error(failure)


class _Body(NamedTuple):
    """An inference request: its JSON header, the binary tensor data after it, and the
    size of the whole body."""

    doc: dict[str, Any]
    binary: memoryview
    size: int


def _header_length(request: web.Request, max_json_bytes: int) -> int | None:
    """The size of the JSON header before binary tensor data, checked against the JSON limit
    before the body is read (without binary data, the whole body is JSON)."""
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        json_io.check_size(request, max_json_bytes, "the inference request")
        return None
    try:
        size = int(value)
    except ValueError:
        raise ValidationError(f"{HEADER_LENGTH} must be an integer, got '{value}'") from None
    if size > max_json_bytes:
        raise json_io.BodyTooLarge(
            f"the JSON header of {size} bytes is over the limit of {max_json_bytes} bytes"
        )
    return size


def _split_body(body: bytes | memoryview, header_length: int | None) -> _Body:
    """The JSON inference header, checked for structure, and the binary tensor data after it."""
    size = len(body) if header_length is None else header_length
    if not 0 <= size <= len(body):
        raise ValidationError(f"{HEADER_LENGTH} is {size}, but the body holds {len(body)} bytes")
    view = memoryview(body)
    doc = json_io.loads(view[:size], "the inference request")
    _check_document(doc)
    return _Body(doc, view[size:], len(body))


def _check_document(doc: Any) -> None:
    """The request's structure, before any of it is used: objects where objects belong."""
    if not isinstance(doc, dict):
        raise ValidationError("the inference request must be a JSON object")
    _check_parameters(doc, "the inference request")
    for key in ("inputs", "outputs"):
        tensors = doc.get(key, [])
        if not isinstance(tensors, list) or not all(isinstance(t, dict) for t in tensors):
            raise ValidationError(f'"{key}" must be an array of tensor objects')
        for i, tensor in enumerate(tensors):
            _check_parameters(tensor, f"{key}[{i}]")
    if "inputs" not in doc:
        raise ValidationError('the inference request needs "inputs": an array of tensor objects')


def _check_parameters(obj: dict[str, Any], where: str) -> None:
    if not isinstance(obj.get("parameters", {}), dict):
        raise ValidationError(f'"parameters" of {where} must be an object')


def _shape(tensor: dict[str, Any], name: str) -> list[int]:
    shape = tensor.get("shape")
    if not is_shape(shape):
        raise ValidationError(f"input '{name}': shape must be an array of integers", field=name)
    return shape


def _kwargs(model: KServeModel, doc: dict[str, Any], binary: memoryview) -> dict[str, Any]:
    """Keyword arguments from a request `_check_document` has checked."""
    received: dict[str, Any] = {}
    offset = 0
    for tensor in doc["inputs"]:
        spec = model.input(str(tensor.get("name")), received)
        datatype, shape = str(tensor.get("datatype")), _shape(tensor, spec.name)
        size = tensor.get("parameters", {}).get("binary_data_size")
        if size is not None:
            if (
                not isinstance(size, int)
                or isinstance(size, bool)
                or size < 0
                or offset + size > len(binary)
            ):
                raise ValidationError(
                    f"input '{spec.name}': binary_data_size {size!r} is not a byte count "
                    f"within the {len(binary) - offset} bytes of binary data left",
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
    model.check_outputs([str(o.get("name")) for o in doc.get("outputs", [])])
    return model.complete(received)


def _binary_output(doc: dict[str, Any]) -> bool:
    """Whether the client asked for the result as binary data (Triton's extension)."""
    default = bool(doc.get("parameters", {}).get("binary_data_output", False))
    outputs = doc.get("outputs")
    if outputs:  # checked by _check_document, and by _kwargs: the model's one output
        return bool(outputs[0].get("parameters", {}).get("binary_data", default))
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
    header = json_io.dumps(head)
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
            decode_in_thread=(
                (lambda body: body.size > OFF_LOOP_BYTES) if model.takes_bytes else None
            ),
        ),
    )


class KServeRest:
    """The REST routes over the server's runners."""

    def __init__(
        self, runners: dict[str, ModelRunner], policy: CallPolicy, max_json_bytes: int
    ) -> None:
        self._models = kserve_models(runners)
        self._infer = {name: _infer_call(m, policy) for name, m in self._models.items()}
        self._policy = policy
        self._gate = policy.gate
        self._max_json_bytes = max_json_bytes

    def _ready(self) -> bool:
        return self._gate.reason is None

    async def _find(self, request: web.Request) -> KServeModel:
        """The model the path names, told (or refused as unknown) only to admitted callers."""
        info = request.match_info
        return await admitted_lookup(
            self._policy,
            http_caller(request.path)(None, request),
            lambda: find(self._models, info["name"], info.get("version", "")),
        )

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response(server_metadata())

    async def live(self, request: web.Request) -> web.Response:
        return web.Response()

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._ready() else 400)

    async def model_metadata(self, request: web.Request) -> web.Response:
        try:
            model = await self._find(request)
            async with self._policy.observed(http_caller(request.path)(None, request), gated=False):
                return json_response(model.metadata())
        except Exception as exc:
            return _error(fail(exc, "KServe REST model metadata"))

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            await self._find(request)
            async with self._policy.observed(http_caller(request.path)(None, request), gated=False):
                pass
        except Exception as exc:
            return _error(fail(exc, "KServe REST model readiness"))
        return web.Response(status=200 if self._ready() else 400)

    async def infer(self, request: web.Request) -> web.Response:
        try:
            model = await self._find(request)
            model.check_unary(_STREAM_HINT)
            header_length = _header_length(request, self._max_json_bytes)
            body = _split_body(await json_io.read_body(request), header_length)
        except Exception as exc:
            return _refused(exc, "KServe REST inference")
        return await self._infer[model.key].unary(body, request)


def add_kserve_routes(
    app: web.Application, runners: dict[str, ModelRunner], policy: CallPolicy, max_json_bytes: int
) -> None:
    rest = KServeRest(runners, policy, max_json_bytes)
    app.router.add_get("/v2", rest.server_metadata)
    app.router.add_get("/v2/health/live", rest.live)
    app.router.add_get("/v2/health/ready", rest.ready)
    for model in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(model, rest.model_metadata)
        app.router.add_get(f"{model}/ready", rest.model_ready)
        app.router.add_post(f"{model}/infer", rest.infer)
