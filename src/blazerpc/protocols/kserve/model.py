"""One registered model as KServe v2 presents it, built once at start-up and shared by the
gRPC and REST adapters: its metadata, its input tensors by parameter name, its output."""

from __future__ import annotations

from typing import Any

from grpc import StatusCode

from ..._version import __version__
from ...exceptions import RPCError, ValidationError
from ...runtime.registry import served, version_key
from ...runtime.runner import ModelRunner
from .tensors import InputSpec, OutputSpec, Unsupported

PLATFORM = "blazerpc"
# Past this many bytes of tensor data, BYTES inputs are split in a thread (about 1 ms of work
# on the loop at this size: more would hold up every other call).
OFF_LOOP_BYTES = 256 * 1024
EXTENSIONS = ["binary_tensor_data"]


def server_metadata() -> dict[str, Any]:
    return {"name": "blazerpc", "version": __version__, "extensions": EXTENSIONS}


class KServeModel:
    """A model's KServe view. Models whose parameters or result have no tensor form (a
    dataclass, a dict) are listed but refuse KServe calls with UNIMPLEMENTED, saying why."""

    def __init__(self, runner: ModelRunner) -> None:
        entry = runner.entry
        self.runner = runner
        self.name, self.version, self.streaming = entry.name, entry.version, entry.streaming
        self.key = entry.key  # as the models are keyed: `name`, or `name@version` below the highest
        self.versions = [self.version]
        self.unsupported: str | None = None
        self.inputs: dict[str, InputSpec] = {}
        try:
            self.inputs = {f.name: InputSpec(f) for f in entry.signature.params}
            self.output = OutputSpec(entry.signature.result)
        except Unsupported as exc:
            self.unsupported = (
                f"model '{self.name}' cannot be called over KServe v2: {exc}, which has no "
                "tensor form; call it over the native gRPC service or JSON-RPC"
            )
        self._required = [spec for spec in self.inputs.values() if spec.required]
        self.takes_bytes = any(spec.datatype == "BYTES" for spec in self.inputs.values())
        self._defaults = {n: s.default for n, s in self.inputs.items() if not s.required}

    def check(self) -> None:
        """Refuse a call this model cannot take over KServe."""
        if self.unsupported is not None:
            raise RPCError(StatusCode.UNIMPLEMENTED, self.unsupported)

    def check_unary(self, streaming_hint: str) -> None:
        if self.streaming:
            raise ValidationError(
                f"model '{self.name}' streams its results; {streaming_hint}", field=self.name
            )

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": self.versions,
            "platform": PLATFORM,
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": s.shape}
                for s in self.inputs.values()
            ],
            "outputs": [
                {
                    "name": self.output.name,
                    "datatype": self.output.datatype,
                    "shape": self.output.shape,
                }
            ],
        }

    def input(self, name: str, received: dict[str, Any]) -> InputSpec:
        """The spec of input `name`, which must be one of the model's and not sent twice."""
        spec = self.inputs.get(name)
        if spec is None:
            raise ValidationError(
                f"model '{self.name}' has no input '{name}'; its inputs are: "
                + (", ".join(self.inputs) or "none"),
                field=name,
            )
        if name in received:
            raise ValidationError(f"input '{name}' is sent twice", field=name)
        return spec

    def check_outputs(self, names: list[str]) -> None:
        for name in names:
            if name != self.output.name:
                raise ValidationError(
                    f"model '{self.name}' has no output '{name}'; its output is "
                    f"'{self.output.name}'",
                    field=name,
                )

    def complete(self, received: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments: every input received, defaults for the ones left out."""
        if len(received) == len(self.inputs):
            return received
        for spec in self._required:
            if spec.name not in received:
                raise ValidationError(
                    f"missing input '{spec.name}': expected a {spec.datatype} tensor of shape "
                    f"{spec.shape}",
                    field=spec.name,
                )
        return {**self._defaults, **received}


def kserve_models(runners: dict[str, ModelRunner]) -> dict[str, KServeModel]:
    models = {key: KServeModel(runner) for key, runner in runners.items()}
    for model in models.values():  # issue 13: every version of a name, highest first
        model.versions = [m.version for m in models.values() if m.name == model.name]
        model.versions.sort(key=version_key, reverse=True)
    return models


def find(models: dict[str, KServeModel], name: str, version: str) -> KServeModel:
    """The model a request names (its highest version unless `version` is given), ready to
    take a KServe call, or the error to answer."""
    model = served(models, name, version, lambda m: m.version)
    model.check()
    return model
