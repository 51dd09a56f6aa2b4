"""The native InferenceService: one gRPC method handler per model, built once at start-up.

Only the wire is native here: request bytes -> message (protobuf's C runtime) -> keyword
arguments (codec), and result -> message -> bytes. Admission, middleware, injection, the
runner and failure mapping are the shared call pipeline's (`pipeline.ModelCall`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ..balancing import ADMISSION_HEADERS
from ..codec import Codec
from ..exceptions import SerializationError
from ..pipeline import CallerGone, ModelCall, Wire
from ..policy import CallPolicy
from ..protocols.grpc_aio import ServicerContext, abort, grpc_caller, remaining
from ..runtime.registry import ModelEntry
from ..runtime.runner import ModelRunner
from ..schema import Schema
from .streams import stream_input_handler

logger = logging.getLogger("blazerpc.server")

NativeCall = ModelCall[bytes, ServicerContext, bytes]
ADMISSION_KEY, ADMISSION_VALUE = ADMISSION_HEADERS


def _admitted(context: ServicerContext) -> Awaitable[None] | None:
    """For a client that asks (balancing.ADMISSION_HEADERS), response headers go out once the
    call is admitted, before the model runs: its gRPC retry policy never retries a call whose
    headers arrived, so a refusal (UNAVAILABLE from the gate while starting or draining) may
    be retried and a call the model may have begun never is, even when its replica dies
    before answering. Only such clients pay for the extra write, and only for models that do
    not run inline (the pipeline does not ask for those)."""
    for key, value in context.invocation_metadata() or ():
        if key == ADMISSION_KEY and value == ADMISSION_VALUE:
            return context.send_initial_metadata(())
    return None


def _parser(entry: ModelEntry, schema: Schema) -> Callable[[bytes], dict[str, Any]]:
    """Bytes to validated keyword arguments, raising an error that names what is wrong."""
    cls = schema.request_class(entry.rpc)
    parse, decode = cls.FromString, Codec(cls, entry.signature.params).decode
    what = cls.DESCRIPTOR.full_name

    def parse_request(data: bytes) -> dict[str, Any]:
        try:
            msg = parse(data)
        except DecodeError as exc:
            raise SerializationError(f"request could not be decoded as {what}: {exc}") from None
        return decode(msg)

    return parse_request


def _serializer(entry: ModelEntry, schema: Schema) -> Callable[[bytes, Any], bytes]:
    wrap = Codec(schema.response_class(entry.rpc), (entry.signature.result,)).wrap
    return lambda request, result: wrap(result).SerializeToString()


def native_wire(entry: ModelEntry, schema: Schema) -> Wire[bytes, ServicerContext, bytes]:
    return Wire(
        protocol="native gRPC",
        decode=_parser(entry, schema),
        encode=_serializer(entry, schema),
        caller=grpc_caller(entry.method),
        reject=abort,
        timeout=remaining,
        admitted=_admitted,
    )


def _streamer(call: NativeCall) -> Callable[[bytes, ServicerContext], Awaitable[None]]:
    async def stream_chunks(request: bytes, context: ServicerContext) -> None:
        try:
            await call.stream(request, context, context.write)
        except CallerGone as exc:
            logger.debug("%s", exc)

    return stream_chunks


def model_handlers(
    runners: list[ModelRunner], schema: Schema, policy: CallPolicy
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The method handlers of the InferenceService, keyed by method name."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for runner in runners:
        entry = runner.entry
        handler: grpc.RpcMethodHandler[Any, Any]
        if entry.client_streaming:  # client-streaming and bidirectional models
            handler = stream_input_handler(runner, schema, policy, _admitted)
        elif entry.streaming:
            call = ModelCall(runner, policy, native_wire(entry, schema))
            handler = grpc.unary_stream_rpc_method_handler(_streamer(call))
        else:
            call = ModelCall(runner, policy, native_wire(entry, schema))
            handler = grpc.unary_unary_rpc_method_handler(call.unary)
        for rpc in (entry.rpc, *entry.aliases):  # aliases: issue 13, model versions
            handlers[f"Predict{rpc}"] = handler
    return handlers
