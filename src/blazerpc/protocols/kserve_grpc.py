"""KServe v2 over gRPC: `inference.GRPCInferenceService`, served on the native service's port.

A request's tensors become the model's keyword arguments (validated by the shared tensor
checks), the call goes to the same runner the native service uses (so it batches with native
calls), and every failure leaves through `status_of`, as it does natively.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from functools import partial
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ..exceptions import SerializationError, ValidationError, status_of
from ..runtime.runner import ModelRunner
from ..server.decoding import DecodingInHandler
from ..server.middleware import lower_keys
from ..server.policy import CallPolicy
from .calls import Caller, observed
from .kserve import messages as pb
from .kserve.model import KServeModel, find, kserve_models, server_metadata
from .kserve.tensors import CONTENTS_FIELDS

logger = logging.getLogger("blazerpc.kserve")

SERVICE_NAME = pb.SERVICE_NAME
_STREAM_HINT = "call it with ModelStreamInfer"
# Triton's request parameter and response parameter marking a request's last stream response.
_FINAL_OPT_IN = "triton_enable_empty_final_response"
_FINAL = "triton_final_response"


def _kwargs(model: KServeModel, request: Any) -> dict[str, Any]:
    """Keyword arguments from a request's inputs, raw or typed."""
    inputs, raw = request.inputs, request.raw_input_contents
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
    if request.outputs:
        model.check_outputs([o.name for o in request.outputs])
    return model.complete(received)


def _bool_param(message: Any, name: str) -> bool:
    params = message.parameters
    return name in params and params[name].bool_param


def _wants_raw(request: Any) -> bool:
    """Raw outputs for a request that sent raw inputs or asked with `binary_data` (the name
    Triton's HTTP extension uses); typed contents otherwise."""
    return (
        bool(request.raw_input_contents)
        or _bool_param(request, "binary_data_output")
        or any(_bool_param(o, "binary_data") for o in request.outputs)
    )


def _response(model: KServeModel, request: Any, result: Any, raw: bool) -> Any:
    output = model.output
    shape, data = output.encode(result)
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=model.version, id=request.id
    )
    tensor = response.outputs.add(name=output.name, datatype=output.datatype, shape=shape)
    if raw or output.datatype == "FP16":
        response.raw_output_contents.append(data)
    else:
        getattr(tensor.contents, CONTENTS_FIELDS[output.datatype]).extend(output.elements(data))
    return response


def _streamed(response: Any, marked: bool, *, final: bool) -> Any:
    """A ModelStreamInfer message; `marked` when the client opted in to Triton's
    `triton_final_response` flag, which tells it a request's last response has come."""
    if marked:
        response.parameters[_FINAL].bool_param = final
    return pb.ModelStreamInferResponse(infer_response=response)


def _empty_response(model: KServeModel, request: Any) -> Any:
    return pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)


def _caller(model_name: str, rpc: str, context: grpc.aio.ServicerContext) -> Caller:
    return Caller(
        f"/{SERVICE_NAME}/{rpc}/{model_name}",
        lower_keys(context.invocation_metadata()),
        context.peer(),
    )


class KServeServicer:
    """The RPCs of GRPCInferenceService over the server's runners."""

    def __init__(self, runners: dict[str, ModelRunner], policy: CallPolicy) -> None:
        self._models = kserve_models(runners, policy)
        self._policy = policy
        self._gate = policy.gate
        self._server_metadata = pb.ServerMetadataResponse(**server_metadata())

    def _ready(self) -> bool:
        return self._gate.reason is None

    async def _abort(self, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        code, details = status_of(exc)
        if code is grpc.StatusCode.INTERNAL:
            logger.error("KServe call failed", exc_info=exc)
        await context.abort(code, details)

    async def server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self._ready())

    async def _find(
        self, name: str, version: str, rpc: str, context: grpc.aio.ServicerContext
    ) -> KServeModel:
        """The model a call names; an unknown one is NOT_FOUND only once middleware (auth)
        has admitted the call, so that without a token nobody learns which models exist."""
        try:
            return find(self._models, name, version)
        except Exception as exc:
            async with observed(self._policy, _caller(name, rpc, context), gated=False):
                raise exc from None

    async def model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async with observed(
                self._policy, _caller(request.name, "ModelReady", context), gated=False
            ):
                model = self._models.get(request.name)
                ready = (
                    model is not None
                    and model.unsupported is None
                    and request.version in ("", model.version)
                    and self._ready()
                )
                return pb.ModelReadyResponse(ready=ready)
        except Exception as exc:
            await self._abort(context, exc)
            raise  # unreachable: abort raises

    async def server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self._server_metadata

    async def model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            model = await self._find(request.name, request.version, "ModelMetadata", context)
            async with observed(
                self._policy, _caller(model.name, "ModelMetadata", context), gated=False
            ):
                return pb.ModelMetadataResponse(**model.metadata())
        except Exception as exc:
            await self._abort(context, exc)
            raise  # unreachable: abort raises

    async def model_infer(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            try:
                request = pb.ModelInferRequest.FromString(data)
            except DecodeError as exc:
                raise SerializationError(
                    f"request could not be decoded as inference.ModelInferRequest: {exc}"
                ) from None
            model = await self._find(
                request.model_name, request.model_version, "ModelInfer", context
            )
            model.check_unary(_STREAM_HINT)
            return await model.calls.unary(
                model.decoder(partial(_kwargs, model, request), len(data)),
                lambda result: _response(
                    model, request, result, _wants_raw(request)
                ).SerializeToString(),
                partial(_caller, model.name, "ModelInfer", context),
                context.time_remaining(),
            )
        except Exception as exc:
            await self._abort(context, exc)
            raise  # unreachable: abort raises

    async def model_stream_infer(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """Each request in turn: a streaming model answers one response per chunk, any other
        model one response. A failed request answers `error_message`; the stream goes on."""
        async for request in requests:
            try:
                model = await self._find(
                    request.model_name, request.model_version, "ModelStreamInfer", context
                )
                decode = model.decoder(partial(_kwargs, model, request), request.ByteSize())
                respond = partial(_response, model, request, raw=_wants_raw(request))
                caller = partial(_caller, model.name, "ModelStreamInfer", context)
                marked = _bool_param(request, _FINAL_OPT_IN)
                if model.streaming:
                    async with aclosing(model.calls.stream(decode, caller)) as chunks:
                        async for chunk in chunks:
                            yield _streamed(respond(chunk), marked, final=False)
                    if marked:
                        yield _streamed(_empty_response(model, request), marked, final=True)
                else:
                    response = await model.calls.unary(
                        decode, respond, caller, context.time_remaining()
                    )
                    yield _streamed(response, marked, final=True)
            except Exception as exc:
                code, details = status_of(exc)
                if code is grpc.StatusCode.INTERNAL:
                    logger.error("KServe stream call failed", exc_info=exc)
                yield pb.ModelStreamInferResponse(error_message=details)


def add_kserve_service(
    server: grpc.aio.Server | DecodingInHandler,
    runners: dict[str, ModelRunner],
    policy: CallPolicy,
) -> None:
    """Serve GRPCInferenceService on `server`, under the same call policy as the native one."""
    servicer = KServeServicer(runners, policy)

    def unary(behavior: Any, request: Any) -> grpc.RpcMethodHandler:
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
                request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=_serialize,
            ),
        },
    )


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()
