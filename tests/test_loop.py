"""`blaze serve --loop auto|asyncio|uvloop`: the event loop the server runs on."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import signal

import pytest
import uvloop

from blazerpc.cli import Loop, resolve_loop, run
from blazerpc.exceptions import ConfigurationError

from .processes import blaze_serve, exits_within, wait_serving
from .support import free_port


def loop_of(choice: Loop) -> asyncio.AbstractEventLoop:
    seen: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        seen.append(asyncio.get_running_loop())

    run(main(), choice)
    return seen[0]


def test_asyncio_is_used_when_asked_even_with_uvloop_installed() -> None:
    loop = loop_of(Loop.asyncio)
    assert type(loop).__module__.startswith("asyncio"), type(loop)


def test_auto_and_uvloop_run_on_uvloop_which_the_default_install_has() -> None:
    assert isinstance(loop_of(Loop.auto), uvloop.Loop)
    assert isinstance(loop_of(Loop.uvloop), uvloop.Loop)


@pytest.mark.both_loops
async def test_a_both_loops_test_runs_once_on_each_loop(request: pytest.FixtureRequest) -> None:
    on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert request.node.name.endswith("[uvloop]" if on_uvloop else "[asyncio]")


def test_the_default_install_requires_uvloop_where_it_builds() -> None:
    """uvloop comes with `pip install blazerpc` (no extra), except on Windows and PyPy."""
    (requirement,) = [
        r for r in importlib.metadata.requires("blazerpc") or [] if r.startswith("uvloop")
    ]
    assert "extra ==" not in requirement, requirement
    assert 'sys_platform != "win32"' in requirement, requirement


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "uvloop" else find_spec(name, *a),
    )
    assert resolve_loop(Loop.auto) is Loop.asyncio
    assert type(loop_of(Loop.auto)).__module__.startswith("asyncio")
    with pytest.raises(ConfigurationError, match=r"--loop uvloop needs uvloop, which is not"):
        resolve_loop(Loop.uvloop)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_blaze_serve_runs_on_the_loop_it_was_given_and_says_so(loop: str) -> None:
    port = free_port()
    with blaze_serve("--port", str(port), "--loop", loop) as proc:
        wait_serving(port, proc)
        proc.send_signal(signal.SIGTERM)
        assert exits_within(proc, 30) == 0
        out = proc.stdout.read() if proc.stdout else ""
    assert f"{loop} event loop" in out


def test_blaze_serve_rejects_an_unknown_loop() -> None:
    with blaze_serve("--port", str(free_port()), "--loop", "tokio") as proc:
        assert exits_within(proc, 30) == 2
        out = proc.stdout.read() if proc.stdout else ""
    assert "'tokio' is not one of" in out
