"""A KServe ServingRuntime and InferenceService for the app: KServe then runs, exposes and
scales the pods itself, and its clients speak KServe v2 gRPC, which every BlazeRPC server
serves on its gRPC port alongside the native service."""

from __future__ import annotations

from typing import Any

from ..exceptions import ConfigurationError
from .kubernetes import Manifest, resources
from .spec import DeploySpec

MODEL_FORMAT = "blazerpc"


def runtime_name(spec: DeploySpec) -> str:
    return f"{spec.name[:55].rstrip('-')}-runtime"


def serving_runtime(spec: DeploySpec) -> Manifest:
    container: dict[str, Any] = {
        # KServe finds the serving container by this name, and the protocol by the port's:
        # h2c is gRPC without TLS.
        "name": "kserve-container",
        "image": spec.image,
        "command": spec.serve_command(),
        "ports": [{"name": "h2c", "containerPort": spec.port, "protocol": "TCP"}],
        "resources": resources(spec),
    }
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": runtime_name(spec), "namespace": spec.namespace},
        "spec": {
            "supportedModelFormats": [{"name": MODEL_FORMAT, "version": "1", "autoSelect": True}],
            "protocolVersions": ["grpc-v2"],
            "multiModel": False,
            "annotations": {
                "prometheus.kserve.io/port": str(spec.metrics_port),
                "prometheus.kserve.io/path": "/metrics",
            },
            "containers": [container],
        },
    }


def inference_service(spec: DeploySpec) -> Manifest:
    predictor: dict[str, Any] = {
        "minReplicas": spec.replicas,
        "maxReplicas": spec.max_replicas,
        "terminationGracePeriodSeconds": spec.termination_grace_period_s,
        "model": {
            "modelFormat": {"name": MODEL_FORMAT},
            "runtime": runtime_name(spec),
            "protocolVersion": "grpc-v2",
        },
    }
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": spec.labels},
        "spec": {"predictor": predictor},
    }


def manifests(spec: DeploySpec) -> dict[str, list[Manifest]]:
    if spec.http_port is not None:
        raise ConfigurationError(
            "KServe routes one port to the runtime (gRPC, with KServe v2 on it): drop --http-port"
        )
    return {"kserve.yaml": [serving_runtime(spec), inference_service(spec)]}
