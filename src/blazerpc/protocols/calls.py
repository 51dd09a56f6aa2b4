"""What a model call goes through whichever protocol carries it, as on the native service:
the admission gate (UNAVAILABLE while starting or draining), middleware (auth, metrics,
logging), injected Context/Depends arguments, and the model's runner (direct, batched or
streaming). Adapters hand in how to decode the request and encode the result; both run
inside, so middleware sees the status a validation or encoding failure ends with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from grpc import StatusCode

from ..exceptions import RPCError, status_of
from ..injection import Context, injector
from ..runtime.runner import ModelRunner
from ..server.handlers import CallPolicy
from ..server.middleware import RequestEvent, ResponseEvent

logger = logging.getLogger("blazerpc.server")


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
        self._gate, self._middleware = policy.gate, policy.middleware
        self._state = policy.app_state
        injected = runner.entry.signature.injected
        self._inject = injector(injected) if injected else None
        self._plain = not self._middleware and self._inject is None

    def _admit(self) -> None:
        if self._gate.reason is not None:
            raise RPCError(StatusCode.UNAVAILABLE, self._gate.reason)

    @asynccontextmanager
    async def _observed(self, caller: Caller) -> AsyncIterator[None]:
        """The gate and middleware around a call, as the native handler applies them."""
        event = RequestEvent(caller.method, caller.metadata, caller.peer)
        start, status = time.perf_counter(), StatusCode.OK
        try:
            self._admit()
            for m in self._middleware:
                await m.on_request(event)
            yield
        except asyncio.CancelledError:
            status = StatusCode.CANCELLED
            raise
        except Exception as exc:
            status = status_of(exc)[0]
            raise
        finally:
            done = ResponseEvent(
                caller.method, caller.metadata, caller.peer, status, time.perf_counter() - start
            )
            for m in reversed(self._middleware):
                try:
                    await m.on_response(done)
                except Exception:
                    logger.exception("middleware %r failed in on_response", m)

    async def _arguments(self, decode: Callable[[], dict[str, Any]], caller: Caller) -> Any:
        kwargs = decode()
        if self._inject is not None:
            context = Context(caller.metadata, caller.peer, caller.method, self._state)
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
            self._admit()
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
