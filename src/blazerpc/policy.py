"""What every model call goes through, whichever protocol carries it: the admission gate
(UNAVAILABLE while starting or draining) and the middleware chain around the call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from grpc import StatusCode

from .exceptions import RPCError, status_of
from .server.middleware import Middleware, RequestEvent, ResponseEvent

logger = logging.getLogger("blazerpc.calls")


class Gate:
    """Whether model calls are admitted: closed (with a reason) while starting and draining."""

    def __init__(self) -> None:
        self.reason: str | None = "the server is starting up"

    def open(self) -> None:
        self.reason = None

    def close(self, reason: str) -> None:
        self.reason = reason

    def admit(self) -> None:
        if self.reason is not None:
            raise RPCError(StatusCode.UNAVAILABLE, self.reason)


@dataclass
class CallPolicy:
    """What applies to every model call on this server, whichever model it is."""

    gate: Gate = field(default_factory=Gate)
    middleware: list[Middleware] = field(default_factory=list)
    app_state: Any = None

    @asynccontextmanager
    async def observed(
        self, event: RequestEvent | None, *, gated: bool = True
    ) -> AsyncIterator[None]:
        """The gate and middleware around one call: `on_request` in order (any may reject it),
        then the call, then `on_response` in reverse order with the status it ended with.
        `event` may be None only where there is no middleware to see it. Calls that only ask
        about the server (metadata, readiness) pass `gated=False`: they are answered while
        starting and draining too, but still only to callers the middleware admits."""
        if event is None or not self.middleware:
            if gated:
                self.gate.admit()
            yield
            return
        start, status, details = time.perf_counter(), StatusCode.OK, ""
        try:
            if gated:
                self.gate.admit()
            for m in self.middleware:
                await m.on_request(event)
            yield
        except asyncio.CancelledError:
            status = StatusCode.CANCELLED
            raise
        except Exception as exc:
            status, details = status_of(exc)
            raise
        finally:
            elapsed = time.perf_counter() - start
            done = ResponseEvent(
                event.method_name, event.metadata, event.peer, status, elapsed, details
            )
            for m in reversed(self.middleware):
                try:
                    await m.on_response(done)
                except Exception:
                    logger.exception("middleware %r failed in on_response", m)
