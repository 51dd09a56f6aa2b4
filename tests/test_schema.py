"""The wire contract: the .proto text, `blaze proto` + stock protoc, and stock stubs calling us."""

import asyncio
import importlib
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.internal import api_implementation
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from blazerpc import BlazeApp, TensorInput, TensorOutput

from .apps import schema_app
from .support import running

ROOT = Path(__file__).resolve().parent.parent
BLAZE = Path(sys.executable).with_name("blaze")


def message_block(proto: str, name: str) -> list[str]:
    """The field lines of `message NAME { ... }` in .proto text, stripped."""
    match = re.search(rf"^message {name} \{{\n(.*?)^\}}", proto, re.S | re.M)
    assert match, f"no message {name} in:\n{proto}"
    return [line.strip() for line in match.group(1).strip().splitlines()]


def test_proto_text_has_the_wire_contract() -> None:
    app = BlazeApp()

    @app.model("echo")
    async def echo(text: str) -> str:
        return text

    @app.model("sentiment-v2")
    async def sentiment(text: str, threshold: float, max_len: int, verbose: bool) -> float:
        return 0.0

    @app.model("classify")
    def classify(
        features: TensorInput[np.float32, "batch", 4],
    ) -> TensorOutput[np.int64, "batch"]:
        return features.argmax(axis=1)

    proto = app.proto()
    assert 'syntax = "proto3";' in proto
    assert re.search(r"^package blazerpc;$", proto, re.M)
    assert re.search(r"^service InferenceService \{$", proto, re.M)
    assert "rpc PredictEcho(EchoRequest) returns (EchoResponse);" in proto
    assert "rpc PredictSentimentV2(SentimentV2Request) returns (SentimentV2Response);" in proto
    assert "rpc PredictClassify(ClassifyRequest) returns (ClassifyResponse);" in proto
    # Request fields are the parameters, in order, numbered from 1; float is 32-bit (2.2.1).
    assert message_block(proto, "EchoRequest") == ["string text = 1;"]
    assert message_block(proto, "SentimentV2Request") == [
        "string text = 1;",
        "float threshold = 2;",
        "int64 max_len = 3;",
        "bool verbose = 4;",
    ]
    assert message_block(proto, "EchoResponse") == ["string result = 1;"]
    assert message_block(proto, "SentimentV2Response") == ["float result = 1;"]
    assert message_block(proto, "ClassifyRequest") == ["TensorProto features = 1;"]
    assert message_block(proto, "ClassifyResponse") == ["TensorProto result = 1;"]
    assert message_block(proto, "TensorProto") == [
        "repeated int64 shape = 1;",
        "string dtype = 2;",
        "bytes data = 3;",
    ]
    # One service only, one rpc per model.
    assert proto.count("service ") == 1
    assert proto.count("  rpc ") == 3


def test_proto_text_of_streaming_and_composite_fields() -> None:
    proto = schema_app.app.proto()
    assert "rpc PredictGenerate(GenerateRequest) returns (stream GenerateResponse);" in proto
    assert message_block(proto, "DetectRequest") == [
        "TensorProto image = 1;",
        "repeated string labels = 2;",
        "map<string, int64> word_counts = 3;",
        "Point hint = 4;",
        "optional bool flag = 5;",
        "optional bytes raw = 6;",
    ]
    assert message_block(proto, "DetectResponse") == ["repeated Detection result = 1;"]
    assert message_block(proto, "Detection") == [
        "string label = 1;",
        "float score = 2;",
        "repeated Point corners = 3;",
    ]
    assert message_block(proto, "Point") == ["float x = 1;", "float y = 2;"]
    # A dataclass used twice is declared once.
    assert proto.count("message Point {") == 1


