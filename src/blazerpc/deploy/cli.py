"""`blaze deploy docker` and `blaze deploy kubernetes`: files generated from the app itself."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..exceptions import ConfigurationError
from . import docker, kserve, kubernetes
from .spec import DeploySpec, default_name, models_of

deploy = typer.Typer(
    help="Write a Dockerfile or Kubernetes manifests for an app.", no_args_is_help=True
)

AppPath = Annotated[str, typer.Argument(help="The app to load, as MODULE:ATTR, e.g. main:app")]
AppDir = Annotated[Path, typer.Option(help="Directory to import the app from")]
Port = Annotated[int, typer.Option(help="gRPC port (KServe v2 gRPC and health too)")]
HttpPort = Annotated[int | None, typer.Option(help="Also serve KServe v2 REST and JSON-RPC")]
MetricsPort = Annotated[int, typer.Option(help="Prometheus metrics port")]
Workers = Annotated[int, typer.Option(min=1, help="Worker processes per container")]
GracePeriod = Annotated[float, typer.Option(help="Seconds calls in flight may take on SIGTERM")]
MaxConnectionAge = Annotated[
    float, typer.Option(help="Seconds before a connection is closed, so clients rebalance")
]


def _spec(app_path: str, app_dir: Path, **settings: Any) -> DeploySpec:
    from ..launch import load_app

    app = load_app(app_path, app_dir)
    name = settings.pop("name", None) or default_name(app)
    try:
        return DeploySpec(name, app_path, models_of(app), app_dir=app_dir, **settings)
    except ConfigurationError as exc:
        typer.secho(f"Error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    typer.echo(f"wrote {path}")


@deploy.command("docker")
def docker_command(
    app_path: AppPath,
    app_dir: AppDir = Path("."),
    output_dir: Annotated[Path, typer.Option(help="The build context")] = Path("."),
    port: Port = 50051,
    http_port: HttpPort = None,
    metrics_port: MetricsPort = 9090,
    workers: Workers = 1,
    grace_period: GracePeriod = 30.0,
    max_connection_age: MaxConnectionAge = 300.0,
) -> None:
    """Write a Dockerfile (and a .dockerignore, unless there is one) that serves the app."""
    spec = _spec(
        app_path,
        app_dir,
        port=port,
        http_port=http_port,
        metrics_port=metrics_port,
        workers=workers,
        grace_period=grace_period,
        max_connection_age=max_connection_age,
    )
    requirements = (output_dir / "requirements.txt").exists()
    _write(output_dir / "Dockerfile", docker.dockerfile(spec, requirements=requirements))
    if not (output_dir / ".dockerignore").exists():
        _write(output_dir / ".dockerignore", docker.DOCKERIGNORE)


@deploy.command("kubernetes")
def kubernetes_command(
    app_path: AppPath,
    image: Annotated[str, typer.Option(help="The image to run, e.g. from `blaze deploy docker`")],
    app_dir: AppDir = Path("."),
    output_dir: Annotated[Path, typer.Option(help="Where to write the YAML files")] = Path("k8s"),
    name: Annotated[str | None, typer.Option(help="Object name [default: the app's name]")] = None,
    namespace: Annotated[str, typer.Option(help="Namespace of every object")] = "default",
    replicas: Annotated[
        int, typer.Option(min=1, help="Replicas, and the autoscaler's minimum")
    ] = 2,
    max_replicas: Annotated[int, typer.Option(min=1, help="The autoscaler's maximum")] = 10,
    target_in_flight: Annotated[
        int, typer.Option(min=1, help="Scale out above this many calls in flight per pod")
    ] = 16,
    port: Port = 50051,
    http_port: HttpPort = None,
    metrics_port: MetricsPort = 9090,
    workers: Workers = 1,
    grace_period: GracePeriod = 30.0,
    max_connection_age: MaxConnectionAge = 300.0,
    pre_stop: Annotated[
        int, typer.Option(min=0, help="Seconds between endpoint removal and SIGTERM")
    ] = 5,
    cpu: Annotated[str | None, typer.Option(help="CPU request [default: one per worker]")] = None,
    memory: Annotated[str, typer.Option(help="Memory request and limit")] = "1Gi",
    gpus: Annotated[int, typer.Option(min=0, help="nvidia.com/gpu per pod")] = 0,
    keda: Annotated[bool, typer.Option(help="A KEDA ScaledObject instead of an HPA")] = False,
    prometheus_url: Annotated[
        str, typer.Option(help="Where KEDA queries Prometheus")
    ] = "http://prometheus-operated.monitoring.svc:9090",
    kserve_runtime: Annotated[
        bool,
        typer.Option(
            "--kserve", help="A KServe ServingRuntime and InferenceService instead of the rest"
        ),
    ] = False,
) -> None:
    """Write Kubernetes manifests for the app: Deployment, Services, PDB and autoscaler."""
    if keda and kserve_runtime:
        typer.secho("Error: --keda and --kserve cannot be combined", err=True, fg="red")
        raise typer.Exit(2)
    spec = _spec(
        app_path,
        app_dir,
        name=name,
        image=image,
        namespace=namespace,
        replicas=replicas,
        max_replicas=max_replicas,
        target_in_flight=target_in_flight,
        port=port,
        http_port=http_port,
        metrics_port=metrics_port,
        workers=workers,
        grace_period=grace_period,
        max_connection_age=max_connection_age,
        pre_stop_s=pre_stop,
        cpu=cpu,
        memory=memory,
        gpus=gpus,
    )
    try:
        files = (
            kserve.manifests(spec)
            if kserve_runtime
            else kubernetes.manifests(spec, keda_prometheus_url=prometheus_url if keda else None)
        )
    except ConfigurationError as exc:
        typer.secho(f"Error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None
    for filename, objects in files.items():
        _write(output_dir / filename, to_yaml(objects))


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """YAML documents in the order the keys were built (kind and metadata first)."""
    try:
        import yaml
    except ImportError:
        typer.secho(
            "Error: writing YAML needs PyYAML: pip install 'blazerpc[deploy]'", err=True, fg="red"
        )
        raise typer.Exit(2) from None

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True  # a shared probe written out three times reads better than &id001

    return yaml.dump_all(objects, Dumper=Dumper, sort_keys=False, default_flow_style=False)
