"""BlazeRPC: serve typed Python functions as gRPC inference endpoints."""

from grpc import StatusCode

from ._version import __version__ as __version__
from .app import BlazeApp
from .client import BlazeClient, ClientTLS, SyncBlazeClient
from .client_jsonrpc import JsonRpcClient
from .exceptions import (
    BlazeRPCError,
    ConfigurationError,
    InferenceError,
    ModelNotFoundError,
    RPCError,
    SerializationError,
    ValidationError,
)
from .injection import Context, Depends
from .server.server import Server, ServerTLS
from .types import TensorInput, TensorOutput

__all__ = [
    "BlazeApp",
    "BlazeClient",
    "BlazeRPCError",
    "ClientTLS",
    "ConfigurationError",
    "Context",
    "Depends",
    "InferenceError",
    "JsonRpcClient",
    "ModelNotFoundError",
    "RPCError",
    "SerializationError",
    "Server",
    "ServerTLS",
    "StatusCode",
    "SyncBlazeClient",
    "TensorInput",
    "TensorOutput",
    "ValidationError",
]
