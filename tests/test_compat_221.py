"""A blazerpc 2.2.1 user switches without changing a line.

The app (tests/compat221/app.py) and the client script (tests/compat221/client.py) use only
2.2.1's documented API. They run here against this server, and, when `blazerpc==2.2.1` can be
installed into a venv of its own, with 2.2.1's own client and server too: all four pairings
must print the same answers. The wire contract is pinned independently of that venv: the
.proto below is what 2.2.1's `blaze proto` writes for the app (checked against the real 2.2.1
when it is installed); stubs protoc generates from it call this server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import venv
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pytest

from blazerpc import BlazeApp

from .compat221.app import app as compat_app
from .processes import BLAZE, ROOT, blaze_serve, wait_serving, wait_until
from .support import free_port

# What 2.2.1's `blaze proto tests.compat221.app:app` writes (2.2.1 maps Python float to
# protobuf float). test_real_221_exports_the_pinned_proto checks this against 2.2.1 itself.
PROTO_221 = """\
syntax = "proto3";

package blazerpc;

message TensorProto {
  repeated int64 shape = 1;
  string dtype = 2;
  bytes data = 3;
}

message EchoRequest {
  string text = 1;
}

message EchoResponse {
  string result = 1;
}

message AddRequest {
  float a = 1;
  float b = 2;
}

message AddResponse {
  float result = 1;
}

message LengthsRequest {
  repeated string text = 1;
}

message LengthsResponse {
  repeated float result = 1;
}

message ProjectRequest {
  TensorProto features = 1;
}

message ProjectResponse {
  TensorProto result = 1;
}

message WordsRequest {
  string sentence = 1;
}

message WordsResponse {
  string result = 1;
}

message WhoamiRequest {
  string text = 1;
}

message WhoamiResponse {
  string result = 1;
}

message GreetRequest {
}

message GreetResponse {
  string result = 1;
}

service InferenceService {
  rpc PredictEcho(EchoRequest) returns (EchoResponse);
  rpc PredictAdd(AddRequest) returns (AddResponse);
  rpc PredictLengths(LengthsRequest) returns (LengthsResponse);
  rpc PredictProject(ProjectRequest) returns (ProjectResponse);
  rpc PredictWords(WordsRequest) returns (stream WordsResponse);
  rpc PredictWhoami(WhoamiRequest) returns (WhoamiResponse);
  rpc PredictGreet(GreetRequest) returns (GreetResponse);
}
"""

# What the client script prints, whichever client and server: the app's answers.
EXPECTED = {
    "echo": "HELLO",
    "add": 0.75,
    "lengths": [0.5, 1.5],
    "words": ["to", "be", "or", "not"],
    "whoami": "hi via /blazerpc.InferenceService/PredictWhoami",
    "echo_again": "BYE",
    "rpc_echo": "HELLO",
    "rpc_add": 0.75,
    "rpc_project": ["float32", [[60.0, 70.0, 80.0], [9.0, 10.0, 11.0]]],
    "rpc_words": ["to", "be", "or", "not"],
    "rpc_whoami": "hi via predict.whoami",
    "greet": "hello auth=no",
    "rpc_greet": "hello auth=no",
}


def without_header(proto: str) -> str:
    lines = [line for line in proto.splitlines() if not line.startswith("//")]
    return "\n".join(lines).strip() + "\n"


def test_our_proto_is_221s_proto() -> None:
    assert without_header(compat_app.proto()) == PROTO_221


def test_float64_setting_makes_floats_double() -> None:
    app = BlazeApp(float64=True)

    @app.model("add")
    async def add(a: float, b: float) -> float:
        return a + b

    assert "double a = 1;" in app.proto()
    assert "double result = 1;" in app.proto()
    assert "float" not in without_header(app.proto()).replace("TensorProto", "")


# --- stubs protoc generates from 2.2.1's .proto, calling this server ---------------------------

STUB_CLIENT = """
import json, sys
import grpc
import numpy as np
import compat_service_pb2 as pb, compat_service_pb2_grpc as rpc

with grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}") as channel:
    stub = rpc.InferenceServiceStub(channel)
    features = np.array([[1, 2, 3, 4]], np.float32)
    tensor = pb.TensorProto(shape=[1, 4], dtype="float", data=features.tobytes())
    projected = stub.PredictProject(pb.ProjectRequest(features=tensor)).result
    print(json.dumps({
        "add": stub.PredictAdd(pb.AddRequest(a=0.1, b=0.2)).result,
        "third": stub.PredictAdd(pb.AddRequest(a=1 / 3, b=0)).result,
        "echo": stub.PredictEcho(pb.EchoRequest(text="hi")).result,
        "lengths": list(stub.PredictLengths(pb.LengthsRequest(text=["ab", "abc"])).result),
        "words": [c.result for c in stub.PredictWords(pb.WordsRequest(sentence="a b"))],
        "project": [list(projected.shape), projected.dtype,
                    np.frombuffer(projected.data, np.float32).tolist()],
    }))
"""


def test_protoc_stubs_of_221s_proto_call_our_server(tmp_path: Path) -> None:
    (tmp_path / "compat_service.proto").write_text(PROTO_221)
    protoc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{tmp_path}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(tmp_path / "compat_service.proto"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert protoc.returncode == 0, protoc.stderr
    (tmp_path / "stub_client.py").write_text(STUB_CLIENT)
    port = free_port()
    with blaze_serve("--port", str(port), app="tests.compat221.app:app") as server:
        wait_serving(port, server)
        run = subprocess.run(
            [sys.executable, "stub_client.py", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    # 32-bit floats both ways, as 2.2.1's contract says: never 0.0 from a width mismatch.
    f32 = np.float32
    assert got["add"] == float(f32(f32(0.1) + f32(0.2)))
    assert got["third"] == float(f32(1 / 3))
    assert got["echo"] == "HI"
    assert got["lengths"] == [0.5, 0.75]
    assert got["words"] == ["a", "b"]
    assert got["project"] == [[1, 3], "float", [60.0, 70.0, 80.0]]


# --- the real blazerpc 2.2.1, in a venv of its own ----------------------------------------------

VENV_221 = ROOT / ".venv-blazerpc221"


@pytest.fixture(scope="session")
def python_221() -> Path:
    """Python of a venv holding blazerpc 2.2.1 (kept between runs; built on first use)."""
    python = VENV_221 / "bin" / "python"
    ready = VENV_221 / ".installed"
    if not ready.exists():
        venv.create(VENV_221, with_pip=True, clear=True)
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "blazerpc[jsonrpc]==2.2.1"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if pip.returncode != 0:
            # Needs the package index; the pinned-.proto tests above cover the wire without it.
            pytest.skip(f"cannot install blazerpc==2.2.1 from the package index: {pip.stderr}")
        ready.touch()
    return python


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def serve_221(python: Path, grpc_port: int, http_port: int) -> Iterator[subprocess.Popen]:
    """2.2.1's own `blaze serve --transport both` (its health service is broken: wait for
    the ports instead)."""
    proc = subprocess.Popen(
        [
            str(python.with_name("blaze")),
            "serve",
            "tests.compat221.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--transport",
            "both",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(lambda: listening(grpc_port) and listening(http_port), what="2.2.1 serving")
        yield proc
    finally:
        proc.kill()
        proc.wait()
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def run_client(python: Path | str, grpc_port: int, http_port: int, *options: str) -> dict:
    run = subprocess.run(
        [str(python), "-m", "tests.compat221.client", str(grpc_port), str(http_port), *options],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_all_four_client_server_pairings_answer_alike(python_221: Path) -> None:
    ours_grpc, ours_http, old_grpc, old_http = (free_port() for _ in range(4))
    with (
        blaze_serve(
            "--port",
            str(ours_grpc),
            "--http-port",
            str(ours_http),
            "--transport",
            "both",
            app="tests.compat221.app:app",
        ) as ours,
        serve_221(python_221, old_grpc, old_http),
    ):
        wait_serving(ours_grpc, ours)
        for client in (python_221, sys.executable):
            for grpc_port, http_port in ((ours_grpc, ours_http), (old_grpc, old_http)):
                # Ours calling 2.2.1's server skips gRPC health, which 2.2.1 answers UNKNOWN.
                old = client == sys.executable and grpc_port == old_grpc
                options = ("--no-health-check",) if old else ()
                got = run_client(client, grpc_port, http_port, *options)
                assert got == EXPECTED, (client, grpc_port)


def test_real_221_exports_the_pinned_proto(python_221: Path, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            str(python_221.with_name("blaze")),
            "proto",
            "tests.compat221.app:app",
            "--output-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert without_header((tmp_path / "blaze_service.proto").read_text()) == PROTO_221


# --- JSON-RPC as 2.2.1 serves it -----------------------------------------------------------------


def test_transport_jsonrpc_serves_http_only_with_health() -> None:
    import urllib.request

    grpc_port, http_port = free_port(), free_port()
    with blaze_serve(
        "--port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--transport",
        "jsonrpc",
        app="tests.compat221.app:app",
    ) as server:

        def health() -> dict | None:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health") as r:
                    return json.loads(r.read())
            except OSError:
                return None

        assert wait_until(health, what="GET /health") == {"status": "ok"}
        call = json.dumps(
            {"jsonrpc": "2.0", "method": "predict.add", "params": {"a": 1, "b": 2}, "id": 7}
        ).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/jsonrpc", call) as reply:
            assert json.loads(reply.read()) == {"jsonrpc": "2.0", "result": 3.0, "id": 7}
        assert not listening(grpc_port)  # jsonrpc alone: no gRPC port


APP_SERVE_SCRIPT = """
import asyncio, sys
from tests.compat221.app import app
kind, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
if kind == "jsonrpc":
    asyncio.run(app.serve_jsonrpc("127.0.0.1", ports[0]))
