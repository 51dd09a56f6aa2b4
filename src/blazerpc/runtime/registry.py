"""The models an app serves, each with its signature read once at decoration time."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import ConfigurationError, ModelNotFoundError
from ..types import Signature, Tensor, signature_of


def rpc_name(model_name: str) -> str:
    """`"sentiment-v2"` -> `"SentimentV2"`, as the reference implementation names its RPCs."""
    return "".join(part.capitalize() for part in model_name.replace("-", "_").split("_"))


@dataclass(frozen=True)
class BatchOverrides:
    """A model's own batching settings (`@app.model(..., max_batch_size=8)`); None keeps the
    app's."""

    max_batch_size: int | None = None
    batch_timeout_ms: float | None = None
    max_queue_size: int | None = None
    max_concurrent_batches: int | None = None

    def given(self) -> dict[str, Any]:
        """The settings this model overrides, by name."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class ModelEntry:
    """One registered model: what it is called, how it is invoked, and its wire signature."""

    name: str
    version: str
    func: Callable[..., Any]
    streaming: bool
    signature: Signature
    batched: bool = False
    batching: BatchOverrides = field(default_factory=BatchOverrides)
    openai: Any = None  # an OpenAIModel when served on the OpenAI-compatible endpoints

    @property
    def client_streaming(self) -> bool:
        """The model takes a stream of requests (with `streaming`, the RPC is bidirectional)."""
        return self.signature.streamed is not None

    @property
    def rpc(self) -> str:
        return rpc_name(self.name)

    @property
    def method(self) -> str:
        """The full gRPC method path, e.g. `/blazerpc.InferenceService/PredictEcho`."""
        return f"/blazerpc.InferenceService/Predict{self.rpc}"

    @property
    def stacks_tensors(self) -> bool:
        """Every input and the output are tensors whose leading axis has the same name (e.g.
        "batch"), so requests can be concatenated along it and the result split back by rows."""
        specs = [f.type for f in self.signature.params] + [self.signature.result.type]
        leading = {s.dims[0] for s in specs if isinstance(s, Tensor) and s.dims}
        symbolic = all(isinstance(s, Tensor) and s.leading_symbolic for s in specs)
        return len(specs) >= 2 and symbolic and len(leading) == 1


class ModelRegistry:
    """Models by name; registration checks everything a request would otherwise trip over."""

    def __init__(self) -> None:
        self._models: dict[str, ModelEntry] = {}

    def register(
        self,
        name: str,
        func: Callable[..., Any],
        *,
        version: str = "1",
        streaming: bool = False,
        batched: bool = False,
        is_injected: Callable[[inspect.Parameter, Any], Any] | None = None,
        batching: BatchOverrides | None = None,
    ) -> ModelEntry:
        """Check and record a model, with its own batching overrides if any."""
        where = f"model '{name}' ({getattr(func, '__qualname__', func)})"
        rpc = rpc_name(name)
        if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", rpc):
            raise ConfigurationError(
                f"{where}: name must be letters and digits separated by '-' or '_', "
                "starting with a letter"
            )
        is_generator = inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func)
        if streaming and not is_generator:
            raise ConfigurationError(
                f"{where}: streaming=True needs a generator; 'yield' each chunk "
                "(async def ... yield, or def ... yield)"
            )
        if is_generator and not streaming:
            raise ConfigurationError(
                f"{where}: is a generator; register it with @app.model('{name}', streaming=True)"
            )
        if batched and streaming:
            raise ConfigurationError(
                f"{where}: streaming models are never batched; drop batched=True"
            )
        for other in self._models.values():
            if other.rpc == rpc:
                raise ConfigurationError(
                    f"{where}: its RPC Predict{rpc} is already taken by model '{other.name}'"
                )
        signature = signature_of(
            func, streaming=streaming, batched=batched, is_injected=is_injected
        )
        entry = ModelEntry(
            name, str(version), func, streaming, signature, batched, batching or BatchOverrides()
        )
        self._models[name] = entry
        return entry

    def get(self, name: str) -> ModelEntry:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFoundError(f"no model named '{name}'") from None

    def list_models(self) -> list[ModelEntry]:
        return list(self._models.values())

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)
