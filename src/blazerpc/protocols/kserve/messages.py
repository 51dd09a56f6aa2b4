"""The KServe v2 gRPC messages, loaded from the compiled grpc_predict_v2.proto.

They live in a private descriptor pool, not protobuf's default one: tritonclient registers the
same `inference.*` names there, and a server and a client must be able to share a process.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "inference"
SERVICE_NAME = f"{PACKAGE}.GRPCInferenceService"

FILE = descriptor_pb2.FileDescriptorSet.FromString(
    files(__package__).joinpath("grpc_predict_v2.binpb").read_bytes()
).file[0]

_pool = descriptor_pool.DescriptorPool()
_pool.Add(FILE)


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ServerLiveRequest = _message("ServerLiveRequest")
ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyRequest = _message("ServerReadyRequest")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataRequest = _message("ServerMetadataRequest")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
ModelStreamInferResponse = _message("ModelStreamInferResponse")
