"""KServe v2 over gRPC: `inference.GRPCInferenceService`, served on the native service's port.

A request's tensors become the model's keyword arguments (validated by the shared tensor
checks), and the call takes the same pipeline and runner as a native one (so it batches with
native calls, and fails with the same status).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from ..exceptions import SerializationError, ValidationError
from ..pipeline import CallerGone, Failure, ModelCall, Wire, admitted_lookup, fail
from ..policy import CallPolicy
from ..runtime.runner import ModelRunner
from .grpc_aio import ServicerContext, abort, grpc_caller, remaining
from .kserve import messages as pb
from .kserve.model import OFF_LOOP_BYTES, KServeModel, find, kserve_models, server_metadata
from .kserve.tensors import CONTENTS_FIELDS
from .wire_scan import split_field

SERVICE_NAME = pb.SERVICE_NAME
_STREAM_HINT = "call it with ModelStreamInfer"
# Triton's request parameter and response parameter marking a request's last stream response.
_FINAL_OPT_IN = "triton_enable_empty_final_response"
_FINAL = "triton_final_response"


_RAW_INPUT_CONTENTS = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number


@dataclass(frozen=True)
class InferRequest:
    """A ModelInferRequest, with its raw_input_contents apart. For a large request they are
    views of the received bytes: protobuf would copy each one twice (parsing, then on every
    access) and size the message by encoding it, all on the event loop and holding the GIL,
    some 200 ms for 60 MB, while health checks and every other call wait."""

    message: Any  # without raw_input_contents when `raw` holds views
    raw: list[bytes] | list[memoryview]
    size: int  # bytes on the wire


def parse_infer_request(data: bytes) -> InferRequest:
    """`data` as an InferRequest; DecodeError if it is not a ModelInferRequest."""
    if len(data) <= OFF_LOOP_BYTES:
        message = pb.ModelInferRequest.FromString(data)
        return InferRequest(message, list(message.raw_input_contents), len(data))
    rest, raw = split_field(data, _RAW_INPUT_CONTENTS)
    return InferRequest(pb.ModelInferRequest.FromString(rest), raw, len(data))


def _kwargs(model: KServeModel, request: InferRequest) -> dict[str, Any]:
    """Keyword arguments from a request's inputs, raw or typed."""
    inputs, raw = request.message.inputs, request.raw
    if raw and len(raw) != len(inputs):
        raise ValidationError(
            f"raw_input_contents holds {len(raw)} entries for {len(inputs)} inputs; "
            "send one per input, in the order of inputs"
        )
    received: dict[str, Any] = {}
    for i, tensor in enumerate(inputs):
        spec = model.input(tensor.name, received)
        if raw:
            received[spec.name] = spec.from_raw(tensor.datatype, tensor.shape, raw[i])
        else:
            field = CONTENTS_FIELDS.get(tensor.datatype)
            values = None if field is None else getattr(tensor.contents, field)
            received[spec.name] = spec.from_values(tensor.datatype, tensor.shape, values)
    if request.message.outputs:
        model.check_outputs([o.name for o in request.message.outputs])
    return model.complete(received)


def _bool_param(message: Any, name: str) -> bool:
    params = message.parameters
    return name in params and params[name].bool_param


def _wants_raw(request: InferRequest) -> bool:
    """Raw outputs for a request that sent raw inputs or asked with `binary_data` (the name
    Triton's HTTP extension uses); typed contents otherwise."""
    return (
        bool(request.raw)
        or _bool_param(request.message, "binary_data_output")
        or any(_bool_param(o, "binary_data") for o in request.message.outputs)
    )


def _response(model: KServeModel, request: InferRequest, result: Any, raw: bool) -> Any:
    output = model.output
    shape, data = output.encode(result)
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=model.version, id=request.message.id
    )
    tensor = response.outputs.add(name=output.name, datatype=output.datatype, shape=shape)
    if raw or output.datatype == "FP16":
        response.raw_output_contents.append(output.raw(data))
    else:
        getattr(tensor.contents, CONTENTS_FIELDS[output.datatype]).extend(output.elements(data))
    return response


