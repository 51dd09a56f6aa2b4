"""Serving ONNX models with ONNX Runtime: `serve_onnx` registers an `.onnx` file as a model
whose signature comes from the graph (no hand-written annotations), and `blaze serve
model.onnx` serves one with nothing else. `ONNXModel` is 2.2.1's session wrapper.
Needs `pip install 'blazerpc[onnx]'`."""

from __future__ import annotations

import functools
import inspect
import keyword
import logging
import os
import re
from dataclasses import make_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np

from ..exceptions import ConfigurationError
from ..runtime.registry import rpc_name
from ..types import Tensor, TensorInput
from . import require, thread_share

if TYPE_CHECKING:
    from ..app import BlazeApp

# `blaze serve model.onnx` serves this module's `app`: the model at MODEL_ENV's path, with the
# execution providers in PROVIDERS_ENV, comma-separated, in order of preference (default:
# CPUExecutionProvider). Worker processes inherit both.
MODEL_ENV = "BLAZERPC_ONNX_MODEL"
PROVIDERS_ENV = "BLAZERPC_ONNX_PROVIDERS"
logger = logging.getLogger("blazerpc.onnx")
# The name every dynamic leading dimension takes, so requests batch along it.
BATCH = "batch"

# ONNX Runtime's type names ("tensor(float)") as numpy dtypes; others (strings, sequences,
# maps) have no tensor on the wire.
_DTYPES = {
    "float": np.float32,
    "double": np.float64,
    "float16": np.float16,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
}


