"""BlazeClient (asyncio) and SyncBlazeClient (blocking): call models by name with keywords.

Given `registry=app.registry` a client builds its messages locally; without one it asks the
server's reflection service for the schema on first use, so it never imports server code.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from .balancing import ADMISSION_HEADERS, SERVICE_CONFIG, SERVICE_CONFIG_NO_HEALTH, channel_target
from .codec import Codec
from .exceptions import (
    BlazeRPCError,
    InferenceError,
    ModelNotFoundError,
    ValidationError,
)
from .runtime.registry import ModelRegistry, method_name
from .schema import FILE_NAME, SERVICE_FULL_NAME, Schema, build_schema, fields_of, load_schema

Metadata = Mapping[str, str] | Sequence[tuple[str, str]]

_REFLECTION_METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def _channel_options(max_message_mb: float, health_check: bool) -> list[tuple[str, int | str]]:
    limit = int(max_message_mb * 1024 * 1024)
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        # Balancing and retries: see balancing.py. A retry needs the request kept until the
        # call is admitted; by default only requests up to 256 KB are, so tensors were not.
        ("grpc.service_config", SERVICE_CONFIG if health_check else SERVICE_CONFIG_NO_HEALTH),
        ("grpc.per_rpc_retry_buffer_size", limit),
        # A replica restarted on the same address (a fixed list, a single host) is found
        # again within seconds, not after gRPC's default backoff of up to two minutes.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5000),
        # Each client its own connection: grpcio otherwise shares one per process and address,
        # and servers with several workers (or replicas behind an L4 balancer) spread connections.
        ("grpc.use_local_subchannel_pool", 1),
    ]


@dataclass(frozen=True)
class _Method:
    """What a client needs to call one model: its path, codecs and whether it streams."""

    path: str
    streaming: bool
    request: Codec
    response: Codec
    client_streaming: bool = False

    def items(self, model: str, inputs: dict[str, Any]) -> Any:
        """The iterable a model that takes a stream was given as its one keyword argument."""
        (name,) = (f.name for f in self.request.fields)
        items = inputs.get(name)
        if (
            inputs.keys() != {name}
            or not isinstance(items, (Iterable, AsyncIterable))
            or isinstance(items, (str, bytes, bytearray, Mapping))  # one item, not a stream
        ):
            raise ValidationError(
                f"model '{model}' takes a stream: pass an iterable or async iterable of its "
                f"items as {name}=... (a list of one for a single item), and nothing else",
                field=name,
            )
        return items

    def encode_item(self, index: int, item: Any) -> bytes:
        (name,) = (f.name for f in self.request.fields)
        try:
            return self.request.encode({name: item}).SerializeToString()
        except ValidationError as exc:
            raise ValidationError(f"item {index}: {exc}", field=name) from None

    def encode(self, model: str, inputs: dict[str, Any]) -> bytes:
        known = {f.name for f in self.request.fields}
        unknown = inputs.keys() - known
        if unknown:
            raise ValidationError(
                f"model '{model}' has no input {', '.join(map(repr, sorted(unknown)))}; "
                f"its inputs are {', '.join(sorted(known)) or 'none'}"
            )
        return self.request.encode(inputs).SerializeToString()

    def decode(self, data: bytes) -> Any:
        return self.response.decode(self.response.cls.FromString(data))["result"]


def _methods(schema: Schema) -> dict[str, _Method]:
    service = schema.file.services_by_name["InferenceService"]
    methods = {}
    for m in service.methods:
        request = schema.message_class(m.input_type.name)
        response = schema.message_class(m.output_type.name)
        memo: dict[str, Any] = {}
        methods[m.name] = _Method(
            f"/{SERVICE_FULL_NAME}/{m.name}",
            m.server_streaming,
            Codec(request, fields_of(m.input_type, memo)),
            Codec(response, fields_of(m.output_type, memo)),
            m.client_streaming,
        )
    return methods


def _registry_methods(registry: ModelRegistry) -> dict[str, _Method]:
    """Use the registry's own specs, so dataclass results come back as the user's classes."""
    schema = build_schema(registry.list_models(), registry.float64)
    methods = {}
    for entry in registry:
        for rpc in (entry.rpc, *entry.aliases):
            methods[f"Predict{rpc}"] = _Method(
                f"/{SERVICE_FULL_NAME}/Predict{rpc}",
                entry.streaming,
                Codec(schema.request_class(entry.rpc), entry.signature.params),
                Codec(schema.response_class(entry.rpc), (entry.signature.result,)),
                entry.client_streaming,
            )
    return methods


def _reflection_request() -> bytes:
    return reflection_pb2.ServerReflectionRequest(
        file_containing_symbol=SERVICE_FULL_NAME
    ).SerializeToString()


def _schema_from_reflection(responses: list[bytes]) -> dict[str, _Method]:
    for data in responses:
        response = reflection_pb2.ServerReflectionResponse.FromString(data)
        if response.HasField("error_response"):
            raise BlazeRPCError(
                "server reflection could not describe the InferenceService: "
                + response.error_response.error_message
            )
        for raw in response.file_descriptor_response.file_descriptor_proto:
            fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
            if fdp.name == FILE_NAME:
                return _methods(load_schema(fdp))
    raise BlazeRPCError("server reflection did not return the BlazeRPC schema")


_ERRORS: dict[grpc.StatusCode, type[BlazeRPCError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: ValidationError,
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.UNIMPLEMENTED: ModelNotFoundError,
    grpc.StatusCode.INTERNAL: InferenceError,
}


def _error(exc: grpc.RpcError) -> BlazeRPCError:
    """The library exception for a failed call, carrying its gRPC `code` and `details`."""
    code, details = exc.code(), exc.details() or ""
    kind = _ERRORS.get(code, BlazeRPCError)
    error = kind(message=details) if kind is ModelNotFoundError else kind(details)
    error.code = code
    return error


class _Closed:
    """What close() returns when there is nothing to close: awaiting it returns at once."""

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


def _model_name(model: str, inputs: dict[str, Any]) -> str:
    """The model named positionally, else by the `model_name=` keyword (2.2.1's spelling);
    given positionally, a `model_name` keyword stays an input of the model."""
    if model:
        return model
    name = inputs.pop("model_name", None)
    if not isinstance(name, str) or not name:
        raise TypeError("name the model: predict('echo', ...) or predict(model_name='echo', ...)")
    return name


@dataclass(frozen=True)
class ClientTLS:
    """PEM files for a TLS connection: the CA to trust (system roots when None) and, for
    mutual TLS, this client's certificate and key."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return grpc.ssl_channel_credentials(
            read(self.ca_file), read(self.key_file), read(self.cert_file)
        )


