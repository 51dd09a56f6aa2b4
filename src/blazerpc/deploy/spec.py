"""What a deployment of one app is: derived once from the app and the flags, so that no model
name, port or timing is written twice in the manifests."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..app import BlazeApp
from ..exceptions import ConfigurationError

# Kubernetes object names: Services need a DNS-1035 label, a letter first.
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class ModelSpec:
    """One served model: its name, and its largest batch when it batches."""

    name: str
    max_batch_size: int | None = None


@dataclass(frozen=True)
class DeploySpec:
    """Everything the Dockerfile and the manifests are generated from."""

    name: str
    app_path: str
    models: tuple[ModelSpec, ...]
    image: str = ""
    namespace: str = "default"
    app_dir: Path = Path(".")
    port: int = 50051
    http_port: int | None = None
    metrics_port: int = 9090
    workers: int = 1
    grace_period: float = 30.0
    max_connection_age: float = 300.0
    pre_stop_s: int = 5
    shutdown_hooks_s: int = 10
    replicas: int = 2
    max_replicas: int = 10
    target_in_flight: int = 16
    cpu: str | None = None
    memory: str = "1Gi"
    gpus: int = 0

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigurationError(
                f"name '{self.name}' is not a Kubernetes name: lower-case letters, digits and "
                "'-', starting with a letter, at most 63 characters (pass --name)"
            )
        if self.max_replicas < self.replicas:
            raise ConfigurationError(
                f"--max-replicas ({self.max_replicas}) is below --replicas ({self.replicas})"
            )

    @property
    def labels(self) -> dict[str, str]:
        """The labels every object carries; the Services and autoscalers select on them."""
        return {"app.kubernetes.io/name": self.name, "app.kubernetes.io/component": "blazerpc"}

    @property
    def selector(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.name}

    @property
    def termination_grace_period_s(self) -> int:
        """How long Kubernetes waits before SIGKILL, counted from the start of preStop: the
        preStop delay, then the drain, then the shutdown hooks, so a drain always completes."""
        return self.pre_stop_s + math.ceil(self.grace_period) + self.shutdown_hooks_s

    @property
    def cpu_request(self) -> str:
        return self.cpu or str(self.workers)  # one core per worker process unless told

    def serve_command(self) -> list[str]:
        """`blaze serve` with this spec's settings: the container's command everywhere."""
        command = ["blaze", "serve", self.app_path, "--host", "0.0.0.0", "--port", str(self.port)]
        if self.app_dir != Path(".") and not self.app_dir.is_absolute():
            # Relative to the image's working directory, where the build context is copied;
            # an absolute path on this machine means nothing in the image.
            command += ["--app-dir", self.app_dir.as_posix()]
        if self.http_port is not None:
            command += ["--http-port", str(self.http_port)]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        return [
            *command,
            "--metrics-port",
            str(self.metrics_port),
            "--grace-period",
            _seconds(self.grace_period),
            # Connections end now and then, so clients behind a Service reach new replicas;
            # calls on an aged connection get the same time to finish as in a drain.
            "--max-connection-age",
            _seconds(self.max_connection_age),
            "--max-connection-age-grace",
            _seconds(self.grace_period),
        ]


def _seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


def models_of(app: BlazeApp) -> tuple[ModelSpec, ...]:
    """The app's models, with the batch size of those that batch."""
    specs = []
    for entry in app.registry:
        settings = app.batch_settings(entry)
        specs.append(ModelSpec(entry.name, settings.max_batch_size if settings else None))
    return tuple(specs)


def default_name(app: BlazeApp) -> str:
    """The app's name as a Kubernetes name: `BlazeApp("Fraud Scorer")` -> `fraud-scorer`."""
    name = re.sub(r"[^a-z0-9]+", "-", app.name.lower()).strip("-")
    if not name[:1].isalpha():
        name = f"blazerpc-{name}"
    return name[:63].rstrip("-")
