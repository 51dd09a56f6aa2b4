"""BlazeRPC: serve typed Python functions as gRPC inference endpoints."""

from grpc import StatusCode

from .app import BlazeApp
from .client import BlazeClient, SyncBlazeClient
from .exceptions import (
    BlazeRPCError,
    ConfigurationError,
    InferenceError,
    ModelNotFoundError,
    RPCError,
    SerializationError,
    ValidationError,
)
from .server.server import Server
from .types import TensorInput, TensorOutput

__version__ = "3.0.0.dev0"
__all__ = [
    "BlazeApp",
    "BlazeClient",
    "BlazeRPCError",
    "ConfigurationError",
    "InferenceError",
    "ModelNotFoundError",
    "RPCError",
    "SerializationError",
    "Server",
    "StatusCode",
    "SyncBlazeClient",
    "TensorInput",
    "TensorOutput",
    "ValidationError",
]
