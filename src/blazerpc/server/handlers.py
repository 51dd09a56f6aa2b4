"""One gRPC method handler per model, built once at start-up.

The path of a call: bytes -> message (protobuf's C runtime) -> keyword arguments (codec) ->
model (executor) -> result -> message -> bytes. Every failure leaves through `status_of`, so
each exception type maps to one status whichever model raised it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from ..codec import Codec
from ..exceptions import status_of
from ..runtime.registry import ModelEntry
from ..runtime.runner import ModelRunner
from ..schema import Schema

logger = logging.getLogger("blazerpc.server")

Handler = Callable[[bytes, grpc.aio.ServicerContext], Any]


def _parser(entry: ModelEntry, schema: Schema) -> Callable[[bytes], dict[str, Any]]:
    """Bytes to validated keyword arguments, raising an error that names what is wrong."""
    cls = schema.request_class(entry.rpc)
    parse, decode = cls.FromString, Codec(cls, entry.signature.params).decode
    what = cls.DESCRIPTOR.full_name

    def parse_request(data: bytes) -> dict[str, Any]:
        try:
            msg = parse(data)
        except DecodeError as exc:
            raise _BadRequest(f"request could not be decoded as {what}: {exc}") from None
        return decode(msg)

    return parse_request


class _BadRequest(Exception):
    """Bytes that are not a request message."""


def _wrapper(entry: ModelEntry, schema: Schema) -> Callable[[Any], Message]:
    return Codec(schema.response_class(entry.rpc), (entry.signature.result,)).wrap


async def _abort(context: grpc.aio.ServicerContext, entry: ModelEntry, exc: BaseException) -> None:
    if isinstance(exc, _BadRequest):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    code, details = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        logger.error("model '%s' failed", entry.name, exc_info=exc)
    await context.abort(code, details)


def unary_handler(runner: ModelRunner, schema: Schema) -> grpc.RpcMethodHandler:
    entry = runner.entry
    parse = _parser(entry, schema)
    wrap = _wrapper(entry, schema)
    predict = runner.predict

    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            result = await predict(parse(request), context.time_remaining())
            return wrap(result).SerializeToString()
        except Exception as exc:
            await _abort(context, entry, exc)
            raise  # unreachable: abort raises

    return grpc.unary_unary_rpc_method_handler(handle)


async def _close(chunks: AsyncIterator[Any]) -> None:
    """Finish a model's generator: CancelledError where it is suspended, then close it."""
    try:
        await chunks.athrow(asyncio.CancelledError())  # type: ignore[attr-defined]
    except (asyncio.CancelledError, StopAsyncIteration, RuntimeError):
        pass
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def stream_handler(runner: ModelRunner, schema: Schema) -> grpc.RpcMethodHandler:
    entry = runner.entry
    parse = _parser(entry, schema)
    wrap = _wrapper(entry, schema)
    stream = runner.stream

    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> None:
        try:
            chunks = stream(parse(request))
        except Exception as exc:
            await _abort(context, entry, exc)
        finished = False
        try:
            # context.write waits for the transport, so a slow reader slows the generator.
            async for chunk in chunks:
                await context.write(wrap(chunk).SerializeToString())
            finished = True
        except Exception as exc:
            finished = True
            await _abort(context, entry, exc)
        finally:
            if not finished:  # cancelled: the client left, its deadline passed, or shutdown
                await _close(chunks)

    return grpc.unary_stream_rpc_method_handler(handle)


def model_handlers(runners: list[ModelRunner], schema: Schema) -> dict[str, grpc.RpcMethodHandler]:
    """The method handlers of the InferenceService, keyed by method name."""
    return {
        f"Predict{r.entry.rpc}": (stream_handler if r.entry.streaming else unary_handler)(r, schema)
        for r in runners
    }
