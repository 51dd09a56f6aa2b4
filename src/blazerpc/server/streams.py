"""The cores of models that take a stream of requests: client-streaming (one result) and
bidirectional (a stream of results), built once per model at start-up.

The request stream reaches the model as an iterator that reads one message each time the
model asks for the next item, so items arrive as they are sent, a slow model slows the sender
through HTTP/2 flow control, and a fast sender cannot fill the server's memory. The cores
plug into handlers.py's gate, middleware and error mapping like the other cores.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf.message import DecodeError

from ..codec import Codec
from ..exceptions import BlazeRPCError, ValidationError
from ..injection import Context, injector
from ..runtime.registry import ModelEntry
from ..runtime.runner import ModelRunner
from ..runtime.stream_input import ThreadIterator
from ..schema import Schema
from .middleware import lower_keys
from .policy import CallPolicy

logger = logging.getLogger("blazerpc.server")

Requests = AsyncIterator[bytes]
_CANCEL_WINDOW_S = 0.002
StreamCore = Callable[[Requests, Any], Any]


class _Items:
    """One call's request stream, decoded item by item; remembers a bad item so that the call
    fails with it even if the model caught the error and carried on."""

    def __init__(
        self, decode_item: Callable[[bytes, int], Any], requests: Requests, context: Any
    ) -> None:
        self.error: ValidationError | None = None
        self._context = context
        self.iterator = self._decoded(decode_item, requests)

    async def _decoded(self, decode_item: Callable[[bytes, int], Any], requests: Requests) -> Any:
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
        remaining = self._context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise asyncio.CancelledError("the deadline has passed")
        await asyncio.sleep(_CANCEL_WINDOW_S)

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def _item_decoder(entry: ModelEntry, schema: Schema) -> Callable[[bytes, int], Any]:
    """Bytes of the `index`-th request to its item, or a ValidationError naming both."""
    cls = schema.request_class(entry.rpc)
    parse, decode = cls.FromString, Codec(cls, entry.signature.params).decode
    name, what = entry.signature.streamed, cls.DESCRIPTOR.full_name

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


async def _close(chunks: AsyncIterator[Any]) -> None:
    """Finish a model's generator: CancelledError where it is suspended, then close it."""
    try:
        await chunks.athrow(asyncio.CancelledError())  # type: ignore[attr-defined]
    except (asyncio.CancelledError, StopAsyncIteration, RuntimeError):
        pass
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def stream_input_core(runner: ModelRunner, schema: Schema, policy: CallPolicy) -> StreamCore:
    """`core(requests, context)` for a model with a streamed parameter: returns the response
    bytes (client-streaming) or writes each result with `context.write` (bidirectional)."""
    entry = runner.entry
    name = entry.signature.streamed
    decode_item = _item_decoder(entry, schema)
    wrap = Codec(schema.response_class(entry.rpc), (entry.signature.result,)).wrap
    func = entry.func
    in_thread = not (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func))
    inject = injector(entry.signature.injected) if entry.signature.injected else None
    method, state = entry.method, policy.app_state

    async def arguments(items: _Items, context: Any) -> tuple[dict[str, Any], Any]:
        source: Any = items.iterator
        if in_thread:
            source = ThreadIterator(source, asyncio.get_running_loop())
        kwargs = {name: source}
        if inject is not None:
            call = Context(lower_keys(context.invocation_metadata()), context.peer(), method, state)
            kwargs.update(await inject(call))
        return kwargs, source

    def cancel(source: Any) -> None:
        if isinstance(source, ThreadIterator):
            source.cancel()

    if not entry.streaming:

        async def client_streaming(requests: Requests, context: Any) -> bytes:
            items = _Items(decode_item, requests, context)
            kwargs, source = await arguments(items, context)
            try:
                result = await runner.predict(kwargs, context.time_remaining())
            except asyncio.CancelledError:  # the client left, its deadline passed, or shutdown
                cancel(source)
                raise
            except Exception:
                items.check()  # a bad item is the caller's fault, whatever the model made of it
                raise
            items.check()
            await items.iterator.aclose()  # the model may have stopped reading early
            return wrap(result).SerializeToString()

        return client_streaming

    async def bidirectional(requests: Requests, context: Any) -> None:
        items = _Items(decode_item, requests, context)
        kwargs, source = await arguments(items, context)
        chunks = runner.stream(kwargs)
        try:
            async for chunk in chunks:
                message = wrap(chunk).SerializeToString()
                try:
                    await context.write(message)
                except Exception as exc:  # the call is over: the client left between results
                    logger.debug("stream of model '%s' ended by the transport: %r", entry.name, exc)
                    cancel(source)
                    await _close(chunks)
                    return
        except asyncio.CancelledError:
            cancel(source)
            await _close(chunks)
            raise
        except Exception:
            await chunks.aclose()  # type: ignore[attr-defined]
            items.check()
            raise
        items.check()
        await items.iterator.aclose()

    return bidirectional