def _streamed(response: Any, request: InferRequest, *, final: bool) -> Any:
    """A ModelStreamInfer message; marked when the client opted in to Triton's
    `triton_final_response` flag, which tells it a request's last response has come."""
    if _bool_param(request.message, _FINAL_OPT_IN):
        response.parameters[_FINAL].bool_param = final
    return pb.ModelStreamInferResponse(infer_response=response)


def _empty_response(model: KServeModel, request: InferRequest) -> Any:
    return pb.ModelInferResponse(
        model_name=model.name, model_version=model.version, id=request.message.id
    )


def _decode_in_thread(model: KServeModel) -> Callable[[InferRequest], bool] | None:
    """For a model with BYTES inputs: whether a request is large enough to split off the loop."""
    if not model.takes_bytes:
        return None
    return lambda request: request.size > OFF_LOOP_BYTES


async def _stream_error(context: ServicerContext, failure: Failure) -> Any:
    return pb.ModelStreamInferResponse(error_message=failure.details)


Out = TypeVar("Out")


def _model_call(
    model: KServeModel,
    policy: CallPolicy,
    rpc: str,
    reply: Callable[[InferRequest, Any], Out],
    reject: Callable[[ServicerContext, Failure], Awaitable[Out]],
) -> ModelCall[InferRequest, ServicerContext, Out]:
    """A model's calls over one RPC; `reply` wraps the ModelInferResponse as the RPC sends it."""
    return ModelCall(
        model.runner,
        policy,
        Wire(
            protocol="KServe gRPC",
            decode=lambda request: _kwargs(model, request),
            encode=lambda request, result: reply(
                request, _response(model, request, result, _wants_raw(request))
            ),
            caller=grpc_caller(f"/{SERVICE_NAME}/{rpc}/{model.name}"),
            reject=reject,
            timeout=remaining,
            decode_in_thread=_decode_in_thread(model),
        ),
    )


def _infer_call(
    model: KServeModel, policy: CallPolicy
) -> ModelCall[InferRequest, ServicerContext, bytes]:
    """ModelInfer: the reply's bytes, or an abort."""

    def reply(request: InferRequest, response: Any) -> bytes:
        return bytes(response.SerializeToString())

    return _model_call(model, policy, "ModelInfer", reply, abort)


def _stream_call(
    model: KServeModel, policy: CallPolicy
) -> ModelCall[InferRequest, ServicerContext, Any]:
    """ModelStreamInfer: one message per result (per chunk of a streaming model), or one
    `error_message` on failure; the stream goes on either way."""
    final = not model.streaming

    def reply(request: InferRequest, response: Any) -> Any:
        return _streamed(response, request, final=final)

    return _model_call(model, policy, "ModelStreamInfer", reply, _stream_error)


