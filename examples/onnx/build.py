"""Train a scikit-learn classifier on the iris flowers and convert it to ONNX with skl2onnx.

python examples/onnx/build.py examples/onnx/iris.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def build(path: Path) -> Path:
    """Write the converted classifier to `path`. `zipmap: False` gives the probabilities as a
    tensor (the default, a list of dicts, has no tensor form to serve)."""
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    model = LogisticRegression(max_iter=500).fit(x, y)
    onx = to_onnx(model, x[:1], options={id(model): {"zipmap": False}})
    path.write_bytes(onx.SerializeToString())
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path, nargs="?", default=Path(__file__).with_name("iris.onnx"))
    print(f"wrote {build(parser.parse_args().path)}")
