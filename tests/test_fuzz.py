"""Generated bad input on every protocol: whatever a client sends, the answer is a client error
(INVALID_ARGUMENT and its kin, or a 4xx), never INTERNAL, UNKNOWN or a 500, and the server
answers a correct call after every batch of cases.

`make test` runs a short pass (the `ci` profile); `make fuzz` a long one (`fuzz`). The server is
a real `blaze serve` process; requests are real protobuf and HTTP from stock clients.
"""

from __future__ import annotations

import http.client
import json
import math
import string
import urllib.parse
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from blazerpc.protocols.kserve import messages

from .apps.fuzz_app import app
from .processes import blaze_serve, wait_serving
from .support import free_port

MODELS = [m.name for m in app.registry]
RPCS = {m.name: m.rpc for m in app.registry}
CLIENT_ERRORS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
NOT_IMPLEMENTED = 501  # a model with no KServe form: the client asked the wrong protocol
DATATYPES = ["BOOL", "INT8", "INT32", "INT64", "UINT8", "FP16", "FP32", "FP64", "BYTES"]
WIRE_DTYPES = ["float", "double", "int64", "int32", "uint8", "bool", "float16", "string"]


class Server:
    def __init__(self, port: int, http_port: int) -> None:
        self.port, self.http_port = port, http_port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def unary(self, method: str, data: bytes) -> grpc.StatusCode:
        try:
            self.channel.unary_unary(method)(data, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    def server_stream(self, method: str, data: bytes) -> grpc.StatusCode:
        try:
            for _ in self.channel.unary_stream(method)(data, timeout=10):
                pass
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    def streamed(self, method: str, messages: list[bytes], many_replies: bool) -> grpc.StatusCode:
        """A call whose requests are a stream (client-streaming, or bidirectional)."""
        try:
            if many_replies:
                for _ in self.channel.stream_stream(method)(iter(messages), timeout=10):
                    pass
            else:
                self.channel.stream_unary(method)(iter(messages), timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            connection.request("POST", path, body, headers or {})
            reply = connection.getresponse()
            return reply.status, reply.read()
        finally:
            connection.close()

    def assert_still_serving(self) -> None:
        request = app.schema.request_class("Echo")(text="ok", times=2)
        reply = self.channel.unary_unary("/blazerpc.InferenceService/PredictEcho")(
            request.SerializeToString(), timeout=10
        )
        assert app.schema.response_class("Echo").FromString(reply).result == "okok"
        status, body = self.post(
            "/jsonrpc",
            json.dumps(
                {"jsonrpc": "2.0", "method": "predict.echo", "params": {"text": "a"}, "id": 1}
            ).encode(),
        )
        assert status == 200 and json.loads(body)["result"] == "a"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    port, http_port = free_port(), free_port()
    with blaze_serve(
        "--port", str(port), "--http-port", str(http_port), app="tests.apps.fuzz_app:app"
    ) as proc:
        wait_serving(port, proc)
        serving = Server(port, http_port)
        yield serving
        serving.channel.close()
        assert proc.poll() is None, "the server died under fuzzing"


# --- strategies ----------------------------------------------------------------------------

dims = st.one_of(st.integers(-3, 6), st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1, -(2**63)]))
shapes = st.lists(dims, max_size=6) | st.just([1] * 70)
json_leaf = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