def normalized(fdp: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """Drop what protoc adds on its own (json names, source info) so descriptors compare."""
    fdp = descriptor_pb2.FileDescriptorProto.FromString(fdp.SerializeToString())
    fdp.ClearField("source_code_info")

    def clean(msg: descriptor_pb2.DescriptorProto) -> None:
        for f in msg.field:
            f.ClearField("json_name")
        for nested in msg.nested_type:
            clean(nested)

    for msg in fdp.message_type:
        clean(msg)
    return fdp


def app_file_proto(app: BlazeApp) -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto()
    app.schema.file.CopyToProto(fdp)
    return fdp


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the real `blaze proto` CLI, compile its output with stock protoc, import the stubs."""
    proto_dir = tmp_path_factory.mktemp("proto")
    out_dir = tmp_path_factory.mktemp("gen")
    cli = subprocess.run(
        [str(BLAZE), "proto", "tests.apps.schema_app:app", "--output-dir", str(proto_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    proto_file = proto_dir / "blaze_service.proto"
    assert proto_file.is_file()
    assert str(proto_file) in cli.stdout
    protoc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--descriptor_set_out={out_dir / 'set.pb'}",
            str(proto_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert protoc.returncode == 0, protoc.stderr
    assert protoc.stderr == "", protoc.stderr  # not even a warning
    sys.path.insert(0, str(out_dir))
    try:
        pb2: ModuleType = importlib.import_module("blaze_service_pb2")
        pb2_grpc: ModuleType = importlib.import_module("blaze_service_pb2_grpc")
    finally:
        sys.path.remove(str(out_dir))
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString((out_dir / "set.pb").read_bytes())
    return {
        "text": proto_file.read_text(),
        "pb2": pb2,
        "pb2_grpc": pb2_grpc,
        "set": descriptor_set,
    }


def test_blaze_proto_writes_the_apps_proto(generated: dict[str, Any]) -> None:
    assert generated["text"] == schema_app.app.proto()


def test_protoc_reads_the_same_schema_the_server_uses(generated: dict[str, Any]) -> None:
    """The .proto text and the FileDescriptorProto are one schema: protoc rebuilds it exactly."""
    (compiled,) = generated["set"].file
    assert normalized(compiled) == normalized(app_file_proto(schema_app.app))


async def test_reflection_serves_the_schemas_own_descriptor() -> None:
    app = schema_app.app
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="blazerpc.InferenceService"
    )
    async with (
        running(app) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    (response,) = responses
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    (blaze,) = [f for f in files if f.name == "blaze_service.proto"]
    assert blaze == app_file_proto(app)


def call_with_stock_stubs(port: int, pb2: ModuleType, pb2_grpc: ModuleType) -> dict[str, Any]:
    """What a client that only has the generated code sees (blocking grpc, plain channel)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb2_grpc.InferenceServiceStub(channel)
        out: dict[str, Any] = {}
        out["echo"] = stub.PredictEcho(pb2.EchoRequest(text="hi"), timeout=10).result
        out["sentiment"] = stub.PredictSentimentV2(
            pb2.SentimentV2Request(text="great movie!", threshold=0.9), timeout=10
        ).result
        features = np.array([[0, 1, 0, 0], [0, 0, 0, 5], [9, 0, 0, 0]], np.float32)
        reply = stub.PredictClassify(
            pb2.ClassifyRequest(
                features=pb2.TensorProto(shape=[3, 4], dtype="float", data=features.tobytes())
            ),
            timeout=10,
        ).result
        out["classify"] = (
            list(reply.shape),
            reply.dtype,
            np.frombuffer(reply.data, "<i8").tolist(),
        )
        image = np.zeros((4, 6, 3), np.uint8)
        out["detect"] = stub.PredictDetect(
            pb2.DetectRequest(
                image=pb2.TensorProto(shape=[4, 6, 3], dtype="uint8", data=image.tobytes()),
                labels=["cat", "dog"],
                word_counts={"cat": 3},
            ),
            timeout=10,
        ).result
        out["generate"] = [
            r.result for r in stub.PredictGenerate(pb2.GenerateRequest(prompt="a b c"), timeout=10)
        ]
        return out


async def test_stock_stubs_call_a_running_server(generated: dict[str, Any]) -> None:
    async with running(schema_app.app) as server:
        out = await asyncio.to_thread(
            call_with_stock_stubs, server.port, generated["pb2"], generated["pb2_grpc"]
        )
    assert out["echo"] == "hi"
    # threshold 0.9 was sent; max_len was absent, so its default 512 applied.
    assert out["sentiment"].label == "positive"
    assert out["sentiment"].score == 1.0
    assert out["classify"] == ([3], "int64", [1, 3, 0])
    detections = out["detect"]
    assert [(d.label, d.score) for d in detections] == [("cat", 3.0), ("dog", 0.0)]
    assert [(p.x, p.y) for p in detections[0].corners] == [(0.0, 0.0), (6.0, 4.0)]
    assert out["generate"] == ["a", "b", "c"]


def test_message_classes_come_from_the_schemas_pool_and_the_c_runtime() -> None:
    app = schema_app.app
    for rpc in ("Echo", "Detect", "Generate"):
        for cls in (app.schema.request_class(rpc), app.schema.response_class(rpc)):
            assert issubclass(cls, Message)
            assert cls.DESCRIPTOR.file.pool is app.schema.pool
            assert cls.DESCRIPTOR.file.name == "blaze_service.proto"
    assert api_implementation.Type() in ("upb", "cpp")


def test_schema_is_rebuilt_when_models_are_added(app: BlazeApp) -> None:
    @app.model("echo")
    async def echo(text: str) -> str:
        return text

    assert "PredictEcho" in app.proto()

    @app.model("other")
    async def other(text: str) -> str:
        return text

    assert "PredictOther" in app.proto()
    assert app.schema.request_class("Other")(text="x").text == "x"
