"""`blaze deploy`: manifests validated offline against the Kubernetes schemas of two minor
versions, and the values that must agree (ports, drain timing, labels, model names) checked."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from blazerpc.cli import cli

from .processes import BLAZE, ROOT

APP = "tests.apps.production_app:app"
MODELS = ["pid", "slow", "slow-sync", "count", "batch-size", "echo"]
# 1.27: native gRPC probes are GA. 1.33: a current release.
KUBERNETES = ["1.27.0", "1.33.0"]


def deploy(tmp_path: Path, *args: str) -> dict[str, list[dict]]:
    """Run `blaze deploy kubernetes` and read back every file it wrote."""
    out = tmp_path / "k8s"
    result = CliRunner().invoke(
        cli, ["deploy", "kubernetes", APP, "--image", "registry.example/model:1",
              "--output-dir", str(out), *args],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(out.iterdir())}


def by_kind(files: dict[str, list[dict]]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for docs in files.values():
        for doc in docs:
            kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def validate(manifest: dict) -> None:
    for version in KUBERNETES:
        kubernetes_validate.validate(manifest, version, strict=True)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.parametrize("extra", [[], ["--gpus", "2", "--http-port", "8080", "--workers", "2"]])
def test_every_manifest_is_valid_kubernetes(tmp_path: Path, extra: list[str]) -> None:
    files = deploy(tmp_path, *extra)
    assert set(files) == {"deployment.yaml", "services.yaml", "pdb.yaml", "hpa.yaml"}
    for docs in files.values():
        for doc in docs:
            validate(doc)


def test_the_schemas_catch_a_broken_manifest(tmp_path: Path) -> None:
    """The validation above is worth something: a misspelt field or a wrong type fails it."""
    deployment = deploy(tmp_path)["deployment.yaml"][0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["grpcc"] = container["readinessProbe"].pop("grpc")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    container["readinessProbe"]["grpc"] = {"port": "grpc"}  # gRPC probes take a number
    del container["readinessProbe"]["grpcc"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


def test_ports_probes_drain_and_resources_come_from_the_flags(tmp_path: Path) -> None:
    kinds = by_kind(
        deploy(
            tmp_path,
            *("--port", "7000", "--http-port", "7001", "--metrics-port", "7002"),
            *("--grace-period", "50", "--pre-stop", "7", "--gpus", "1"),
            *("--cpu", "3", "--memory", "6Gi", "--name", "fraud", "--namespace", "ml"),
        )
    )
    (deployment,) = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:3] == ["blaze", "serve", APP]
    assert flag(command, "--port") == "7000" and flag(command, "--http-port") == "7001"
    assert flag(command, "--metrics-port") == "7002"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 7000, "http": 7001, "metrics": 7002}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 7000}, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "7002"
    assert annotations["prometheus.io/scrape"] == "true"

    # Drain: SIGKILL comes only after preStop, the whole grace period and then some.
    assert flag(command, "--grace-period") == "50"
    assert flag(command, "--max-connection-age-grace") == "50"
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "7"]
    assert pod["terminationGracePeriodSeconds"] > 7 + 50

    assert container["resources"] == {
        "requests": {"cpu": "3", "memory": "6Gi"},
        "limits": {"memory": "6Gi", "nvidia.com/gpu": 1},
    }
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    for objects in kinds.values():
        for obj in objects:
            assert obj["metadata"]["namespace"] == "ml"
            assert obj["metadata"]["name"].startswith("fraud")


def test_services_and_budget_select_the_pods_and_the_autoscaler_scales_them(
    tmp_path: Path,
) -> None:
    kinds = by_kind(deploy(tmp_path, "--replicas", "3", "--max-replicas", "12"))
    (deployment,) = kinds["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    cluster_ip, headless = kinds["Service"]
    for service in (cluster_ip, headless):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["ports"][0]["targetPort"] == "grpc"
    assert cluster_ip["spec"]["type"] == "ClusterIP"
    assert headless["spec"]["clusterIP"] == "None"
    (budget,) = kinds["PodDisruptionBudget"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    (hpa,) = kinds["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    targets = {
        (m["pods"]["metric"]["name"], m["pods"]["metric"]["selector"]["matchLabels"]["model"]):
            m["pods"]["target"]["averageValue"]
        for m in hpa["spec"]["metrics"]
    }  # fmt: skip
    # In-flight calls of every model of the app; queue depth of the one that batches, scaled
    # at a full batch (production_app's batch-size model batches up to 64).
    expected = {("blazerpc_in_flight", m): "16" for m in MODELS}
    assert targets == {**expected, ("blazerpc_queue_depth", "batch-size"): "64"}


def test_keda_scaled_object_queries_the_same_gauges(tmp_path: Path) -> None:
    files = deploy(tmp_path, "--keda", "--prometheus-url", "http://prom:9090", "--name", "m")
    assert "hpa.yaml" not in files
    (scaled,) = files["keda.yaml"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    assert (
        scaled["spec"]["scaleTargetRef"]["name"] == files["deployment.yaml"][0]["metadata"]["name"]
    )
    queries = {
        t["metadata"]["query"]: t["metadata"]["threshold"] for t in scaled["spec"]["triggers"]
    }
    pods = 'namespace="default",pod=~"m-[a-z0-9]+-[a-z0-9]+"'
    assert queries[f'sum(blazerpc_in_flight{{{pods},model="echo"}})'] == "16"
    assert queries[f'sum(blazerpc_queue_depth{{{pods},model="batch-size"}})'] == "64"
    assert len(queries) == len(MODELS) + 1
    assert {t["metadata"]["serverAddress"] for t in scaled["spec"]["triggers"]} == {
        "http://prom:9090"
    }
    for name in ("deployment.yaml", "services.yaml", "pdb.yaml"):
        for doc in files[name]:
            validate(doc)


def test_kserve_runtime_and_inference_service(tmp_path: Path) -> None:
    files = deploy(tmp_path, "--kserve", "--port", "9000", "--gpus", "1", "--name", "m")
    runtime, isvc = files["kserve.yaml"]
    assert set(files) == {"kserve.yaml"}
    assert runtime["kind"] == "ServingRuntime" and isvc["kind"] == "InferenceService"
    assert isvc["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    fmt = isvc["spec"]["predictor"]["model"]["modelFormat"]["name"]
    assert fmt in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2"]
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert container["ports"] == [{"name": "h2c", "containerPort": 9000, "protocol": "TCP"}]
    assert flag(container["command"], "--port") == "9000"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # No schema for KServe's custom resources here: the container they carry is validated
    # as a Pod's, and so are the predictor's pod-level fields.
    predictor = {
        k: v for k, v in isvc["spec"]["predictor"].items() if k == "terminationGracePeriodSeconds"
    }
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "m"},
              "spec": {"containers": [container], **predictor}})  # fmt: skip
    assert predictor["terminationGracePeriodSeconds"] > 30


def test_bad_names_and_combinations_are_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["deploy", "kubernetes", APP, "--image", "i", "--output-dir", str(tmp_path)]
    for args, message in [
        (["--name", "Fraud_Model"], "is not a Kubernetes name"),
        (["--keda", "--kserve"], "cannot be combined"),
        (["--kserve", "--http-port", "8080"], "drop --http-port"),
        (["--replicas", "5", "--max-replicas", "3"], "is below --replicas"),
    ]:
        result = runner.invoke(cli, [*base, *args])
        assert result.exit_code == 2, args
        assert message in result.output, (args, result.output)
    assert list(tmp_path.iterdir()) == []


def test_dockerfile_runs_the_same_command_as_non_root(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("numpy\n")
    subprocess.run(
        [BLAZE, "deploy", "docker", APP, "--output-dir", str(tmp_path), "--port", "7000",
         "--workers", "2"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    dockerfile = (tmp_path / "Dockerfile").read_text()
    lines = dockerfile.splitlines()
    assert lines[lines.index("COPY requirements.txt ./") + 1].endswith(" -r requirements.txt")
    user = next(line for line in lines if line.startswith("USER "))
    assert user.split()[1] not in {"0", "root"}
    assert lines.index(user) > max(i for i, line in enumerate(lines) if line.startswith("RUN "))
    entrypoint = json.loads(
        next(ln for ln in lines if ln.startswith("ENTRYPOINT ")).split(" ", 1)[1]
    )
    assert entrypoint[:3] == ["blaze", "serve", APP]
    assert flag(entrypoint, "--port") == "7000" and flag(entrypoint, "--workers") == "2"
    assert "EXPOSE 7000 9090" in lines
    assert ".venv" in (tmp_path / ".dockerignore").read_text()


def test_names_come_from_the_app_and_model_names_must_fit_label_selectors() -> None:
    from blazerpc import BlazeApp
    from blazerpc.deploy import kubernetes
    from blazerpc.deploy.spec import DeploySpec, default_name, models_of
    from blazerpc.exceptions import ConfigurationError

    assert default_name(BlazeApp("Fraud Scorer v2")) == "fraud-scorer-v2"
    assert default_name(BlazeApp("2024 model")) == "blazerpc-2024-model"
    app = BlazeApp()

    long_name = "score-" + "x" * 60  # a valid model name, too long for a label selector

    @app.model(long_name)
    def score(x: int) -> int:
        return x

    spec = DeploySpec("m", "app:app", models_of(app), image="i")
    with pytest.raises(ConfigurationError, match=f"'{long_name}' cannot be the label value"):
        kubernetes.manifests(spec)