class KServeServicer:
    """The RPCs of GRPCInferenceService over the server's runners."""

    def __init__(self, runners: dict[str, ModelRunner], policy: CallPolicy) -> None:
        self._models = kserve_models(runners)
        self._infer = {name: _infer_call(m, policy) for name, m in self._models.items()}
        self._stream = {name: _stream_call(m, policy) for name, m in self._models.items()}
        self._policy = policy
        self._gate = policy.gate
        self._server_metadata = pb.ServerMetadataResponse(**server_metadata())

    def _ready(self) -> bool:
        return self._gate.reason is None

    async def server_live(self, request: Any, context: ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self._ready())

    async def _find(self, name: str, version: str, rpc: str, context: ServicerContext) -> Any:
        caller = grpc_caller(f"/{SERVICE_NAME}/{rpc}/{name}")(None, context)
        return await admitted_lookup(
            self._policy, caller, lambda: find(self._models, name, version)
        )

    async def model_ready(self, request: Any, context: ServicerContext) -> Any:
        """Whether a model is ready; like its metadata, told only to admitted callers."""
        caller = grpc_caller(f"/{SERVICE_NAME}/ModelReady/{request.name}")(request, context)
        try:
            async with self._policy.observed(caller, gated=False):
                try:  # issue 13: any served version, "" the highest
                    model: KServeModel | None = find(self._models, request.name, request.version)
                except Exception:
                    model = None
                ready = model is not None and self._ready()
        except Exception as exc:
            await abort(context, fail(exc, "KServe gRPC ModelReady"))
        return pb.ModelReadyResponse(ready=ready)

    async def server_metadata(self, request: Any, context: ServicerContext) -> Any:
        return self._server_metadata

    async def model_metadata(self, request: Any, context: ServicerContext) -> Any:
        """A model's metadata, only for callers middleware (auth) admits."""
        caller = grpc_caller(f"/{SERVICE_NAME}/ModelMetadata/{request.name}")(request, context)
        try:
            model = await self._find(request.name, request.version, "ModelMetadata", context)
            async with self._policy.observed(caller, gated=False):
                return pb.ModelMetadataResponse(**model.metadata())
        except Exception as exc:
            await abort(context, fail(exc, "KServe gRPC ModelMetadata"))

    async def model_infer(self, data: bytes, context: ServicerContext) -> bytes:
        try:
            try:
                request = parse_infer_request(data)
            except DecodeError as exc:
                raise SerializationError(
                    f"request could not be decoded as inference.ModelInferRequest: {exc}"
                ) from None
            message = request.message
            model = await self._find(
                message.model_name, message.model_version, "ModelInfer", context
            )
            model.check_unary(_STREAM_HINT)
        except Exception as exc:
            await abort(context, fail(exc, "KServe gRPC ModelInfer"))
        return await self._infer[model.key].unary(request, context)

    async def model_stream_infer(
        self, requests: AsyncIterator[InferRequest], context: ServicerContext
    ) -> None:
        """Each request in turn: a streaming model answers one response per chunk, any other
        model one response. A failed request answers `error_message`; the stream goes on."""
        async for request in requests:
            try:
                model = await self._find(
                    request.message.model_name,
                    request.message.model_version,
                    "ModelStreamInfer",
                    context,
                )
            except Exception as exc:
                failure = fail(exc, "KServe gRPC ModelStreamInfer")
                await context.write(await _stream_error(context, failure))
                continue
            call = self._stream[model.key]
            if not model.streaming:
                await context.write(await call.unary(request, context))
                continue
            try:
                completed = await call.stream(request, context, context.write)
            except CallerGone:
                return
            # A request whose stream failed ended with its error_message: no final flag after.
            if completed and _bool_param(request.message, _FINAL_OPT_IN):
                await context.write(_streamed(_empty_response(model, request), request, final=True))


def add_kserve_service(
    server: grpc.aio.Server,
    runners: dict[str, ModelRunner],
    policy: CallPolicy,
) -> None:
    """Serve GRPCInferenceService on `server`, under the same call policy as the native one."""
    servicer = KServeServicer(runners, policy)

    def unary(behavior: Any, request: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=request.FromString,
            response_serializer=_serialize,
        )

    server.add_registered_method_handlers(
        SERVICE_NAME,
        {
            "ServerLive": unary(servicer.server_live, pb.ServerLiveRequest),
            "ServerReady": unary(servicer.server_ready, pb.ServerReadyRequest),
            "ModelReady": unary(servicer.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": unary(servicer.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": unary(servicer.model_metadata, pb.ModelMetadataRequest),
            # Parsed in the handler, so bad bytes answer INVALID_ARGUMENT as natively.
            "ModelInfer": grpc.unary_unary_rpc_method_handler(servicer.model_infer),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                servicer.model_stream_infer,
                request_deserializer=parse_infer_request,
                response_serializer=_serialize,
            ),
        },
    )


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
