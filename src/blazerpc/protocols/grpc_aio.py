"""A grpc.aio call as the call pipeline sees it, shared by the native service and KServe gRPC:
who is calling, how long they still wait, and how a failure ends the call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import grpc

from ..pipeline import Failure
from ..server.middleware import RequestEvent, lower_keys

ServicerContext = grpc.aio.ServicerContext[Any, Any]


def grpc_caller(method: str) -> Callable[[Any, ServicerContext], RequestEvent]:
    """Who is calling `method`: the call's metadata (lower-case keys) and peer."""
    return lambda request, context: RequestEvent(
        method, lower_keys(context.invocation_metadata()), context.peer()
    )


def remaining(context: ServicerContext) -> float | None:
    return context.time_remaining()


async def abort(context: ServicerContext, failure: Failure) -> NoReturn:
    """End the call with the failure's status (grpc.aio's abort raises)."""
    await context.abort(failure.code, failure.details)
    raise AssertionError("unreachable: abort raises")
