"""Kubernetes objects for one app, as plain data: a Deployment, a ClusterIP and a headless
Service, a PodDisruptionBudget, and an autoscaler (an HPA, or a KEDA ScaledObject).

The autoscalers scale on `blazerpc_in_flight` and `blazerpc_queue_depth` (see metrics.py),
which rise as soon as calls wait, unlike CPU, which a model on a GPU barely moves.
"""

from __future__ import annotations

import re
from typing import Any

from ..exceptions import ConfigurationError
from .spec import DeploySpec

Manifest = dict[str, Any]

IN_FLIGHT = "blazerpc_in_flight"
QUEUE_DEPTH = "blazerpc_queue_depth"
GPU = "nvidia.com/gpu"
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def _metadata(spec: DeploySpec, name: str | None = None) -> dict[str, Any]:
    return {"name": name or spec.name, "namespace": spec.namespace, "labels": spec.labels}


def container(spec: DeploySpec) -> dict[str, Any]:
    """The model server's container: command, ports, probes, drain delay and resources."""
    ports = [{"name": "grpc", "containerPort": spec.port}]
    if spec.http_port is not None:
        ports.append({"name": "http", "containerPort": spec.http_port})
    ports.append({"name": "metrics", "containerPort": spec.metrics_port})
    probe = {"grpc": {"port": spec.port}}
    return {
        "name": "model",
        "image": spec.image,
        "command": spec.serve_command(),
        "ports": ports,
        # Loading weights may take minutes: the startup probe allows 5, the others wait for it.
        "startupProbe": {**probe, "periodSeconds": 5, "failureThreshold": 60},
        "readinessProbe": {**probe, "periodSeconds": 5},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
        # Endpoints are removed while SIGTERM is sent; the delay lets them go first.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(spec.pre_stop_s)]}}},
        "resources": resources(spec),
    }


def resources(spec: DeploySpec) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": spec.cpu_request, "memory": spec.memory}
    limits: dict[str, Any] = {"memory": spec.memory}  # no CPU limit: throttling hurts latency
    if spec.gpus:
        limits[GPU] = spec.gpus  # a GPU request must equal its limit; the limit implies it
    return {"requests": requests, "limits": limits}


def deployment(spec: DeploySpec) -> Manifest:
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": spec.termination_grace_period_s,
        "securityContext": {"runAsNonRoot": True},
        "containers": [container(spec)],
    }
    if spec.gpus:
        pod["tolerations"] = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": spec.selector},
            # A new pod is ready before an old one drains: capacity never drops in a rollout.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": spec.labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(spec.metrics_port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod,
            },
        },
    }


def _service_ports(spec: DeploySpec) -> list[dict[str, Any]]:
    ports = [_port("grpc", spec.port, "kubernetes.io/h2c")]
    if spec.http_port is not None:
        ports.append(_port("http", spec.http_port, "http"))
    return ports


def _port(name: str, port: int, protocol: str) -> dict[str, Any]:
    return {"name": name, "port": port, "targetPort": name, "appProtocol": protocol}


def services(spec: DeploySpec) -> list[Manifest]:
    """A ClusterIP Service (one virtual IP; it balances connections, not calls) and a
    headless one, whose DNS name lists every ready pod for clients that balance calls."""
    cluster_ip = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec),
        "spec": {"type": "ClusterIP", "selector": spec.selector, "ports": _service_ports(spec)},
    }
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, headless_name(spec)),
        "spec": {"clusterIP": "None", "selector": spec.selector, "ports": _service_ports(spec)},
    }
    return [cluster_ip, headless]


def headless_name(spec: DeploySpec) -> str:
    return f"{spec.name[:54].rstrip('-')}-headless"


def pod_disruption_budget(spec: DeploySpec) -> Manifest:
    """Node drains and cluster upgrades evict one pod at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": spec.selector}},
    }


def load_targets(spec: DeploySpec) -> list[tuple[str, str, int]]:
    """(metric, model, average per pod to scale at): in-flight calls of every model, and for
    a batching model a queue as long as its largest batch (the pod is a batch behind)."""
    for m in spec.models:
        if not _LABEL_VALUE.match(m.name):
            raise ConfigurationError(
                f"model name '{m.name}' cannot be the label value the autoscaler's metric "
                "selector matches: at most 63 letters, digits, '-', '_' and '.'"
            )
    targets = [(IN_FLIGHT, m.name, spec.target_in_flight) for m in spec.models]
    targets += [(QUEUE_DEPTH, m.name, m.max_batch_size) for m in spec.models if m.max_batch_size]
    return targets


def horizontal_pod_autoscaler(spec: DeploySpec) -> Manifest:
    """Scales on per-pod averages of the load gauges, through the custom metrics API (served
    by prometheus-adapter; docs/kubernetes.md has its rule). The busiest model decides."""
    metrics = [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": metric, "selector": {"matchLabels": {"model": model}}},
                "target": {"type": "AverageValue", "averageValue": str(target)},
            },
        }
        for metric, model, target in load_targets(spec)
    ]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicas": spec.replicas,
            "maxReplicas": spec.max_replicas,
            "metrics": metrics,
        },
    }


def keda_scaled_object(spec: DeploySpec, prometheus_url: str) -> Manifest:
    """The same targets as the HPA, read by KEDA straight from Prometheus (no adapter).
    KEDA divides each query's sum by the replica count, as the HPA's averages do."""
    pods = f'namespace="{spec.namespace}",pod=~"{spec.name}-[a-z0-9]+-[a-z0-9]+"'
    triggers = [
        {
            "type": "prometheus",
            "name": f"{metric.removeprefix('blazerpc_').replace('_', '-')}-{model}"[:63],
            "metadata": {
                "serverAddress": prometheus_url,
                "query": f'sum({metric}{{{pods},model="{model}"}})',
                "threshold": str(target),
            },
        }
        for metric, model, target in load_targets(spec)
    ]
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(spec),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicaCount": spec.replicas,
            "maxReplicaCount": spec.max_replicas,
            "triggers": triggers,
        },
    }


def manifests(
    spec: DeploySpec, *, keda_prometheus_url: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every object, by the file it is written to."""
    autoscaler = (
        {"hpa.yaml": [horizontal_pod_autoscaler(spec)]}
        if keda_prometheus_url is None
        else {"keda.yaml": [keda_scaled_object(spec, keda_prometheus_url)]}
    )
    return {
        "deployment.yaml": [deployment(spec)],
        "services.yaml": services(spec),
        "pdb.yaml": [pod_disruption_budget(spec)],
        **autoscaler,
    }
