"""The `blaze` command as a user runs it: real processes, real ports."""

import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import typer

from blazerpc import BlazeApp, SyncBlazeClient, TensorInput, TensorOutput
from blazerpc.cli import banner, load_app

from .processes import BLAZE, blaze_serve, exits_within, run_tool, wait_serving
from .support import free_port, running

APP_SOURCE = textwrap.dedent(
    """
    from collections.abc import Iterator

    import numpy as np

    from blazerpc import BlazeApp, TensorInput, TensorOutput

    app = BlazeApp(name="cli-test")
    not_an_app = {"models": []}

    @app.model("shout", version="3")
    async def shout(text: str) -> str:
        return text.upper() + "!"

    @app.model("count-up", version="2024.1", streaming=True)
    def count_up(n: int) -> Iterator[int]:
        yield from range(n)

    @app.model("double")
    def double(x: TensorInput[np.float32, 3]) -> TensorOutput[np.float32, 3]:
        return x * 2
    """
)


def write_app(directory: Path, module: str = "cliapp") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{module}.py").write_text(APP_SOURCE)
    return directory


def call_app(port: int) -> tuple[str, list[int], list[float]]:
    with SyncBlazeClient("127.0.0.1", port, timeout=10) as client:
        return (
            client.predict("shout", text="hi"),
            list(client.stream("count-up", n=3)),
            client.predict("double", x=np.array([1, 2, 3], np.float32)).tolist(),
        )


@pytest.mark.timeout(60)
def test_serve_prints_the_banner_and_serves_from_the_current_dir(tmp_path: Path) -> None:
    write_app(tmp_path)
    port = free_port()
    with blaze_serve("--port", str(port), app="cliapp:app", cwd=tmp_path) as proc:
        wait_serving(port, proc)
        assert call_app(port) == ("HI!", [0, 1, 2], [2.0, 4.0, 6.0])
        proc.send_signal(signal.SIGTERM)
        assert exits_within(proc, 15) == 0
        output = proc.stdout.read() if proc.stdout else ""
    assert "Traceback" not in output
    lines = output.splitlines()

    def line_of(model: str) -> str:
        found = [line for line in lines if line.split()[:1] == [model]]
        assert len(found) == 1, output
        return found[0]

    assert "3" in line_of("shout").split()[1]
    assert "unary" in line_of("shout")
    assert "streaming" not in line_of("shout")
    assert "2024.1" in line_of("count-up")
    assert "streaming" in line_of("count-up")
    assert "1" in line_of("double").split()[1]
    assert "unary" in line_of("double")
    assert f"127.0.0.1:{port}" in output
    # The banner comes before anything else the server says about the models.
    assert output.index("shout") < output.index(f"127.0.0.1:{port}")


@pytest.mark.timeout(60)
def test_serve_with_app_dir(tmp_path: Path) -> None:
    write_app(tmp_path / "apps", "elsewhere_app")
    cwd = tmp_path / "somewhere_else"
    cwd.mkdir()
    port = free_port()
    with blaze_serve(
        "--port",
        str(port),
        "--app-dir",
        str(tmp_path / "apps"),
        app="elsewhere_app:app",
        cwd=cwd,
    ) as proc:
        wait_serving(port, proc)
        assert call_app(port)[0] == "HI!"


