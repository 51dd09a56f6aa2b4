"""Shared by the protocol tests: a server with its HTTP port, and the examples of
docs/protocols.md run as a reader would run them (curl, grpcurl, python), outputs compared."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from blazerpc import Server

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "protocols.md"
PROTOCOLS_APP = ROOT / "tests" / "apps" / "protocols_app.py"

_EXAMPLE = re.compile(
    r"<!-- example: (?P<name>[\w-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)```\n"
    r"(?:```(?P<output_lang>\w+)\n(?P<output>.*?)```\n)?",
    re.DOTALL,
)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


async def http(
    url: str, body: bytes | str | object | None = None, headers: Mapping[str, str] | None = None
) -> Reply:
    """A plain HTTP request (POST when there is a body; objects are sent as JSON), in a thread
    so the server on this loop keeps running; HTTP error statuses are replies too."""
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}))

    def send() -> Reply:
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return Reply(reply.status, dict(reply.headers), reply.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, dict(exc.headers), exc.read())

    return await asyncio.to_thread(send)


@dataclass(frozen=True)
class Example:
    name: str
    lang: str
    code: str
    output_lang: str | None
    output: str | None


def examples(prefix: str = "") -> list[Example]:
    """The examples of docs/protocols.md whose name starts with `prefix`, in order."""
    found = [Example(**m.groupdict()) for m in _EXAMPLE.finditer(DOC.read_text())]
    return [e for e in found if e.name.startswith(prefix)]


async def run_example(example: Example, server: Server) -> str:
    """Run a sh or python example against `server` (its ports replace the documented ones);
    stdout and stderr together, as a terminal shows them."""
    code = example.code.replace("localhost:50051", f"127.0.0.1:{server.port}")
    code = code.replace("localhost:8000", f"127.0.0.1:{server.http_port}")
    command = ["bash", "-c", code] if example.lang == "sh" else [sys.executable, "-c", code]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # A subprocess, not a thread: the server runs on this test's event loop.
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return out.decode()


def assert_documented_output(example: Example, got: str) -> None:
    assert example.output is not None, f"example {example.name} documents no output"
    if example.output_lang == "json":
        assert json.loads(got) == json.loads(example.output), got
    else:
        assert got.rstrip() == example.output.rstrip(), got