def _either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly near-valid values, sometimes anything at all."""
    return st.one_of(valid, valid, json_values)


@st.composite
def tensor_protos(draw: st.DrawFn, cls: Any) -> bytes:
    """A request whose one tensor field has any dtype, shape and data length."""
    request = cls()
    field = cls.DESCRIPTOR.fields[0].name
    tensor = getattr(request, field)
    tensor.shape.extend(draw(shapes))
    tensor.dtype = draw(st.sampled_from(WIRE_DTYPES) | st.text(max_size=10))
    tensor.data = draw(st.binary(max_size=64))
    return request.SerializeToString()


@st.composite
def infer_requests(draw: st.DrawFn) -> bytes:
    request = messages.ModelInferRequest(
        model_name=draw(st.sampled_from(MODELS) | st.text(max_size=10)),
        model_version=draw(st.sampled_from(["", "1", "2"])),
    )
    names = ["text", "times", "ratio", "flag", "count", "data", "features", "values", "words"]
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(names) | st.text(max_size=5)),
            datatype=draw(st.sampled_from(DATATYPES) | st.text(max_size=5)),
            shape=draw(shapes),
        )
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=64)))
        else:
            contents = tensor.contents
            kind = draw(st.sampled_from(["fp32", "int64", "bytes", "bool", "uint"]))
            if kind == "fp32":
                contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
            elif kind == "int64":
                contents.int64_contents.extend(
                    draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8))
                )
            elif kind == "bytes":
                contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=8)))
            elif kind == "bool":
                contents.bool_contents.extend(draw(st.lists(st.booleans(), max_size=8)))
            else:
                contents.uint_contents.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=8)))
    for _ in range(draw(st.integers(0, 2))):
        request.outputs.add(name=draw(st.sampled_from(["result", "x"])))
    if draw(st.booleans()):
        request.parameters["binary_data_output"].bool_param = True
    return request.SerializeToString()


@st.composite
def rest_documents(draw: st.DrawFn) -> Any:
    tensor = st.fixed_dictionaries(
        {
            "name": _either(st.sampled_from(["text", "times", "features", "values", "words"])),
            "datatype": _either(st.sampled_from(DATATYPES)),
            "shape": _either(st.lists(dims, max_size=4)),
        },
        optional={
            "data": _either(st.lists(json_leaf, max_size=8)),
            "parameters": _either(
                st.fixed_dictionaries({"binary_data_size": st.integers(-10, 100)})
            ),
        },
    )
    document = st.fixed_dictionaries(
        {"inputs": _either(st.lists(tensor, max_size=3))},
        optional={
            "outputs": _either(st.lists(st.fixed_dictionaries({"name": json_leaf}), max_size=2)),
            "parameters": _either(st.fixed_dictionaries({"binary_data_output": json_leaf})),
            "id": json_leaf,
        },
    )
    return draw(_either(document))


@st.composite
def json_rpc_bodies(draw: st.DrawFn) -> Any:
    params = st.fixed_dictionaries(
        {},
        optional={
            "text": json_values,
            "times": json_values,
            "ratio": json_values,
            "flag": json_values,
            "count": json_values,
            "data": json_values,
            "words": json_values,
            "counts": json_values,
            "point": _either(st.fixed_dictionaries({"x": json_leaf, "y": json_leaf})),
            "features": _either(
                st.fixed_dictionaries(
                    {"shape": json_values, "dtype": json_values, "data": json_values}
                )
            ),
        },
    )
    call = st.fixed_dictionaries(
        {
            "jsonrpc": _either(st.just("2.0")),
            "method": _either(st.sampled_from([f"predict.{m}" for m in MODELS])),
        },
        optional={"params": _either(params), "id": json_leaf},
    )
    return draw(st.one_of(call, st.lists(call, max_size=4), json_values))


def _json_bytes(value: Any) -> bytes:
    # Non-finite floats as Python writes them: a lenient client's bytes are input too.
    return json.dumps(value).encode()


def _no_server_error_in(replies: Any) -> None:
    for reply in replies if isinstance(replies, list) else [replies]:
        if isinstance(reply, dict) and "error" in reply:
            status = (reply["error"].get("data") or {}).get("status")
            assert status not in ("INTERNAL", "UNKNOWN"), reply


# --- native gRPC ---------------------------------------------------------------------------


def test_native_grpc_random_bytes(server: Server) -> None:
    @given(st.sampled_from(MODELS), st.binary(max_size=256))
    def case(model: str, data: bytes) -> None:
        entry = app.registry.get(model)
        method = f"/blazerpc.InferenceService/Predict{RPCS[model]}"
        if entry.client_streaming:
            code = server.streamed(method, [data], many_replies=entry.streaming)
        else:
            code = (server.server_stream if entry.streaming else server.unary)(method, data)
        assert code in CLIENT_ERRORS

    case()
    server.assert_still_serving()


def test_native_grpc_request_streams(server: Server) -> None:
    @given(
        st.sampled_from(["total", "live"]),
        st.lists(st.binary(max_size=64) | st.just(b"\x08\x01"), max_size=8),
    )
    def case(model: str, messages: list[bytes]) -> None:
        method = f"/blazerpc.InferenceService/Predict{RPCS[model]}"
        assert server.streamed(method, messages, many_replies=model == "live") in CLIENT_ERRORS

    case()
    server.assert_still_serving()


def test_native_grpc_tensors_of_any_shape_dtype_and_size(server: Server) -> None:
    @given(tensor_protos(app.schema.request_class("Rows")))
    def case(data: bytes) -> None:
        code = server.unary("/blazerpc.InferenceService/PredictRows", data)
        assert code in CLIENT_ERRORS

    case()
    server.assert_still_serving()


# --- KServe v2 -----------------------------------------------------------------------------


def test_kserve_grpc_inference_requests(server: Server) -> None:
    @given(infer_requests() | st.binary(max_size=128))
    def case(data: bytes) -> None:
        code = server.unary("/inference.GRPCInferenceService/ModelInfer", data)
        assert code in CLIENT_ERRORS

    case()
    server.assert_still_serving()


def test_kserve_rest_documents(server: Server) -> None:
    @given(st.sampled_from(MODELS) | st.text(max_size=5), rest_documents())
    def case(model: str, document: Any) -> None:
        path = f"/v2/models/{urllib.parse.quote(model, safe='')}/infer"
        status, body = server.post(path, _json_bytes(document))
        assert status < 500 or status == NOT_IMPLEMENTED, body

    case()
    server.assert_still_serving()


def test_kserve_rest_binary_bodies(server: Server) -> None:
    @given(
        st.sampled_from(MODELS),
        rest_documents(),
        st.binary(max_size=64),
        st.integers(-5, 2**40) | st.text(string.digits + string.ascii_letters + "-+. ", max_size=4),
    )
    def case(model: str, document: Any, tail: bytes, header_length: Any) -> None:
        head = _json_bytes(document)
        length = str(
            len(head) if isinstance(header_length, int) and header_length % 2 else header_length
        )
        status, body = server.post(
            f"/v2/models/{model}/infer",
            head + tail,
            {"Inference-Header-Content-Length": length},
        )
        assert status < 500 or status == NOT_IMPLEMENTED, body

    case()
    server.assert_still_serving()


# --- JSON-RPC ------------------------------------------------------------------------------


def test_json_rpc_calls(server: Server) -> None:
    @given(json_rpc_bodies())
    def case(body: Any) -> None:
        status, reply = server.post("/jsonrpc", _json_bytes(body))
        assert status < 500 or status == NOT_IMPLEMENTED, reply
        if reply:
            _no_server_error_in(json.loads(reply, parse_constant=lambda c: math.nan))

    case()
    server.assert_still_serving()


def test_json_rpc_event_streams(server: Server) -> None:
    @given(json_values)
    def case(params: Any) -> None:
        status, reply = server.post("/jsonrpc/stream/tokens", _json_bytes({"params": params}))
        assert status < 500 or status == NOT_IMPLEMENTED, reply
        for block in reply.decode().split("\n\n"):
            if block.startswith("event: error"):
                _no_server_error_in({"error": json.loads(block.split("data: ", 1)[1])})

    case()
    server.assert_still_serving()


# --- OpenAI-compatible ---------------------------------------------------------------------

_OPENAI_MODELS = st.sampled_from(["echo", "tokens", "rows", "nope"])
_MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": _either(st.sampled_from(["user", "system"])), "content": _either(st.text())}
    ),
    max_size=3,
)


def openai_bodies() -> st.SearchStrategy[Any]:
    common = {"model": _either(_OPENAI_MODELS), "stream": _either(st.booleans())}
    optional = {"times": json_values, "n": json_values, "max_tokens": json_values}
    completion = st.fixed_dictionaries(
        {**common, "prompt": _either(st.text(max_size=20))}, optional=optional
    )
    chat = st.fixed_dictionaries({**common, "messages": _either(_MESSAGES)}, optional=optional)
    return st.one_of(completion, chat, json_values)


def test_openai_requests(server: Server) -> None:
    @given(st.sampled_from(["/v1/completions", "/v1/chat/completions"]), openai_bodies())
    def case(path: str, body: Any) -> None:
        status, reply = server.post(path, _json_bytes(body), {"Content-Type": "application/json"})
        assert status < 500, reply
        for block in reply.decode().split("\n\n"):
            if block.startswith("data: {") and '"error"' in block:
                assert json.loads(block[6:])["error"]["type"] != "server_error", block
            elif block.startswith("{") and status >= 400:
                assert json.loads(block)["error"]["type"] != "server_error", block

    case()
    server.assert_still_serving()


def test_raw_bytes_on_the_http_port(server: Server) -> None:
    @given(
        st.sampled_from(
            ["/jsonrpc", "/jsonrpc/stream/tokens", "/v2/models/echo/infer", "/v1/completions"]
        ),
        st.binary(max_size=128),
    )
    def case(path: str, body: bytes) -> None:
        status, reply = server.post(path, body)
        assert status < 500 or status == NOT_IMPLEMENTED, reply

    case()
    server.assert_still_serving()
