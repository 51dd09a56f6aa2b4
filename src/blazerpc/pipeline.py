"""The one path of a model call, whichever protocol carries it.

admit (the gate) -> middleware `on_request` -> decode -> inject Context/Depends -> the model's
runner (direct, batched or streaming) -> encode -> middleware `on_response`. Any failure on the
way is mapped to its status, and a server fault logged, by `fail`, once, then handed to the
protocol to answer in its own form. A protocol adapter supplies only a `Wire`: how its request
becomes keyword arguments, how a result becomes its reply, and how it answers a failure.
Everything is compiled per model and route at start-up; without middleware a call pays
for the gate and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from grpc import StatusCode

from .convert import WrongResult
from .exceptions import InferenceError, RPCError, status_of
from .injection import Context, injector
from .policy import CallPolicy
from .runtime.runner import ModelRunner
from .server.middleware import RequestEvent

logger = logging.getLogger("blazerpc.calls")

Req = TypeVar("Req")
Ctx = TypeVar("Ctx")
Out = TypeVar("Out")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Failure:
    """How a call ended when it did not succeed: a gRPC status and the details to show, and
    the request field at fault where the error named one (for protocols that report it)."""

    code: StatusCode
    details: str
    field: str | None = field(default=None, compare=False)


def fail(exc: BaseException, where: str) -> Failure:
    """The status a call ends with when `exc` escapes it (the table in `exceptions`). A server
    fault (INTERNAL) is logged here with its traceback, and nowhere else: once, though every
    request of a failed batch ends with the same exception."""
    code, details = status_of(exc)
    if code is StatusCode.INTERNAL and not exc.__dict__.get("_blazerpc_logged"):
        logger.error("%s failed", where, exc_info=exc)
        exc.__dict__["_blazerpc_logged"] = True
    return Failure(code, details, getattr(exc, "field", None))


def _failure(model: str, where: str) -> Callable[[Exception], Failure]:
    def failure(exc: Exception) -> Failure:
        if isinstance(exc, WrongResult):  # the same verdict, and words, on every protocol
            wrong = InferenceError(f"model '{model}' {exc}")
            wrong.__cause__ = exc
            return fail(wrong, where)
        return fail(exc, where)

    return failure


def _no_timeout(ctx: Any) -> float | None:
    return None


@dataclass(frozen=True)
class Wire(Generic[Req, Ctx, Out]):
    """What one protocol route supplies: its request `Req` (already parsed to its own form),
    the transport's per-call context `Ctx`, and its reply `Out`.

    `decode` raises ValidationError naming the field; `caller` is only asked for when
    middleware or injection need it; `reject` answers a failure (it may raise, as a gRPC
    abort does); `timeout` is the seconds the caller still waits, for batch deadlines.
    Where `decode_in_thread(request)` is true, decoding loops in Python over a large request
    (many BYTES elements), so it runs in a thread and the loop goes on serving other calls.
    `admitted(ctx)`, called once the call is admitted and before the model runs, may return
    an awaitable to wait on (the native service sends early headers there when asked).
    `streamed_requests` says the route carries a stream of requests (native gRPC's client
    and bidirectional streams); a model that takes a stream is refused on any other route.
    """

    protocol: str
    decode: Callable[[Req], dict[str, Any]]
    encode: Callable[[Req, Any], Out]
    caller: Callable[[Req, Ctx], RequestEvent]
    reject: Callable[[Ctx, Failure], Awaitable[Out]]
    timeout: Callable[[Ctx], float | None] = _no_timeout
    decode_in_thread: Callable[[Req], bool] | None = None
    admitted: Callable[[Ctx], Awaitable[None] | None] | None = None
    streamed_requests: bool = False


def _announcer(
    admitted: Callable[[Ctx], Awaitable[None] | None] | None, inline: Callable[[], bool]
) -> Callable[[Ctx], Awaitable[None] | None] | None:
    """The wire's `admitted`, for calls to a model that does not run inline now. Early
    headers guard the time between a model's start and its answer; a model running inline
    (a cheap `def`, alone or in a batch) leaves microseconds there, less than reading the
    call's metadata to look for the request costs."""
    if admitted is None:
        return None
    return lambda ctx: None if inline() else admitted(ctx)


async def _close(chunks: AsyncGenerator[Any, None]) -> None:
    """Finish a model's generator: CancelledError where it is suspended, then close it, so
    a model sees the same exception whether its caller left or was cancelled."""
    try:
        await chunks.athrow(asyncio.CancelledError())
    except (asyncio.CancelledError, StopAsyncIteration, RuntimeError):
        pass
    finally:
        await chunks.aclose()


