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
    """Bytes or values that cannot be turned into (or out of) a message; `dtype` names the
    tensor dtype at fault, when one is."""

    code = StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str = "", *, dtype: str | None = None) -> None:
        super().__init__(message)
        self.dtype = dtype


class ModelNotFoundError(BlazeRPCError):
    """No model of that name (and version) is served: `ModelNotFoundError(name, version)`.

    `message` replaces the default "Model 'name' version 'v' not found", e.g. to list the
    models that are served.
    """

    code = StatusCode.NOT_FOUND

    def __init__(self, name: str = "", version: str = "1", *, message: str | None = None) -> None:
        super().__init__(message or f"Model '{name}' version '{version}' not found")
        self.name = name
        self.version = version


class InferenceError(BlazeRPCError):
    """The model failed; raise it to answer INTERNAL with your own message. `model_name`
    names the model, when known."""

    code = StatusCode.INTERNAL

    def __init__(self, message: str = "", *, model_name: str | None = None) -> None:
        super().__init__(message)
        self.model_name = model_name


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
    foreign = _grpclib_status(exc)
    if foreign is not None:
        return foreign
    return StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


def _grpclib_status(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """grpclib's `GRPCError(Status.UNAUTHENTICATED, "...")`, which 2.2.1's middleware guide
    raises to reject a call, ends the call with that status; read by duck typing, so grpclib
    is no dependency."""
    status = getattr(exc, "status", None)
    if not type(exc).__module__.startswith("grpclib") or status is None:
        return None
    code = StatusCode.__members__.get(getattr(status, "name", ""))
    if code is None or code is StatusCode.OK:
        return None
    return code, str(getattr(exc, "message", None) or "")
