"""What a model call goes through whichever protocol carries it, as on the native service:
the admission gate (UNAVAILABLE while starting or draining), middleware (auth, metrics,
logging), injected Context/Depends arguments, and the model's runner (direct, batched or
streaming). Adapters hand in how to decode the request and encode the result; both run
inside, so middleware sees the status a validation or encoding failure ends with.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from typing import Any

from grpc import StatusCode

from ..exceptions import RPCError
from ..injection import Context, injector
from ..runtime.runner import ModelRunner
from ..server.middleware import RequestEvent
from ..server.policy import CallPolicy

Decode = Callable[[], "dict[str, Any] | Awaitable[dict[str, Any]]"]


def off_loop(decode: Callable[[], dict[str, Any]]) -> Decode:
    """`decode` run in a thread: for decoding that loops in Python over a large request
    (BYTES elements), so the event loop goes on answering other calls meanwhile."""
    return lambda: asyncio.to_thread(decode)


@dataclass(frozen=True)
class Caller:
    """Who is calling, as middleware and an injected Context see it: the method (a path
    naming the protocol and the model), metadata or headers (lower-case keys), the peer."""

    method: str
    metadata: Mapping[str, Any]
    peer: str


def observed(
    policy: CallPolicy, caller: Caller, *, gated: bool = True
) -> AbstractAsyncContextManager[None]:
    """The middleware around a call that names a model: whatever the call reveals about
    models (their metadata, or that one does not exist) only reaches callers it admits."""
    return policy.observed(RequestEvent(caller.method, caller.metadata, caller.peer), gated=gated)


class ModelCalls:
    """Calls into one model on behalf of a protocol adapter."""

    def __init__(self, runner: ModelRunner, policy: CallPolicy) -> None:
        self.runner = runner
        self._policy = policy
        injected = runner.entry.signature.injected
        self._inject = injector(injected) if injected else None
        self._refusal = None
        if runner.entry.client_streaming:  # issue 15: their request stream is native gRPC only
            self._refusal = (
                f"model '{runner.entry.name}' takes a stream of requests; call it over the "
                "native gRPC service (BlazeClient, grpcurl, protoc stubs)"
            )
        self._plain = not policy.middleware and self._inject is None and self._refusal is None

    def _observed(self, caller: Caller) -> AbstractAsyncContextManager[None]:
        return observed(self._policy, caller)

    async def _arguments(self, decode: Decode, caller: Caller) -> Any:
        if self._refusal is not None:
            raise RPCError(StatusCode.UNIMPLEMENTED, self._refusal)
        kwargs = decode()
        if not isinstance(kwargs, dict):
            kwargs = await kwargs
        if self._inject is not None:
            context = Context(caller.metadata, caller.peer, caller.method, self._policy.app_state)
            kwargs.update(await self._inject(context))
        return kwargs

    async def unary(
        self,
        decode: Decode,
        encode: Callable[[Any], Any],
        caller: Callable[[], Caller],
        timeout: float | None,
    ) -> Any:
        """`encode(model(**decode()))`; `caller()` is only asked for when something uses it."""
        if self._plain:
            self._policy.gate.admit()
            kwargs = decode()
            if not isinstance(kwargs, dict):
                kwargs = await kwargs
            return encode(await self.runner.predict(kwargs, timeout))
        who = caller()
        async with self._observed(who):
            return encode(await self.runner.predict(await self._arguments(decode, who), timeout))

    async def stream(self, decode: Decode, caller: Callable[[], Caller]) -> AsyncIterator[Any]:
        """A streaming model's chunks; closing this iterator closes the model's generator."""
        who = caller()
        async with self._observed(who):
            kwargs = await self._arguments(decode, who)
            async with aclosing(self.runner.stream(kwargs)) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    yield chunk