class ModelCall(Generic[Req, Ctx, Out]):
    """Calls into one model over one route. `unary(request, ctx)` answers a unary call (the
    reply, or whatever `reject` answers); `stream(request, ctx, send)` sends a streaming
    model's encoded chunks and, if it fails, `reject`'s answer last."""

    unary: Callable[[Req, Ctx], Awaitable[Out]]

    def __init__(self, runner: ModelRunner, policy: CallPolicy, wire: Wire[Req, Ctx, Out]):
        entry = runner.entry
        self.name = entry.name
        self._runner, self._policy, self._wire = runner, policy, wire
        self._where = f"model '{entry.name}' over {wire.protocol}"
        self._failure = _failure(entry.name, self._where)
        self._inject = injector(entry.signature.injected) if entry.signature.injected else None
        self._refusal: str | None = None
        if entry.client_streaming and not wire.streamed_requests:
            self._refusal = (
                f"model '{entry.name}' takes a stream of requests; call it over the native "
                "gRPC service (BlazeClient, grpcurl, protoc stubs)"
            )
        self._announce = _announcer(wire.admitted, runner.runs_inline)
        if not entry.streaming:
            plain = not policy.middleware and self._refusal is None
            self.unary = self._plain_unary() if plain else self._observed_unary()

    async def _arguments(self, request: Req, ctx: Ctx, caller: RequestEvent | None) -> Any:
        if self._refusal is not None:
            raise RPCError(StatusCode.UNIMPLEMENTED, self._refusal)
        heavy = self._wire.decode_in_thread
        if heavy is not None and heavy(request):
            kwargs = await asyncio.to_thread(self._wire.decode, request)
        else:
            kwargs = self._wire.decode(request)
        if self._inject is not None:
            if caller is None:
                caller = self._wire.caller(request, ctx)
            state = self._policy.app_state
            kwargs.update(
                await self._inject(Context(caller.metadata, caller.peer, caller.method_name, state))
            )
        return kwargs

    def _plain_unary(self) -> Callable[[Req, Ctx], Awaitable[Out]]:
        gate, predict = self._policy.gate, self._runner.predict
        decode, encode, reject, timeout = (
            self._wire.decode,
            self._wire.encode,
            self._wire.reject,
            self._wire.timeout,
        )
        failure, arguments = self._failure, self._arguments

        if self._inject is None and self._wire.decode_in_thread is None:
            if self._announce is not None:
                return self._plain_unary_admitted(self._announce)

            async def unary(request: Req, ctx: Ctx) -> Out:
                try:
                    gate.admit()
                    return encode(request, await predict(decode(request), timeout(ctx)))
                except Exception as exc:
                    return await reject(ctx, failure(exc))

            return unary

        notify = self._announce

        async def unary_arguments(request: Req, ctx: Ctx) -> Out:
            try:
                gate.admit()
                if notify is not None and (note := notify(ctx)) is not None:
                    await note
                kwargs = await arguments(request, ctx, None)
                return encode(request, await predict(kwargs, timeout(ctx)))
            except Exception as exc:
                return await reject(ctx, failure(exc))

        return unary_arguments

    def _plain_unary_admitted(
        self, notify: Callable[[Ctx], Awaitable[None] | None]
    ) -> Callable[[Req, Ctx], Awaitable[Out]]:
        gate, predict, wire, failure = (
            self._policy.gate,
            self._runner.predict,
            self._wire,
            self._failure,
        )
        decode, encode, reject, timeout = wire.decode, wire.encode, wire.reject, wire.timeout

        async def unary(request: Req, ctx: Ctx) -> Out:
            try:
                gate.admit()
                if (note := notify(ctx)) is not None:
                    await note
                return encode(request, await predict(decode(request), timeout(ctx)))
            except Exception as exc:
                return await reject(ctx, failure(exc))

        return unary

    def _observed_unary(self) -> Callable[[Req, Ctx], Awaitable[Out]]:
        observed, predict, wire = self._policy.observed, self._runner.predict, self._wire
        failure, arguments, announce = self._failure, self._arguments, self._announce

        async def unary_observed(request: Req, ctx: Ctx) -> Out:
            try:
                caller = wire.caller(request, ctx)
                async with observed(caller):
                    if announce is not None and (note := announce(ctx)) is not None:
                        await note
                    kwargs = await arguments(request, ctx, caller)
                    return wire.encode(request, await predict(kwargs, wire.timeout(ctx)))
            except Exception as exc:
                return await wire.reject(ctx, failure(exc))

        return unary_observed

    async def stream(self, request: Req, ctx: Ctx, send: Callable[[Out], Awaitable[Any]]) -> bool:
        """Send each chunk, encoded, as the model yields it; `send` waits for the transport,
        so a slow reader slows the generator. Returns True once every chunk is out, False
        after a failure, which `reject` answered (and `send` sent) last. If `send` fails,
        the caller has gone: the model's generator gets CancelledError where it is suspended
        and is closed, and CallerGone is raised."""
        wire = self._wire
        encode = wire.encode
        gone: Exception | None = None
        try:
            caller = None
            if self._policy.middleware:
                caller = wire.caller(request, ctx)
            async with self._policy.observed(caller):
                if self._announce is not None and (note := self._announce(ctx)) is not None:
                    await note
                chunks = self._runner.stream(await self._arguments(request, ctx, caller))
                try:
                    async for chunk in chunks:
                        message = encode(request, chunk)
                        try:
                            await send(message)
                        except Exception as exc:  # the call is over: the caller left
                            gone = exc
                            break
                except asyncio.CancelledError:  # the caller left, its deadline, or shutdown
                    await _close(chunks)
                    raise
                except Exception:
                    await chunks.aclose()
                    raise
                if gone is not None:
                    await _close(chunks)
        except Exception as exc:
            await send(await wire.reject(ctx, self._failure(exc)))
            return False
        if gone is not None:
            raise CallerGone(f"{self._where}: the caller left mid-stream") from gone
        return True


async def admitted_lookup(policy: CallPolicy, caller: RequestEvent, find: Callable[[], T]) -> T:
    """`find()`, the model a call names. Its failure (an unknown name, which may list the
    names there are) is raised only once middleware (auth) has admitted the call, so that
    without a token nobody learns which models exist."""
    try:
        return find()
    except Exception as exc:
        async with policy.observed(caller, gated=False):
            raise exc from None


class CallerGone(Exception):
    """A stream's caller left before its end (the transport refused a chunk)."""