class _ClientBase:
    """What BlazeClient and SyncBlazeClient share: the target, credentials, schema discovery,
    and per-call settings kept apart from model inputs, so no parameter name can collide."""

    timeout: float | None
    metadata: tuple[tuple[str, str], ...]

    def _setup(
        self,
        host: str | Sequence[str],
        port: int | None,
        registry: ModelRegistry | None,
        timeout: float | None,
        metadata: Metadata | None,
        tls: bool | ClientTLS,
        max_message_mb: float,
        health_check: bool,
    ) -> None:
        self.target = channel_target(host, port)
        self._channel_options = _channel_options(max_message_mb, health_check)
        self._set_options(timeout, metadata)
        self._credentials = None
        if tls:
            self._credentials = (tls if isinstance(tls, ClientTLS) else ClientTLS()).credentials()
        # Shared with with_options() views, so the schema is discovered once per connection.
        self._shared: dict[str, dict[str, _Method]] = {}
        if registry is not None:
            self._shared["methods"] = _registry_methods(registry)

    def _set_options(self, timeout: float | None, metadata: Metadata | None) -> None:
        self.timeout = timeout
        items = metadata.items() if isinstance(metadata, Mapping) else metadata or ()
        # Every call asks for headers on admission, which makes its retries safe (balancing.py).
        self.metadata = (*((k.lower(), v) for k, v in items), ADMISSION_HEADERS)

    def with_options(
        self, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> Any:
        """A view of this client (same connection) whose calls use this deadline and metadata."""
        view = copy.copy(self)
        view._set_options(timeout, metadata)
        return view

    def _model(self, methods: dict[str, _Method], model: str, streaming: bool) -> _Method:
        method = methods.get(method_name(model))
        name, _, version = model.partition("@")
        if method is None and version and method_name(name) in methods:
            raise ModelNotFoundError(
                name,
                version,
                message=f"model '{name}' has a single version on this server (no RPC "
                f"{method_name(model)}); call it as '{name}'",
            )
        if method is None:
            raise ModelNotFoundError(
                model,
                message=f"the server has no model '{model}'; it serves "
                + (", ".join(sorted(m.removeprefix("Predict") for m in methods)) or "none"),
            )
        if method.streaming != streaming:
            call, other = ("stream", "predict") if method.streaming else ("predict", "stream")
            raise BlazeRPCError(
                f"model '{model}' is {'a streaming' if method.streaming else 'a unary'} model; "
                f"call {call}('{model}', ...) instead of {other}()",
                code=grpc.StatusCode.FAILED_PRECONDITION,
            )
        return method


class BlazeClient(_ClientBase):
    """Async client: `async with BlazeClient(host, port) as c: await c.predict("echo", ...)`.

    `host` may also be a list of `HOST:PORT` addresses or a target such as
    `dns:///model.ns.svc.cluster.local:50051`: calls are then balanced across every address
    (gRPC round_robin), and calls a replica refused before running them are retried.
    Replicas are picked by their gRPC health; `health_check=False` skips that, for servers
    whose health service is broken (blazerpc 2.2.1's, see docs/migrating.md).
    """

    def __init__(
        self,
        host: str | Sequence[str] = "127.0.0.1",
        port: int | None = None,
        registry: ModelRegistry | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        tls: bool | ClientTLS = False,
        max_message_mb: float = 64,
        health_check: bool = True,
    ) -> None:
        self._setup(host, port, registry, timeout, metadata, tls, max_message_mb, health_check)
        self._channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> BlazeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def close(self) -> Awaitable[None]:
        """Close the connection; awaiting the result waits until it is closed, and 2.2.1's
        plain `client.close()` (not awaited) closes it too, in the background."""
        channel, self._channel = self._channel, None
        if channel is None:
            return _Closed()
        return asyncio.ensure_future(channel.close())

    def _get_channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(
                    self.target, options=self._channel_options
                )
            else:
                self._channel = grpc.aio.secure_channel(
                    self.target, self._credentials, options=self._channel_options
                )
        return self._channel

    async def _method(self, model: str, streaming: bool = False) -> _Method:
        methods = self._shared.get("methods")
        if methods is None:
            reflect: grpc.aio.StreamStreamMultiCallable[bytes, bytes]
            reflect = self._get_channel().stream_stream(_REFLECTION_METHOD)
            call = reflect(
                iter([_reflection_request()]), timeout=self.timeout, metadata=self.metadata
            )
            try:
                methods = _schema_from_reflection([r async for r in call])
            except grpc.RpcError as exc:
                raise _error(exc) from None
            self._shared["methods"] = methods
        return self._model(methods, model, streaming)

    async def predict(self, model: str = "", /, **inputs: Any) -> Any:
        """Call a unary model and return its result. `model` is its name, or `name@version`
        for one version; it may also be given as `model_name=` (as in 2.2.1). A model that
        takes a stream gets it as its one keyword argument, an iterable or async iterable sent
        item by item as it yields: `await client.predict("transcribe", chunks=microphone())`."""
        model = _model_name(model, inputs)
        method = await self._method(model)
        if method.client_streaming:
            return await self._predict_streamed(method, method.items(model, inputs))
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
        call = self._get_channel().unary_unary(method.path)
        try:
            data = await call(
                method.encode(model, inputs), timeout=self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return method.decode(data)

    async def _predict_streamed(self, method: _Method, items: Any) -> Any:
        upload: grpc.aio.StreamUnaryMultiCallable[bytes, bytes]
        upload = self._get_channel().stream_unary(method.path)
        call = upload(timeout=self.timeout, metadata=self.metadata)
        sender = _Sender(call, method, items)
        try:
            data = await call
        except grpc.RpcError as exc:
            raise _error(exc) from None
        except asyncio.CancelledError:
            if sender.error is None:
                raise
            raise sender.error from None
        finally:
            sender.stop()
        return method.decode(data)

    def stream(self, model: str = "", /, **inputs: Any) -> AsyncIterator[Any]:
        """Iterate a streaming model's chunks as they arrive; leaving the loop cancels the call.
        A bidirectional model gets its stream as its one keyword argument, as in `predict`."""
        model = _model_name(model, inputs)
        return _Stream(self, model, inputs)


async def _each(items: Any) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class _Sender:
    """Writes a call's request stream in the background, each item as the iterable yields it,
    then half-closes. If the iterable raises or an item does not fit the schema, the call is
    cancelled and that error is what the caller sees."""

    def __init__(self, call: Any, method: _Method, items: Any) -> None:
        self.error: BaseException | None = None
        self._call = call
        self._task = asyncio.ensure_future(self._send(method, items))

    async def _send(self, method: _Method, items: Any) -> None:
        call = self._call
        try:
            index = 0
            async for item in _each(items):
                if call.done():  # the server has answered: the rest is not wanted
                    return
                await call.write(method.encode_item(index, item))
                index += 1
            if not call.done():
                await call.done_writing()
        except (grpc.RpcError, asyncio.InvalidStateError):
            pass  # the call has ended; whoever reads it reports how
        except Exception as exc:
            self.error = exc
            call.cancel()

    def stop(self) -> None:
        if not self._task.done():
            self._task.cancel()
        if not self._call.done():
            self._call.cancel()


class _Stream:
    """An async iterator over one streaming call that cancels the call when dropped."""

    def __init__(self, client: BlazeClient, model: str, inputs: dict[str, Any]) -> None:
        self._client, self._model, self._inputs = client, model, inputs
        self._call: Any = None
        self._method: _Method | None = None
        self._sender: _Sender | None = None
        self._closed = False

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        if self._call is None:
            client = self._client
            method = self._method = await client._method(self._model, streaming=True)
            if method.client_streaming:
                items = method.items(self._model, self._inputs)
                self._call = client._get_channel().stream_stream(method.path)(
                    timeout=client.timeout, metadata=client.metadata
                )
                self._sender = _Sender(self._call, method, items)
            else:
                stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes]
                stream = client._get_channel().unary_stream(method.path)
                self._call = stream(
                    method.encode(self._model, self._inputs),
                    timeout=client.timeout,
                    metadata=client.metadata,
                )
        try:
            data = await self._call.read()
        except grpc.RpcError as exc:
            raise _error(exc) from None
        except asyncio.CancelledError:
            if self._sender is None or self._sender.error is None:
                raise
            raise self._sender.error from None
        if data is grpc.aio.EOF:
            if self._sender is not None:
                self._sender.stop()
            raise StopAsyncIteration
        assert self._method is not None  # resolved with the call, above
        return self._method.decode(data)

    def cancel(self) -> None:
        """Stop the call now; iteration then ends."""
        self._closed = True
        if self._sender is not None:
            self._sender.stop()
        if self._call is not None:
            self._call.cancel()

    async def aclose(self) -> None:
        """For `contextlib.aclosing(client.stream(...))`."""
        self.cancel()

    def __del__(self) -> None:
        self.cancel()


class SyncBlazeClient(_ClientBase):
    """Blocking client for scripts and notebooks; same calls as BlazeClient, without await."""

    def __init__(
        self,
        host: str | Sequence[str] = "127.0.0.1",
        port: int | None = None,
        registry: ModelRegistry | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        tls: bool | ClientTLS = False,
        max_message_mb: float = 64,
        health_check: bool = True,
    ) -> None:
        self._setup(host, port, registry, timeout, metadata, tls, max_message_mb, health_check)
        if self._credentials is None:
            self._channel = grpc.insecure_channel(self.target, options=self._channel_options)
        else:
            self._channel = grpc.secure_channel(
                self.target, self._credentials, options=self._channel_options
            )

    def __enter__(self) -> SyncBlazeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _method(self, model: str, streaming: bool = False) -> _Method:
        methods = self._shared.get("methods")
        if methods is None:
            call: grpc.StreamStreamMultiCallable[bytes, bytes]
            call = self._channel.stream_stream(_REFLECTION_METHOD)
            try:
                methods = _schema_from_reflection(
                    list(
                        call(
                            iter([_reflection_request()]),
                            timeout=self.timeout,
                            metadata=self.metadata,
                        )
                    )
                )
            except grpc.RpcError as exc:
                raise _error(exc) from None
            self._shared["methods"] = methods
        return self._model(methods, model, streaming)

    def predict(self, model: str = "", /, **inputs: Any) -> Any:
        model = _model_name(model, inputs)
        method = self._method(model)
        if method.client_streaming:
            requests = _SyncRequests(method, method.items(model, inputs))
            upload: grpc.StreamUnaryMultiCallable[bytes, bytes]
            upload = self._channel.stream_unary(method.path)
            future = upload.future(iter(requests), timeout=self.timeout, metadata=self.metadata)
            requests.started(future)
            try:
                data = future.result()
            except grpc.RpcError as exc:
                raise requests.error or _error(exc) from None
            except grpc.FutureCancelledError:
                raise requests.error or BlazeRPCError("the call was cancelled") from None
            return method.decode(data)
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(method.path)
        try:
            data = call(method.encode(model, inputs), timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return method.decode(data)

    def stream(self, model: str = "", /, **inputs: Any) -> Iterator[Any]:
        model = _model_name(model, inputs)
        method = self._method(model, streaming=True)
        requests = None
        if method.client_streaming:
            requests = _SyncRequests(method, method.items(model, inputs))
            both: grpc.StreamStreamMultiCallable[bytes, bytes]
            both = self._channel.stream_stream(method.path)
            call = both(iter(requests), timeout=self.timeout, metadata=self.metadata)
            requests.started(call)
        else:
            stream: grpc.UnaryStreamMultiCallable[bytes, bytes]
            stream = self._channel.unary_stream(method.path)
            call = stream(
                method.encode(model, inputs), timeout=self.timeout, metadata=self.metadata
            )
        try:
            for data in call:
                yield method.decode(data)
        except grpc.RpcError as exc:
            raise (requests and requests.error) or _error(exc) from None
        finally:
            call.cancel()


class _SyncRequests:
    """The request stream of a blocking call, encoded item by item in grpc's sending thread.
    A failing iterable or item cancels the call (rather than half-closing it, which would
    pass a truncated stream off as complete) and is kept for the caller to raise."""

    def __init__(self, method: _Method, items: Iterable[Any]) -> None:
        if not isinstance(items, Iterable):
            raise ValidationError("SyncBlazeClient streams a plain iterable, not an async one")
        self.error: Exception | None = None
        self._method, self._items = method, items
        self._call: Any = None
        self._has_call = threading.Event()

    def started(self, call: Any) -> None:
        self._call = call
        self._has_call.set()

    def __iter__(self) -> Iterator[bytes]:
        try:
            for index, item in enumerate(self._items):
                yield self._method.encode_item(index, item)
        except Exception as exc:
            self.error = exc
            self._has_call.wait()
            self._call.cancel()