def test_proto_with_app_dir_and_current_dir(tmp_path: Path) -> None:
    write_app(tmp_path / "apps")
    out = tmp_path / "out"
    # From another directory, through --app-dir.
    done = subprocess.run(
        [BLAZE, "proto", "cliapp:app", "--app-dir", str(tmp_path / "apps"), "--output-dir", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    text = (out / "blaze_service.proto").read_text()
    assert "rpc PredictShout(ShoutRequest) returns (ShoutResponse);" in text
    assert "rpc PredictCountUp(CountUpRequest) returns (stream CountUpResponse);" in text
    # From the app's own directory, without it.
    done = subprocess.run(
        [BLAZE, "proto", "cliapp:app", "--output-dir", str(tmp_path / "out2")],
        cwd=tmp_path / "apps",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out2" / "blaze_service.proto").read_text() == text


BAD_TARGETS = {
    "no-colon": ("cliapp", "MODULE:ATTR"),
    "empty-attr": ("cliapp:", "MODULE:ATTR"),
    "empty-module": (":app", "MODULE:ATTR"),
    "no-such-module": ("no_such_module_xyz:app", "no_such_module_xyz"),
    "no-such-package": ("no_such_pkg_xyz.sub:app", "no_such_pkg_xyz"),
    "missing-attribute": ("cliapp:missing_thing", "missing_thing"),
    "not-a-blazeapp": ("cliapp:not_an_app", "BlazeApp"),
}


@pytest.mark.parametrize(("target", "says"), list(BAD_TARGETS.values()), ids=list(BAD_TARGETS))
def test_load_app_failures_are_one_line_and_exit_status_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    target: str,
    says: str,
) -> None:
    """Every way an import string can be wrong, in-process (the subprocess test samples them)."""
    write_app(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_app adds the app dirs
    monkeypatch.delitem(sys.modules, "cliapp", raising=False)
    try:
        with pytest.raises(typer.Exit) as info:
            load_app(target)
    finally:
        sys.modules.pop("cliapp", None)
    assert info.value.exit_code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert says in err


SUBPROCESS_CASES = {
    "serve": ["no-such-module", "not-a-blazeapp"],
    "proto": ["missing-attribute"],
}


@pytest.mark.timeout(90)
def test_bad_app_path_from_the_command_line(tmp_path: Path) -> None:
    """`blaze serve` / `blaze proto` with a bad app: one line on stderr, status 2, no traceback."""
    write_app(tmp_path)
    port = str(free_port())
    extra = {"serve": ["--host", "127.0.0.1", "--port", port], "proto": ["--output-dir", "o"]}
    # All at once: each is a separate process.
    procs = {
        (command, case): subprocess.Popen(
            [BLAZE, command, BAD_TARGETS[case][0], *extra[command]],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command, cases in SUBPROCESS_CASES.items()
        for case in cases
    }
    for key, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"{key}: still running (did it start serving?)") from None
        assert proc.returncode == 2, (key, out, err)
        assert "Traceback" not in err + out, (key, err)
        assert len(err.strip().splitlines()) == 1, (key, err)
        assert BAD_TARGETS[key[1]][1] in err, (key, err)
    assert not (tmp_path / "o").exists()


@pytest.mark.timeout(60)
def test_port_in_use_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    write_app(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [BLAZE, "serve", "cliapp:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    # grpc's C core may log its own line first; ours is one line that names the address.
    (ours,) = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert f"127.0.0.1:{port}" in ours


# --- streaming models through the CLI: stock grpcio stubs from `blaze proto`, and the banner -----

STREAMING_APP_MODULE = """
import asyncio
from dataclasses import dataclass

from blazerpc import BlazeApp

app = BlazeApp(name="streaming-test")


@dataclass
class Piece:
    text: str
    index: int


@app.model("generate", streaming=True)
async def generate(prompt: str) -> Piece:
    for i, word in enumerate(prompt.split()):
        await asyncio.sleep(0)
        yield Piece(word, i)


@app.model("words", streaming=True)
def words(prompt: str) -> str:
    yield from prompt.split()
    raise RuntimeError("out of words")


@app.model("echo")
def echo(text: str) -> str:
    return text
"""

STUB_CLIENT = """
import json, sys
import grpc
sys.path.insert(0, sys.argv[1])
import blaze_service_pb2 as pb
import blaze_service_pb2_grpc as pb_grpc

with grpc.insecure_channel(sys.argv[2]) as channel:
    stub = pb_grpc.InferenceServiceStub(channel)
    pieces = [
        [m.result.text, m.result.index]
        for m in stub.PredictGenerate(pb.GenerateRequest(prompt="tokens as they come"), timeout=10)
    ]
    words = []
    try:
        for m in stub.PredictWords(pb.WordsRequest(prompt="x y"), timeout=10):
            words.append(m.result)
    except grpc.RpcError as exc:
        status = [exc.code().name, exc.details()]
    echo = stub.PredictEcho(pb.EchoRequest(text="unary still works"), timeout=10).result
print(json.dumps({"pieces": pieces, "words": words, "status": status, "echo": echo}))
"""


def write_app_module(directory: Path) -> str:
    name = f"streaming_app_{os.getpid()}_{time.monotonic_ns()}"
    (directory / f"{name}.py").write_text(STREAMING_APP_MODULE)
    return name


def blaze(*args: str) -> list[str]:
    """The `blaze` command line, run by this interpreter."""
    return [sys.executable, "-c", "from blazerpc.cli import main; main()", *args]


async def test_stock_grpcio_stubs_from_blaze_proto_consume_the_stream(tmp_path: Path) -> None:
    module = write_app_module(tmp_path)
    rc, out, err = await run_tool(
        *blaze("proto", f"{module}:app", "--output-dir", str(tmp_path), "--app-dir", str(tmp_path))
    )
    assert rc == 0, err
    proto = (tmp_path / "blaze_service.proto").read_text()
    assert "rpc PredictGenerate(GenerateRequest) returns (stream GenerateResponse);" in proto

    rc, out, err = await run_tool(
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{tmp_path}",
        f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        str(tmp_path / "blaze_service.proto"),
    )
    assert rc == 0, err
    stubs = (tmp_path / "blaze_service_pb2_grpc.py").read_text()
    assert "unary_stream" in stubs

    spec = importlib.util.spec_from_file_location(module, tmp_path / f"{module}.py")
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    app: BlazeApp = loaded.app
    assert app.proto() == proto

    async with running(app) as server:
        rc, out, err = await run_tool(
            sys.executable, "-c", STUB_CLIENT, str(tmp_path), f"127.0.0.1:{server.port}"
        )
    assert rc == 0, err
    assert json.loads(out) == {
        "pieces": [["tokens", 0], ["as", 1], ["they", 2], ["come", 3]],
        "words": ["x", "y"],
        "status": ["INTERNAL", "RuntimeError: out of words"],
        "echo": "unary still works",
    }


async def test_serve_banner_shows_which_models_stream(tmp_path: Path) -> None:
    module = write_app_module(tmp_path)
    argv = blaze(
        "serve", f"{module}:app", "--host", "127.0.0.1", "--port", str(free_port()),
        "--app-dir", str(tmp_path),
    )  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    banner: list[str] = []
    try:
        assert proc.stdout is not None
        while not banner or "listening" not in banner[-1]:
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            assert line, "blaze serve exited early:\n" + "\n".join(banner)
            banner.append(line.decode().rstrip())
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
    lines = {line.split()[0]: line for line in banner if line.startswith("  ")}
    assert "streaming" in lines["generate"]
    assert "streaming" in lines["words"]
    assert "streaming" not in lines["echo"]


SLOW_START_APP = textwrap.dedent(
    """
    import asyncio
    import logging

    from blazerpc import BlazeApp

    app = BlazeApp(name="slow-start")

    @app.on_startup
    async def load_weights() -> None:
        logging.getLogger(__name__).info("the app's own INFO line")
        logging.getLogger("somelib").info("somelib chatter at INFO")
        logging.getLogger("somelib").warning("somelib warns")
        await asyncio.sleep(1.0)

    @app.model("echo")
    def echo(text: str) -> str:
        return text
    """
)


@pytest.mark.timeout(60)
def test_ready_line_after_start_up_and_library_info_left_alone(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(SLOW_START_APP)
    port = free_port()
    with blaze_serve("--port", str(port), app="slow:app", cwd=tmp_path) as proc:
        wait_serving(port, proc)
        with SyncBlazeClient("127.0.0.1", port, timeout=10) as client:
            assert client.predict("echo", text="hi") == "hi"
        proc.send_signal(signal.SIGTERM)
        assert exits_within(proc, 15) == 0
        output = proc.stdout.read() if proc.stdout else ""
    ready = [line for line in output.splitlines() if "ready: 1 model(s) take calls" in line]
    assert len(ready) == 1, output
    assert f"127.0.0.1:{port}" in ready[0] and "start-up took 1." in ready[0]
    assert output.index("somelib warns") < output.index(ready[0])
    assert "somelib chatter" not in output  # a library's INFO stays quiet
    assert "INFO slow: the app's own INFO line" in output


def test_banner_says_when_only_requests_of_one_length_share_a_batch() -> None:
    app = BlazeApp()

    @app.model("embed-ids")
    def embed_ids(
        ids: TensorInput[np.int64, "batch", "seq"],
    ) -> TensorOutput[np.float32, "batch", 8]:
        return np.zeros((len(ids), 8), np.float32)

    @app.model("classify")
    def classify(x: TensorInput[np.float32, "batch", 4]) -> TensorOutput[np.int64, "batch"]:
        return np.zeros(len(x), np.int64)

    lines = {line.split()[0]: line for line in banner(app, "h", 1).splitlines()}
    assert "only requests of equal 'seq' share a batch" in lines["embed-ids"]
    assert "batched (up to 32)," in lines["classify"]


def test_banner_shows_a_token_budget() -> None:
    app = BlazeApp()

    def words(text: str) -> int:
        return len(text.split())

    @app.model("embed", batched=True, batch_key=words, max_batch_tokens=256)
    def embed(text: list[str]) -> list[int]:
        return [len(t) for t in text]

    @app.model("plain", batched=True, batch_key=words)
    def plain(text: list[str]) -> list[int]:
        return [len(t) for t in text]

    lines = {line.split()[0]: line for line in banner(app, "h", 1).splitlines()}
    assert "batched (up to 32, calls of at most 256 batch_key units)," in lines["embed"]
    assert "batched (up to 32)," in lines["plain"]
