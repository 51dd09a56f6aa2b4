"""Server reflection over the schema's own descriptor pool, so grpcurl sees the real types."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from ..protocols.kserve.messages import FILE as KSERVE_FILE
from ..protocols.kserve.messages import SERVICE_NAME as KSERVE_SERVICE
from ..schema import SERVICE_FULL_NAME, Schema
from .health import SERVICE_NAME as HEALTH_SERVICE


def enable_reflection(server: grpc.aio.Server, schema: Schema) -> None:
    """Serve reflection for the InferenceService, KServe v2, health and reflection itself."""
    files = [KSERVE_FILE]
    for module in (health_pb2, reflection_pb2):
        fdp = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(fdp)
        files.append(fdp)
    for fdp in files:
        try:
            schema.pool.FindFileByName(fdp.name)
        except KeyError:
            schema.pool.Add(fdp)
    services = (SERVICE_FULL_NAME, KSERVE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(services, pool=schema.pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
