"""`blazerpc.contrib.onnx` on real ONNX files, built here: a scikit-learn classifier converted
with skl2onnx and a torch network exported with torch.onnx. Fields come from the graph."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from blazerpc import BlazeApp, BlazeClient
from blazerpc.exceptions import ConfigurationError, ValidationError

from ..processes import blaze_serve, wait_serving
from ..support import free_port, running


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x.astype(np.float32), y)
    onx = to_onnx(model, x[:1].astype(np.float32), options={id(model): {"zipmap": False}})
    path = tmp_path_factory.mktemp("onnx") / "iris-classifier.onnx"
    path.write_bytes(onx.SerializeToString())
    return path, model


@pytest.fixture(scope="module")
def torch_net(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    path = tmp_path_factory.mktemp("onnx") / "net.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 4),),
        str(path),
        input_names=["input.1"],  # not a field name: served as "input_1"
        output_names=["logits"],
        dynamic_axes={"input.1": {0: "n"}, "logits": {0: "n"}},
        dynamo=False,
    )
    return path, net


def test_blaze_serve_serves_a_converted_sklearn_model_with_no_code(iris) -> None:
    path, model = iris
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
    port = free_port()
    # CUDA first, as on a GPU machine; this CPU build of ONNX Runtime skips it.
    env = {"BLAZERPC_ONNX_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider"}
    with blaze_serve("--port", str(port), app=str(path), env=env) as proc:
        wait_serving(port, proc, timeout=60)

        async def ask():
            async with BlazeClient("127.0.0.1", port) as client:
                return await client.predict("iris-classifier", X=x)

        got = asyncio.run(ask())
    assert "iris-classifier.onnx: ONNX Runtime on CPUExecutionProvider" in proc.stdout.read()
    assert got.label.tolist() == model.predict(x).tolist()  # type: ignore[attr-defined]
    np.testing.assert_allclose(got.probabilities, model.predict_proba(x), rtol=1e-4, atol=1e-5)  # type: ignore[attr-defined]


def test_the_schema_comes_from_the_graph(iris, torch_net) -> None:
    from blazerpc.contrib.onnx import serve_onnx

    app = BlazeApp()
    serve_onnx(app, iris[0])
    serve_onnx(app, torch_net[0], name="net")
    iris_entry, net_entry = app.registry.get("iris-classifier"), app.registry.get("net")
    (x,) = iris_entry.signature.params
    assert (x.name, x.type.dtype, x.type.dims) == ("X", np.dtype(np.float32), ("batch", 4))
    (features,) = net_entry.signature.params
    assert (features.name, features.type.dims) == ("input_1", ("batch", 4))
    assert net_entry.signature.result.type.dims == ("batch", 3)
    assert app.batch_settings(net_entry) is not None  # one output, dynamic leading dims
    assert app.batch_settings(iris_entry) is None  # two outputs: call by call
    assert "message IrisClassifierOutputs" in app.proto()


async def test_a_torch_export_batches_concurrent_requests_and_answers_each(torch_net) -> None:
    import torch

    from blazerpc.contrib.onnx import serve_onnx

    path, net = torch_net
    app = BlazeApp(batch_timeout_ms=20)
    serve_onnx(app, path, name="net", providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(rows, 4)).astype(np.float32) for rows in (1, 3, 2, 5, 1, 4)]
    async with running(app) as server, BlazeClient("127.0.0.1", server.port) as client:
        got = await asyncio.gather(*(client.predict("net", input_1=x) for x in inputs))
        with pytest.raises(ValidationError, match=r"field 'input_1': dimension 1 must be 4"):
            await client.predict("net", input_1=np.zeros((2, 5), np.float32))
        stats = server.stats()["net"]
    with torch.no_grad():
        for x, y in zip(inputs, got, strict=True):
            np.testing.assert_allclose(y, net(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    assert stats.requests == len(inputs)  # through the batcher, answered row by row


def test_outputs_can_be_chosen_and_unknown_ones_are_named(iris) -> None:
    from blazerpc.contrib.onnx import serve_onnx

    app = BlazeApp()
    serve_onnx(app, iris[0], outputs=["probabilities"])
    entry = app.registry.get("iris-classifier")
    assert entry.signature.result.type.dims == ("batch", 3)
    assert app.batch_settings(entry) is not None  # one output left: batches
    with pytest.raises(ConfigurationError, match="no output named scores; its outputs are"):
        serve_onnx(BlazeApp(), iris[0], outputs=["scores"])


def test_an_unknown_execution_provider_is_named(iris) -> None:
    from blazerpc.contrib.onnx import serve_onnx

    with pytest.raises(ConfigurationError, match="unknown execution provider CUDAProvider;"):
        serve_onnx(BlazeApp(), iris[0], providers=["CUDAProvider"])


def test_graph_names_become_field_names(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from blazerpc.contrib.onnx import serve_onnx

    names = ["in", "0.features", "x", "x_"]
    graph = helper.make_graph(
        [helper.make_node("Sum", names, ["sum"])],
        "names",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 2]) for n in names],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["n", 2])],
    )
    path = tmp_path / "names.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    app = BlazeApp()
    serve_onnx(app, path)
    fields = [p.name for p in app.registry.get("names").signature.params]
    assert fields == ["in_", "x_0_features", "x", "x_2"]  # "x_" is "x" stripped, then taken
    predict = app.registry.get("names").func
    ones = np.ones((1, 2), np.float32)
    assert predict(**dict.fromkeys(fields, ones)).tolist() == [[4.0, 4.0]]


def test_a_string_input_is_refused_with_its_name(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from blazerpc.contrib.onnx import serve_onnx

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, [None])],
    )
    path = tmp_path / "strings.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(ConfigurationError, match=r"input 'text' is of type tensor\(string\)"):
        serve_onnx(BlazeApp(), path)


def test_blaze_serve_names_a_missing_file(tmp_path: Path) -> None:
    port = free_port()
    with blaze_serve("--port", str(port), app=str(tmp_path / "absent.onnx")) as proc:
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "no ONNX model at" in out


async def test_an_onnx_model_answers_tritons_kserve_client(torch_net) -> None:
    import torch
    import tritonclient.http as httpclient

    from blazerpc.contrib.onnx import serve_onnx

    path, net = torch_net
    app = BlazeApp()
    serve_onnx(app, path, name="net")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)

    def infer(port: int) -> tuple[dict, np.ndarray]:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            features = httpclient.InferInput("input_1", [2, 4], "FP32")
            features.set_data_from_numpy(x)
            return client.get_model_metadata("net"), client.infer("net", [features]).as_numpy(
                "result"
            )
        finally:
            client.close()

    async with running(app, http=True) as server:
        metadata, got = await asyncio.to_thread(infer, server.http_port)
    assert metadata["inputs"] == [{"name": "input_1", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "result", "datatype": "FP32", "shape": [-1, 3]}]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
