"""`blaze serve --reload`: a change to a .py file restarts the server with the new code."""

from __future__ import annotations

import signal
from pathlib import Path

from blazerpc import BlazeRPCError, SyncBlazeClient

from .processes import blaze_serve, exits_within, wait_serving, wait_until
from .support import free_port

APP = """\
from blazerpc import BlazeApp

app = BlazeApp()


@app.model("echo")
async def echo(text: str) -> str:
    return {prefix!r} + text
"""


def answer(port: int) -> str | None:
    try:
        with SyncBlazeClient("127.0.0.1", port, timeout=2) as client:
            return client.predict("echo", text="hi")
    except BlazeRPCError:  # restarting
        return None


def test_reload_serves_the_changed_code(tmp_path: Path) -> None:
    module = tmp_path / "reload_app.py"
    module.write_text(APP.format(prefix="v1:"))
    port = free_port()
    with blaze_serve(
        "--port",
        str(port),
        "--app-dir",
        str(tmp_path),
        "--reload",
        "--grace-period",
        "1",
        app="reload_app:app",
    ) as proc:
        wait_serving(port, proc)
        assert answer(port) == "v1:hi"

        module.write_text(APP.format(prefix="v2:"))
        wait_until(lambda: answer(port) == "v2:hi", timeout=20, interval=0.1, what="new code")

        proc.send_signal(signal.SIGTERM)
        assert exits_within(proc, 10) == 0
