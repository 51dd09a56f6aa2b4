"""Iris classifier: the smallest complete BlazeRPC app.

A LogisticRegression is trained at import time on scikit-learn's bundled iris data
(no download, well under a second), then served two ways:

* ``iris`` takes a tensor of shape (batch, 4) and returns one class index per row:
  the shape to use from another program that already holds arrays.
* ``iris-species`` takes the four measurements as named scalar fields and returns the
  species name: the shape to use when a caller has one flower and no numpy.

Serve it from the repository root::

    blaze serve examples.iris.app:app --host 127.0.0.1 --port 50051
"""

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from blazerpc import BlazeApp, TensorInput, TensorOutput

_iris = load_iris()
SPECIES: list[str] = [str(name) for name in _iris.target_names]  # setosa, versicolor, virginica
_classifier = LogisticRegression(max_iter=1000).fit(_iris.data, _iris.target)

app = BlazeApp(name="iris")


@app.model("iris")
def iris(
    features: TensorInput[np.float32, "batch", 4],
) -> TensorOutput[np.int64, "batch"]:
    """Class index (0, 1, 2) for each row of measurements in cm.

    A plain ``def``: scikit-learn is CPU-bound, so BlazeRPC runs it in its thread pool
    instead of blocking the event loop.
    """
    return _classifier.predict(np.asarray(features, dtype=np.float64)).astype(np.int64)


@app.model("iris-species")
def iris_species(
    sepal_length: float, sepal_width: float, petal_length: float, petal_width: float
) -> str:
    """Species name for one flower; each measurement (cm) is its own field in the request."""
    row = np.array([[sepal_length, sepal_width, petal_length, petal_width]])
    return SPECIES[int(_classifier.predict(row)[0])]
