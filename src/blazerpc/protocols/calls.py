"""What a model call goes through whichever protocol carries it, as on the native service:
the admission gate (UNAVAILABLE while starting or draining), middleware (auth, metrics,
logging), injected Context/Depends arguments, and the model's runner (direct, batched or
streaming). Adapters hand in how to decode the request and encode the result; both run
inside, so middleware sees the status a validation or encoding failure ends with.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from typing import Any

from grpc import StatusCode

from ..exceptions import RPCError
from ..injection import Context, injector
from ..runtime.runner import ModelRunner
from ..server.middleware import RequestEvent
from ..server.policy import CallPolicy


@dataclass(frozen=True)
class Caller:
    """Who is calling, as middleware and an injected Context see it: the method (a path
    naming the protocol and the model), metadata or headers (lower-case keys), the peer."""

    method: str
    metadata: Mapping[str, Any]
    peer: str


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
        return self._policy.observed(RequestEvent(caller.method, caller.metadata, caller.peer))

    async def _arguments(self, decode: Callable[[], dict[str, Any]], caller: Caller) -> Any:
        if self._refusal is not None:
            raise RPCError(StatusCode.UNIMPLEMENTED, self._refusal)
        kwargs = decode()
        if self._inject is not None:
            context = Context(caller.metadata, caller.peer, caller.method, self._policy.app_state)
            kwargs.update(await self._inject(context))
        return kwargs

    async def unary(
        self,
        decode: Callable[[], dict[str, Any]],
        encode: Callable[[Any], Any],
        caller: Callable[[], Caller],
        timeout: float | None,
    ) -> Any:
        """`encode(model(**decode()))`; `caller()` is only asked for when something uses it."""
        if self._plain:
            self._policy.gate.admit()
            return encode(await self.runner.predict(decode(), timeout))
        who = caller()
        async with self._observed(who):
            return encode(await self.runner.predict(await self._arguments(decode, who), timeout))

    async def stream(
        self, decode: Callable[[], dict[str, Any]], caller: Callable[[], Caller]
    ) -> AsyncIterator[Any]:
        """A streaming model's chunks; closing this iterator closes the model's generator."""
        who = caller()
        async with self._observed(who):
            kwargs = await self._arguments(decode, who)
            async with aclosing(self.runner.stream(kwargs)) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    yield chunk
