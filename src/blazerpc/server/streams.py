"""Native gRPC handlers of models that take a stream of requests: client-streaming (one
result) and bidirectional (a stream of results), built once per model at start-up.

The request stream reaches the model as an iterator that reads one message each time the
model asks for the next item, so items arrive as they are sent, a slow model slows the sender
through HTTP/2 flow control, and a fast sender cannot fill the server's memory. The gate,
middleware, injection, runner and failure mapping are the shared call pipeline's: the whole
request stream is one call, whose "request" is the upload below.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ..codec import Codec
from ..exceptions import BlazeRPCError, ValidationError
from ..pipeline import CallerGone, Failure, ModelCall, Wire, fail
from ..policy import CallPolicy
from ..protocols.grpc_aio import ServicerContext, abort, grpc_caller
from ..runtime.registry import ModelEntry
from ..runtime.runner import ModelRunner
from ..runtime.stream_input import ThreadIterator
from ..schema import Schema

logger = logging.getLogger("blazerpc.server")

Requests = AsyncIterator[bytes]
Admitted = Callable[[ServicerContext], Awaitable[None] | None]
_CANCEL_WINDOW_S = 0.002


class _Upload:
    """One call's request stream, decoded item by item, with its gRPC context; remembers a bad
    item so that the call fails with it even if the model caught the error and carried on."""

    def __init__(
        self,
        decode_item: Callable[[bytes, int], Any],
        requests: Requests,
        context: ServicerContext,
        in_thread: bool,
    ) -> None:
        self.error: ValidationError | None = None
        self.context = context
        self.items = self._decoded(decode_item, requests)
        self._in_thread = in_thread
        self._thread: ThreadIterator[Any] | None = None

    async def _decoded(
        self, decode_item: Callable[[bytes, int], Any], requests: Requests
    ) -> AsyncGenerator[Any, None]:
        index = 0
        async for data in requests:
            try:
                item = decode_item(data, index)
            except ValidationError as exc:
                self.error = exc
                raise
            yield item
            index += 1
        # grpc.aio ends the request stream alike whether the client half-closed, cancelled or
        # ran out of time; a cancel reaches this task a moment later. Wait that moment, so a
        # cancelled upload raises CancelledError in the model instead of looking complete.
        remaining = self.context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise asyncio.CancelledError("the deadline has passed")
        await asyncio.sleep(_CANCEL_WINDOW_S)

    def source(self) -> Any:
        """The stream as the model reads it: async for an `async def` model, else blocking."""
        if not self._in_thread:
            return self.items
        self._thread = ThreadIterator(self.items, asyncio.get_running_loop())
        return self._thread

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def failure(self, failure: Failure, where: str) -> Failure:
        """A bad item is the caller's fault, whatever the model made of it."""
        return failure if self.error is None else fail(self.error, where)

    def cancel(self) -> None:
        """Wake a plain `def` model waiting for an item that will never come."""
        if self._thread is not None:
            self._thread.cancel()

    async def close(self) -> None:
        """The model may have stopped reading early."""
        await self.items.aclose()


def _item_decoder(entry: ModelEntry, schema: Schema) -> Callable[[bytes, int], Any]:
    """Bytes of the `index`-th request to its item, or a ValidationError naming both."""
    cls = schema.request_class(entry.rpc)
    parse, decode = cls.FromString, Codec(cls, entry.signature.params).decode
    name, what = entry.signature.streamed, cls.DESCRIPTOR.full_name
    assert name is not None

    def decode_item(data: bytes, index: int) -> Any:
        try:
            return decode(parse(data))[name]
        except DecodeError as exc:
            raise ValidationError(
                f"item {index} of '{name}': could not be decoded as {what}: {exc}", field=name
            ) from None
        except BlazeRPCError as exc:
            field = getattr(exc, "field", None) or name
            raise ValidationError(f"item {index} of '{name}': {exc}", field=field) from None

    return decode_item


def _wire(entry: ModelEntry, schema: Schema, admitted: Admitted) -> Wire[_Upload, _Upload, bytes]:
    name = entry.signature.streamed
    assert name is not None
    wrap = Codec(schema.response_class(entry.rpc), (entry.signature.result,)).wrap
    caller = grpc_caller(entry.method)
    where = f"model '{entry.name}' over native gRPC"

    def encode(upload: _Upload, result: Any) -> bytes:
        upload.check()
        return wrap(result).SerializeToString()

    async def reject(upload: _Upload, failure: Failure) -> bytes:
        await abort(upload.context, upload.failure(failure, where))

    return Wire(
        protocol="native gRPC",
        decode=lambda upload: {name: upload.source()},
        encode=encode,
        caller=lambda upload, _: caller(None, upload.context),
        reject=reject,
        timeout=lambda upload: upload.context.time_remaining(),
        admitted=lambda upload: admitted(upload.context),
        streamed_requests=True,
    )


def stream_input_handler(
    runner: ModelRunner, schema: Schema, policy: CallPolicy, admitted: Admitted
) -> grpc.RpcMethodHandler[Any, Any]:
    """The method handler of a model with a streamed parameter: stream-unary for a
    client-streaming model, stream-stream for a bidirectional one."""
    entry = runner.entry
    call = ModelCall(runner, policy, _wire(entry, schema, admitted))
    decode_item = _item_decoder(entry, schema)
    func = entry.func
    in_thread = not (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func))
    where = f"model '{entry.name}' over native gRPC"

    if not entry.streaming:

        async def client_streaming(requests: Requests, context: ServicerContext) -> bytes:
            upload = _Upload(decode_item, requests, context, in_thread)
            try:
                reply = await call.unary(upload, upload)
            except asyncio.CancelledError:  # the client left, its deadline passed, or shutdown
                upload.cancel()
                raise
            await upload.close()
            return reply

        return grpc.stream_unary_rpc_method_handler(client_streaming)

    async def bidirectional(requests: Requests, context: ServicerContext) -> None:
        upload = _Upload(decode_item, requests, context, in_thread)

        async def send(message: bytes) -> None:
            try:
                await context.write(message)
            except Exception:  # the client left between results: stop reading for the model
                upload.cancel()
                raise

        try:
            done = await call.stream(upload, upload, send)
        except asyncio.CancelledError:
            upload.cancel()
            raise
        except CallerGone as exc:
            logger.debug("%s", exc)
            return
        if done and upload.error is not None:
            await abort(context, fail(upload.error, where))
        await upload.close()

    return grpc.stream_stream_rpc_method_handler(bidirectional)
