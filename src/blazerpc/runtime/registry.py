"""The models an app serves, each with its signature read once at decoration time."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..exceptions import ConfigurationError, ModelNotFoundError
from ..types import Signature, Tensor, signature_of


def rpc_name(model_name: str) -> str:
    """`"sentiment-v2"` -> `"SentimentV2"`, as the reference implementation names its RPCs."""
    return "".join(part.capitalize() for part in model_name.replace("-", "_").split("_"))


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Order versions by number part by part ("10" > "9", "1.10" > "1.9"); text parts after."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[._-]", version))


def method_name(model: str) -> str:
    """The native RPC of `name` (its highest version) or `name@version` (that version, when a
    name has several): `PredictSentiment`, `PredictSentimentV2`, `PredictSentimentV1_5`."""
    name, _, version = model.partition("@")
    suffix = "V" + re.sub(r"[.-]", "_", version) if version else ""
    return f"Predict{rpc_name(name)}{suffix}"


T = TypeVar("T")


def served(models: Mapping[str, T], name: str, version: str, version_of: Callable[[T], str]) -> T:
    """From a mapping keyed as `ModelEntry.key`: the model `name` in `version` ("" for the
    highest), or ModelNotFoundError naming the model (not the others: callers decide whether
    to list what is served)."""
    model = models.get(name)
    if model is not None and version and version_of(model) != version:
        model = models.get(f"{name}@{version}")
    if model is None:
        if version and name in models:
            message = f"model '{name}' has no version '{version}'"
        else:
            message = f"no model named '{name}'"
        raise ModelNotFoundError(name, version or "1", message=message)
    return model


@dataclass(frozen=True)
class BatchOverrides:
    """A model's own batching settings (`@app.model(..., max_batch_size=8)`); None keeps the
    app's."""

    max_batch_size: int | None = None
    batch_timeout_ms: float | None = None
    max_queue_size: int | None = None
    max_concurrent_batches: int | None = None
    max_batch_tokens: int | None = None

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
    # A number per request (e.g. its token count) that batches group by; see batcher.py.
    batch_key: Callable[..., Any] | None = None
    batch_key_params: tuple[str, ...] = ()
    openai: Any = None  # an OpenAIModel when served on the OpenAI-compatible endpoints
    # Set by the registry from the versions registered under this name: the highest version
    # is `name` and `Predict<Name>` (plus `Predict<Name>V<version>` as an alias when there
    # are several); another version is `name@version` and `Predict<Name>V<version>`.
    rpc: str = ""
    key: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def client_streaming(self) -> bool:
        """The model takes a stream of requests (with `streaming`, the RPC is bidirectional)."""
        return self.signature.streamed is not None

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


def _batch_key_params(
    where: str, entry: ModelEntry, batch_key: Callable[..., Any]
) -> tuple[str, ...]:
    """The model parameters `batch_key` takes, by name: checked now, not on the first request."""
    if not (entry.batched or entry.stacks_tensors):
        raise ConfigurationError(
            f"{where}: batch_key needs a model that batches (batched=True, or tensors with a "
            "named leading axis)"
        )
    if not callable(batch_key):
        raise ConfigurationError(f"{where}: batch_key must be a function, got {batch_key!r}")
    params = [f.name for f in entry.signature.params]
    takes = inspect.signature(batch_key).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in takes):
        return tuple(params)
    names = tuple(p.name for p in takes)
    unknown = [n for n in names if n not in params]
    if unknown or not names:
        raise ConfigurationError(
            f"{where}: batch_key takes {list(names)}; it must take some of the model's "
            f"parameters {params}, by name, and return a number such as a token count"
        )
    return names


# Every batching setting, and what a batcher can work with: a size, queue or slot count of
# zero would refuse or hang every request, and the wait is a duration.
_COUNTS = ("max_batch_size", "max_queue_size", "max_concurrent_batches", "max_batch_tokens")


