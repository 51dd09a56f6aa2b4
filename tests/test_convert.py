"""A model's result is judged once, by protobuf's rules, whichever protocol carries it."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import wrappers_pb2

from blazerpc import BlazeApp, BlazeClient, InferenceError
from blazerpc.convert import WrongResult, converter, scalar
from blazerpc.protocols.kserve import messages as kserve
from blazerpc.types import ListOf, Scalar

from .protocol_servers import http
from .support import running

WRAPPERS = {
    int: wrappers_pb2.Int64Value,
    float: wrappers_pb2.DoubleValue,
    bool: wrappers_pb2.BoolValue,
    str: wrappers_pb2.StringValue,
    bytes: wrappers_pb2.BytesValue,
}
VALUES = [
    3,
    -(2**63),
    2**63,
    3.7,
    3.0,
    True,
    "3",
    "false",
    b"3",
    b"\xff",
    np.int64(3),
    np.uint64(5),
    np.float32(2.5),
    np.bool_(True),
    [1],
    object(),
]


def _protobuf_takes(py: type, value: Any) -> Any:
    try:
        return WRAPPERS[py](value=value).value
    except (TypeError, ValueError, OverflowError):
        return WrongResult


def _convert_takes(py: type, value: Any) -> Any:
    try:
        return scalar(py, "result")(value)
    except WrongResult:
        return WrongResult


@pytest.mark.parametrize("py", list(WRAPPERS), ids=lambda t: t.__name__)
def test_scalar_verdicts_are_protobufs(py: type) -> None:
    for value in VALUES:
        assert _convert_takes(py, value) == _protobuf_takes(py, value), (py, value)


def test_none_is_wrong_for_a_required_result_and_null_for_an_optional_one() -> None:
    with pytest.raises(WrongResult, match="returned None for field 'result', declared int"):
        converter(Scalar(int), "result")(None)
    assert converter(Scalar(int), "result", optional=True)(None) is None


def test_a_wrong_item_is_named_with_its_list() -> None:
    convert = converter(ListOf(Scalar(int)), "result")
    assert convert([1, np.int32(2)]) == [1, 2]
    with pytest.raises(WrongResult, match=r"returned float 2.5 for field 'result\[\]', declared"):
        convert([1, 2.5])


def wrong_results_app() -> BlazeApp:
    app = BlazeApp(enable_batching=False)

    @app.model("as-int")
    def as_int(n: int) -> int:
        return 3.7  # type: ignore[return-value]

    @app.model("as-str")
    def as_str(n: int) -> str:
        return 123  # type: ignore[return-value]

    @app.model("as-bool")
    def as_bool(n: int) -> bool:
        return "false"  # type: ignore[return-value]

    @app.model("five")
    def five(n: int) -> str:
        return 5  # type: ignore[return-value]

    @app.model("nothing")
    def nothing(n: int) -> int:
        return None  # type: ignore[return-value]

    return app


WRONG = {
    "as-int": "InferenceError: model 'as-int' returned float 3.7 for field 'result', declared int",
    "as-str": "InferenceError: model 'as-str' returned int 123 for field 'result', declared str",
    "as-bool": (
        "InferenceError: model 'as-bool' returned str 'false' for field 'result', declared bool"
    ),
    "five": "InferenceError: model 'five' returned int 5 for field 'result', declared str",
    "nothing": "InferenceError: model 'nothing' returned None for field 'result', declared int",
}


async def _native(port: int, model: str) -> tuple[str, str]:
    async with BlazeClient("127.0.0.1", port) as client:
        with pytest.raises(InferenceError) as info:
            await client.predict(model, n=1)
    return info.value.code.name, str(info.value)


async def _kserve_grpc(port: int, model: str) -> tuple[str, str]:
    request = kserve.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="n", datatype="INT64", shape=[1])
    tensor.contents.int64_contents.append(1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary(
            f"/{kserve.SERVICE_NAME}/ModelInfer",
            request_serializer=kserve.ModelInferRequest.SerializeToString,
            response_deserializer=kserve.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await infer(request, timeout=10)
    return info.value.code().name, info.value.details() or ""


async def _kserve_rest(port: int, model: str) -> tuple[str, str]:
    body = {"inputs": [{"name": "n", "datatype": "INT64", "shape": [1], "data": [1]}]}
    reply = await http(f"http://127.0.0.1:{port}/v2/models/{model}/infer", body)
    assert reply.status == 500
    return "INTERNAL", reply.json()["error"]  # type: ignore[index]


async def _jsonrpc(port: int, model: str) -> tuple[str, str]:
    call = {"jsonrpc": "2.0", "method": f"predict.{model}", "params": {"n": 1}, "id": 1}
    error = (await http(f"http://127.0.0.1:{port}/jsonrpc", call)).json()["error"]  # type: ignore[index]
    assert error["code"] == -32603
    return error["data"]["status"], error["message"]


async def test_a_wrong_result_is_the_same_internal_error_on_every_protocol(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running(wrong_results_app(), http=True) as server:
        assert server.http_port is not None
        for model, details in WRONG.items():
            verdicts = {
                "native": await _native(server.port, model),
                "KServe gRPC": await _kserve_grpc(server.port, model),
                "KServe REST": await _kserve_rest(server.http_port, model),
                "JSON-RPC": await _jsonrpc(server.http_port, model),
            }
            assert verdicts == dict.fromkeys(verdicts, ("INTERNAL", details)), model
    logged = [r for r in caplog.records if r.name == "blazerpc.calls" and r.exc_info]
    assert len(logged) == 4 * len(WRONG)  # once per call, never twice