else:
    asyncio.run(app.serve_both("127.0.0.1", grpc_port=ports[0], http_port=ports[1]))
"""


@pytest.mark.parametrize("kind", ["jsonrpc", "both"])
def test_serve_jsonrpc_and_serve_both(kind: str) -> None:
    grpc_port, http_port = free_port(), free_port()
    ports = [http_port] if kind == "jsonrpc" else [grpc_port, http_port]
    proc = subprocess.Popen(
        [sys.executable, "-c", APP_SERVE_SCRIPT, kind, *map(str, ports)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: listening(http_port), what="HTTP port")
        got = run_client(sys.executable, grpc_port, http_port) if kind == "both" else None
        assert listening(grpc_port) is (kind == "both")
        if got is not None:
            assert got == EXPECTED
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_docs_snippet_style_app_module_runs_unchanged(tmp_path: Path) -> None:
    """2.2.1's getting-started shape: `from __future__ import annotations`, Literal shapes,
    `blaze proto` writing the file."""
    module = tmp_path / "getting_started_app.py"
    module.write_text(
        textwrap.dedent(
            """
            from __future__ import annotations
            from typing import Literal
            import numpy as np
            from blazerpc import BlazeApp, TensorInput, TensorOutput

            app = BlazeApp(name="demo", enable_batching=False)

            @app.model("iris")
            def iris(
                features: TensorInput[np.float32, tuple[Literal["batch"], Literal[4]]],
            ) -> TensorOutput[np.float32, tuple[Literal["batch"], Literal[3]]]:
                return features[:, :3]
            """
        )
    )
    run = subprocess.run(
        [BLAZE, "proto", "getting_started_app:app", "--output-dir", str(tmp_path / "out")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert (
        "rpc PredictIris(IrisRequest) returns (IrisResponse);"
        in (tmp_path / "out" / "blaze_service.proto").read_text()
    )