def check_batching(where: str, settings: dict[str, Any]) -> None:
    """Raise ConfigurationError, naming `where` and the setting, for a batching setting no
    batcher can work with: counts must be positive ints, batch_timeout_ms a number >= 0."""
    for name, value in settings.items():
        if name in _COUNTS:
            ok, what = isinstance(value, int) and value >= 1, "a positive int"
        else:
            ok = isinstance(value, (int, float)) and 0 <= value < math.inf
            what = "a number of milliseconds >= 0"
        if isinstance(value, bool) or not ok:
            raise ConfigurationError(f"{where}: {name} must be {what}, got {value!r}")


def _check_token_budget(where: str, entry: ModelEntry) -> None:
    """max_batch_tokens counts batch_key units, so it needs a batch_key."""
    if entry.batching.max_batch_tokens is not None and entry.batch_key is None:
        raise ConfigurationError(
            f"{where}: max_batch_tokens needs a batch_key (the budget counts its units: "
            "requests x the longest key per model call)"
        )


class ModelRegistry:
    """Models by name; registration checks everything a request would otherwise trip over."""

    def __init__(self, float64: bool = False) -> None:
        self._models: dict[tuple[str, str], ModelEntry] = {}
        # How Python floats travel (BlazeApp(float64=...)); here so that a client built from
        # `registry=app.registry` encodes them as the server does.
        self.float64 = float64

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
        batch_key: Callable[..., Any] | None = None,
    ) -> ModelEntry:
        """Check and record a model, with its own batching overrides if any."""
        where = f"model '{name}' ({getattr(func, '__qualname__', func)})"
        rpc, version = rpc_name(name), str(version)
        if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", rpc):
            raise ConfigurationError(
                f"{where}: name must be letters and digits separated by '-' or '_', "
                "starting with a letter"
            )
        if not re.fullmatch(r"[A-Za-z0-9]+([._-][A-Za-z0-9]+)*", version):
            raise ConfigurationError(
                f"{where}: version {version!r} must be letters and digits, optionally "
                "separated by '.', '-' or '_' (e.g. '2' or '1.5')"
            )
        if (name, version) in self._models:
            raise ConfigurationError(f"{where}: version '{version}' is already registered")
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
            if other.name != name and rpc_name(other.name) == rpc:
                raise ConfigurationError(
                    f"{where}: its RPC Predict{rpc} is already taken by model '{other.name}'"
                )
        signature = signature_of(
            func, streaming=streaming, batched=batched, is_injected=is_injected
        )
        entry = ModelEntry(
            name, version, func, streaming, signature, batched, batching or BatchOverrides()
        )
        if batch_key is not None:
            entry.batch_key = batch_key
            entry.batch_key_params = _batch_key_params(where, entry, batch_key)
        check_batching(where, entry.batching.given())
        _check_token_budget(where, entry)
        self._models[(name, version)] = entry
        try:
            self._name_versions(name)
        except ConfigurationError:
            del self._models[(name, version)]
            self._name_versions(name)
            raise
        return entry

    def _name_versions(self, name: str) -> None:
        """Give each version of `name` its key and RPC names; refuse an RPC name taken twice."""
        versions = sorted(
            (e for e in self._models.values() if e.name == name),
            key=lambda e: version_key(e.version),
            reverse=True,
        )
        several = len(versions) > 1
        for i, entry in enumerate(versions):
            versioned = method_name(f"{name}@{entry.version}").removeprefix("Predict")
            if i == 0:
                entry.rpc, entry.key = rpc_name(name), name
                entry.aliases = (versioned,) if several else ()
            else:
                entry.rpc, entry.key, entry.aliases = versioned, f"{name}@{entry.version}", ()
        taken: dict[str, ModelEntry] = {}
        for entry in self._models.values():
            for rpc in (entry.rpc, *entry.aliases):
                other = taken.setdefault(rpc, entry)
                if other is not entry:
                    raise ConfigurationError(
                        f"model '{entry.name}' version '{entry.version}': its RPC Predict{rpc} "
                        f"is already taken by model '{other.name}' version '{other.version}'"
                    )

    def get(self, name: str, version: str | None = None) -> ModelEntry:
        """The model `name` in `version`, or its highest version when None."""
        return served(
            {e.key: e for e in self._models.values()}, name, version or "", lambda e: e.version
        )

    def list_models(self) -> list[ModelEntry]:
        return list(self._models.values())

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)