class ONNXModel:
    """An ONNX Runtime session over `model_path`, on the CPU unless `providers` say otherwise.

    `model = ONNXModel("classifier.onnx")` once at import, then `model.predict(x)[0]` in the
    function registered with `@app.model`.
    """

    def __init__(
        self,
        model_path: str | Path,
        providers: list[str] | None = None,
        session_options: Any = None,
    ) -> None:
        ort = require("onnxruntime", "onnx")
        self._session = ort.InferenceSession(
            str(model_path),
            sess_options=session_options,
            providers=providers or ["CPUExecutionProvider"],
        )
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]

    @property
    def session(self) -> Any:
        """The `onnxruntime.InferenceSession`."""
        return self._session

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def predict(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Run the model on its inputs, in the model's input order; every output, in order."""
        if len(inputs) != len(self._inputs):
            raise ValueError(
                f"the model takes {len(self._inputs)} inputs ({', '.join(self._inputs)}), "
                f"got {len(inputs)}"
            )
        outputs: list[np.ndarray] = self._session.run(
            self._outputs, dict(zip(self._inputs, inputs, strict=True))
        )
        return outputs

    def predict_dict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on inputs by name; outputs by name."""
        return dict(zip(self._outputs, self._session.run(self._outputs, inputs), strict=True))


def _identifier(name: str, taken: set[str]) -> str:
    """An ONNX name ("input.1", "float_input") as a field name: letters, digits and '_',
    starting with a letter, not a Python keyword, and not one already given."""
    field = re.sub(r"\W", "_", name).strip("_") or "x"
    if not field[0].isalpha():
        field = "x_" + field
    if keyword.iskeyword(field):  # a keyword cannot be a parameter ("in", "from")
        field += "_"
    base, n = field, 2
    while field in taken:
        field, n = f"{base}_{n}", n + 1
    taken.add(field)
    return field


def _spec(arg: Any, batches: bool, where: str) -> Any:
    """One graph input or output as a tensor annotation: its dtype, fixed sizes, and named
    dims (an unnamed dynamic one named after the tensor and axis)."""
    kind = re.fullmatch(r"tensor\((\w+)\)", arg.type)
    if kind is None or kind.group(1) not in _DTYPES:
        raise ConfigurationError(
            f"{where} '{arg.name}' is of type {arg.type}; only numeric and bool tensors can be "
            "served (a scikit-learn classifier converted with skl2onnx: pass "
            "options={id(model): {'zipmap': False}} to get probabilities as a tensor)"
        )
    dtype = _DTYPES[kind.group(1)]
    if arg.shape is None:  # rank unknown to the graph: unchecked
        return Annotated[np.ndarray, Tensor(np.dtype(dtype), None)]
    dims: list[int | str] = []
    for axis, dim in enumerate(arg.shape):
        if isinstance(dim, int) and dim >= 0:
            dims.append(dim)
        elif axis == 0 and batches:
            dims.append(BATCH)
        else:
            dims.append(dim if isinstance(dim, str) and dim else f"{arg.name}_{axis}")
    return TensorInput.__class_getitem__((dtype, *dims))


def _leading_dynamic(arg: Any) -> bool:
    return bool(arg.shape) and not (isinstance(arg.shape[0], int) and arg.shape[0] >= 0)


def serve_onnx(
    app: BlazeApp,
    model_path: str | Path,
    *,
    name: str | None = None,
    version: str = "1",
    providers: list[str] | None = None,
    outputs: list[str] | None = None,
) -> ONNXModel:
    """Register the ONNX model at `model_path` on `app` as model `name` (default: the file's
    stem), its fields read from the graph: each input a tensor parameter, and the output a
    tensor result (several outputs: a message with one field each, served call by call).

    When every input and output has a dynamic leading dimension, it is named "batch" and
    concurrent requests are batched along it (`BlazeApp(enable_batching=False)` turns that
    off). `providers`: ONNX Runtime's execution providers, in order of preference (default:
    the CPU). `outputs`: the graph outputs to return (default: all). The session's threads
    are this process's cores divided between `--workers`.
    """
    ort = require("onnxruntime", "onnx")
    path = Path(model_path)
    unknown = [p for p in providers or () if p not in ort.get_all_providers()]
    if unknown:
        raise ConfigurationError(
            f"{path.name}: unknown execution provider {', '.join(unknown)}; this onnxruntime "
            f"has {', '.join(ort.get_available_providers())}"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = thread_share()
    model = ONNXModel(path, providers, options)
    session = model.session
    # A provider that exists but is not available here (CUDA on a CPU build) is skipped by
    # ONNX Runtime, in order: say which one runs the model, once serving starts.
    running_on = f"{path.name}: ONNX Runtime on {', '.join(session.get_providers())}"
    app.on_startup(lambda: logger.info(running_on))
    graph_inputs = session.get_inputs()
    graph_outputs = [o for o in session.get_outputs() if outputs is None or o.name in outputs]
    missing = set(outputs or ()) - {o.name for o in graph_outputs}
    if missing or not graph_outputs:
        raise ConfigurationError(
            f"{path.name}: no output named {', '.join(sorted(missing)) or '(none given)'}; "
            f"its outputs are {', '.join(model.output_names)}"
        )
    name = name or _model_name(path)
    batches = all(_leading_dynamic(a) for a in [*graph_inputs, *graph_outputs])
    taken: set[str] = set()
    fields = {_identifier(i.name, taken): i for i in graph_inputs}
    annotations = {f: _spec(i, batches, f"{path.name}: input") for f, i in fields.items()}
    output_names = [o.name for o in graph_outputs]
    run = session.run
    feeds = list(fields.items())
    if len(graph_outputs) == 1:
        annotations["return"] = _spec(graph_outputs[0], batches, f"{path.name}: output")

        def predict(**inputs: np.ndarray) -> Any:
            return run(output_names, {i.name: inputs[f] for f, i in feeds})[0]

    else:
        out_taken: set[str] = set()
        out_fields = [_identifier(o.name, out_taken) for o in graph_outputs]
        result = make_dataclass(
            f"{rpc_name(name)}Outputs",
            [
                (f, _spec(o, batches, f"{path.name}: output"))
                for f, o in zip(out_fields, graph_outputs, strict=True)
            ],
        )
        annotations["return"] = result

        def predict(**inputs: np.ndarray) -> Any:
            values = run(output_names, {i.name: inputs[f] for f, i in feeds})
            return result(*values)

    # inspect.signature reads `__signature__`; a function's __dict__ holds it as an attribute.
    predict.__dict__["__signature__"] = inspect.Signature(
        [inspect.Parameter(f, inspect.Parameter.KEYWORD_ONLY) for f in fields]
    )
    predict.__annotations__ = annotations
    predict.__qualname__ = predict.__name__ = f"onnx:{path.name}"
    app.model(name, version)(predict)
    return model


def _model_name(path: Path) -> str:
    """A file's stem as a model name: letters and digits joined by '-', starting with a
    letter ("resnet50-v1.7.onnx" -> "resnet50-v1-7")."""
    name = "-".join(re.findall(r"[A-Za-z0-9]+", path.stem)).lstrip("0123456789-")
    return name or "model"


@functools.cache
def onnx_app(model_path: str | Path) -> BlazeApp:
    """An app serving one ONNX model, as `blaze serve model.onnx` does (once per path and
    process); its execution providers come from the BLAZERPC_ONNX_PROVIDERS environment
    variable, comma-separated."""
    from ..app import BlazeApp

    path = Path(model_path)
    if not path.is_file():
        raise ConfigurationError(f"no ONNX model at {path}")
    providers = [p for p in os.environ.get(PROVIDERS_ENV, "").split(",") if p.strip()]
    app = BlazeApp(name=_model_name(path))
    serve_onnx(app, path, providers=[p.strip() for p in providers] or None)
    return app


def __getattr__(name: str) -> Any:
    """`blazerpc.contrib.onnx:app`, the app `blaze serve model.onnx` loads in each process."""
    if name == "app" and MODEL_ENV in os.environ:
        return onnx_app(Path(os.environ[MODEL_ENV]))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
