"""The exceptions users raise and catch, and the one table that maps them to gRPC status codes."""

from __future__ import annotations

import grpc
from grpc import StatusCode


class BlazeRPCError(Exception):
    """Base of every error BlazeRPC raises; `code` is the gRPC status it travels as."""

    code: StatusCode = StatusCode.INTERNAL

    def __init__(self, message: str = "", *, code: StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def details(self) -> str:
        return str(self)


class ValidationError(BlazeRPCError):
    """The input is wrong: raise it from a model to answer INVALID_ARGUMENT."""

    code = StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SerializationError(BlazeRPCError):
    """Bytes or values that cannot be turned into (or out of) a message."""

    code = StatusCode.INVALID_ARGUMENT


class ModelNotFoundError(BlazeRPCError):
    """No model of that name is registered (or served)."""

    code = StatusCode.NOT_FOUND


class InferenceError(BlazeRPCError):
    """The model failed; raise it to answer INTERNAL with your own message."""

    code = StatusCode.INTERNAL


class ConfigurationError(BlazeRPCError):
    """The app is set up wrongly: found at decoration or start-up, never per request."""


class RPCError(BlazeRPCError):
    """End the call with this exact status: `RPCError(StatusCode.UNAUTHENTICATED, "...")`."""

    def __init__(self, code: StatusCode, details: str = "") -> None:
        super().__init__(details, code=code)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and details a call ends with when `exc` escapes a model.

    Errors the caller can act on carry their own message; anything else is a server fault and
    says `ExceptionType: message` (the traceback stays in the server log).
    """
    if isinstance(exc, BlazeRPCError) and exc.code is not StatusCode.INTERNAL:
        return exc.code, exc.details
    return StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
