"""Request decoding inside the handler, for services whose handlers grpcio would otherwise
decode: health, reflection and KServe's metadata calls.

grpcio answers bytes its deserializer rejects with UNKNOWN and logs a traceback per call, so
any client, without a token, could flood the log. Registered through `DecodingInHandler`,
such bytes answer INVALID_ARGUMENT naming the expected message, and nothing is logged.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError

Deserialize = Callable[[bytes], Any]


class DecodingInHandler:
    """Stands in for the server while a servicer registers its handlers, and hands each on
    with its request decoding moved into the handler."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def as_server(self) -> grpc.aio.Server:
        """This stand-in, typed as what registration functions take: they only ever call the
        two methods below."""
        return cast(grpc.aio.Server, self)

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers([_GenericDecoding(h) for h in handlers])

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self._server.add_registered_method_handlers(
            service, {name: decoding_in_handler(h) for name, h in handlers.items()}
        )


class _GenericDecoding(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(details)
        return None if handler is None else decoding_in_handler(handler)


async def _decode(deserialize: Deserialize, data: bytes, context: Any) -> Any:
    try:
        return deserialize(data)
    except DecodeError as exc:
        message = getattr(deserialize, "__self__", None)
        what = message.DESCRIPTOR.full_name if message is not None else "the request message"
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"request could not be decoded as {what}: {exc}"
        )


def decoding_in_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` taking raw bytes and decoding them itself; unchanged if it has no decoder."""
    deserialize = handler.request_deserializer
    streams = ("stream_" if handler.request_streaming else "unary_") + (
        "stream" if handler.response_streaming else "unary"
    )
    behavior = getattr(handler, streams)
    asynchronous = inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)
    if deserialize is None or not asynchronous:
        return handler
    if handler.request_streaming:

        async def decoded(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
            async for data in requests:
                yield await _decode(deserialize, data, context)

        if inspect.isasyncgenfunction(behavior):

            async def stream_in_gen(requests: Any, context: Any) -> AsyncIterator[Any]:
                async for response in behavior(decoded(requests, context), context):
                    yield response

            wrapped: Any = stream_in_gen
        else:

            async def stream_in(requests: Any, context: Any) -> Any:
                return await behavior(decoded(requests, context), context)

            wrapped = stream_in
    elif inspect.isasyncgenfunction(behavior):

        async def unary_in_gen(data: bytes, context: Any) -> AsyncIterator[Any]:
            request = await _decode(deserialize, data, context)
            async for response in behavior(request, context):
                yield response

        wrapped = unary_in_gen
    else:

        async def unary_in(data: bytes, context: Any) -> Any:
            return await behavior(await _decode(deserialize, data, context), context)

        wrapped = unary_in
    # grpc's handlers are namedtuples, which its type stubs do not say
    replaced = cast(Any, handler)._replace(request_deserializer=None, **{streams: wrapped})
    return cast("grpc.RpcMethodHandler[Any, Any]", replaced)
