"""One gRPC method handler per model, built once at start-up.

The path of a call: bytes -> message (protobuf's C runtime) -> keyword arguments (codec) ->
model (runner: direct, batched or streaming) -> result -> message -> bytes. Every failure
leaves through `status_of`, so each exception type maps to one status whichever model raised.
Middleware, injection and the admission gate are compiled in only where they are used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from ..balancing import ADMISSION_HEADERS
from ..codec import Codec
from ..exceptions import SerializationError, status_of
from ..injection import Context, injector
from ..runtime.registry import ModelEntry
from ..runtime.runner import ModelRunner
from ..schema import Schema
from .middleware import RequestEvent, lower_keys
from .policy import CallPolicy
from .streams import stream_input_core

logger = logging.getLogger("blazerpc.server")

ServicerContext = grpc.aio.ServicerContext
ADMISSION_KEY, ADMISSION_VALUE = ADMISSION_HEADERS
Core = Callable[[bytes, ServicerContext], Awaitable[Any]]


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


def _arguments(
    entry: ModelEntry, schema: Schema, policy: CallPolicy
) -> Callable[[bytes, ServicerContext], Awaitable[dict[str, Any]] | dict[str, Any]]:
    """Request bytes (and, for models that ask, the call's context) to the model's arguments."""
    parse = _parser(entry, schema)
    if not entry.signature.injected:
        return lambda request, context: parse(request)
    inject, method, state = injector(entry.signature.injected), entry.method, policy.app_state

    async def parse_and_inject(request: bytes, context: ServicerContext) -> dict[str, Any]:
        kwargs = parse(request)
        call = Context(lower_keys(context.invocation_metadata()), context.peer(), method, state)
        kwargs.update(await inject(call))
        return kwargs

    return parse_and_inject


def _wrapper(entry: ModelEntry, schema: Schema) -> Callable[[Any], Message]:
    return Codec(schema.response_class(entry.rpc), (entry.signature.result,)).wrap


def unary_core(runner: ModelRunner, schema: Schema, policy: CallPolicy) -> Core:
    entry, predict = runner.entry, runner.predict
    arguments, wrap = _arguments(entry, schema, policy), _wrapper(entry, schema)

    if not entry.signature.injected:

        async def unary(request: bytes, context: ServicerContext) -> bytes:
            result = await predict(arguments(request, context), context.time_remaining())
            return wrap(result).SerializeToString()

        return unary

    async def unary_injected(request: bytes, context: ServicerContext) -> bytes:
        kwargs = await arguments(request, context)  # type: ignore[misc]
        result = await predict(kwargs, context.time_remaining())
        return wrap(result).SerializeToString()

    return unary_injected


async def _close(chunks: AsyncIterator[Any]) -> None:
    """Finish a model's generator: CancelledError where it is suspended, then close it."""
    try:
        await chunks.athrow(asyncio.CancelledError())  # type: ignore[attr-defined]
    except (asyncio.CancelledError, StopAsyncIteration, RuntimeError):
        pass
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def stream_core(runner: ModelRunner, schema: Schema, policy: CallPolicy) -> Core:
    entry, stream = runner.entry, runner.stream
    arguments, wrap = _arguments(entry, schema, policy), _wrapper(entry, schema)

    async def stream_chunks(request: bytes, context: ServicerContext) -> None:
        kwargs = arguments(request, context)
        if not isinstance(kwargs, dict):
            kwargs = await kwargs
        chunks = stream(kwargs)
        try:
            # context.write waits for the transport, so a slow reader slows the generator.
            async for chunk in chunks:
                message = wrap(chunk).SerializeToString()
                try:
                    await context.write(message)
                except Exception as exc:  # the call is over: the client left between chunks
                    logger.debug("stream of model '%s' ended by the transport: %r", entry.name, exc)
                    await _close(chunks)
                    return
        except asyncio.CancelledError:  # the client left, its deadline passed, or shutdown
            await _close(chunks)
            raise
        except Exception:
            await chunks.aclose()  # type: ignore[attr-defined]
            raise

    return stream_chunks


async def _abort(context: ServicerContext, entry: ModelEntry, exc: BaseException) -> None:
    code, details = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        logger.error("model '%s' failed", entry.name, exc_info=exc)
    await context.abort(code, details)


def _asks_admission_headers(metadata: Any) -> bool:
    return any(key == ADMISSION_KEY and value == ADMISSION_VALUE for key, value in metadata or ())


def _serve(core: Core, entry: ModelEntry, policy: CallPolicy) -> Core:
    """The core with the gate, error mapping and (only if any) middleware around it.

    For a client that asks (balancing.ADMISSION_HEADERS), response headers go out once the call
    is admitted, before the model runs: its gRPC retry policy never retries a call whose
    headers arrived, so a refusal (UNAVAILABLE from the gate while starting or draining) may be
    retried and a call the model may have begun never is, even when its replica dies before
    answering. Only such clients pay for the extra write.
    """
    gate = policy.gate

    if not policy.middleware:

        async def handle(request: bytes, context: ServicerContext) -> Any:
            try:
                gate.admit()
                if _asks_admission_headers(context.invocation_metadata()):
                    await context.send_initial_metadata(())
                return await core(request, context)
            except Exception as exc:
                await _abort(context, entry, exc)

        return handle

    method, observed = entry.method, policy.observed

    async def handle_observed(request: bytes, context: ServicerContext) -> Any:
        event = RequestEvent(method, lower_keys(context.invocation_metadata()), context.peer())
        try:
            async with observed(event):
                if event.metadata.get(ADMISSION_KEY) == ADMISSION_VALUE:
                    await context.send_initial_metadata(())
                return await core(request, context)
        except Exception as exc:
            await _abort(context, entry, exc)

    return handle_observed


def model_handlers(
    runners: list[ModelRunner], schema: Schema, policy: CallPolicy
) -> dict[str, grpc.RpcMethodHandler]:
    """The method handlers of the InferenceService, keyed by method name."""
    handlers = {}
    for runner in runners:
        entry = runner.entry
        if entry.client_streaming:  # issue 15: client-streaming and bidirectional models
            handle = _serve(stream_input_core(runner, schema, policy), entry, policy)
            kind = (
                grpc.stream_stream_rpc_method_handler
                if entry.streaming
                else grpc.stream_unary_rpc_method_handler
            )
            handlers[f"Predict{entry.rpc}"] = kind(handle)
        elif entry.streaming:
            handle = _serve(stream_core(runner, schema, policy), entry, policy)
            handlers[f"Predict{entry.rpc}"] = grpc.unary_stream_rpc_method_handler(handle)
        else:
            handle = _serve(unary_core(runner, schema, policy), entry, policy)
            handlers[f"Predict{entry.rpc}"] = grpc.unary_unary_rpc_method_handler(handle)
    return handlers
