"""ONNX Runtime helper: `ONNXModel`, an inference session with `predict` and `predict_dict`.
Needs `pip install 'blazerpc[onnx]'`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import require


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
