"""The quick-start path: register, serve, call by reflection."""

import subprocess
import sys

from blazerpc import BlazeApp

from .support import client_for


async def test_echo_round_trip(app: BlazeApp) -> None:
    @app.model("echo")
    async def echo(text: str) -> str:
        return text.upper()

    async with client_for(app) as client:
        assert await client.predict("echo", text="hi") == "HI"


DEFAULT_INSTALL = """
import asyncio, sys
sys.modules["aiohttp"] = None  # not installed: it comes with the [http] extra only
from blazerpc import BlazeApp, BlazeClient, ConfigurationError

app = BlazeApp()

@app.model("echo")
def echo(text: str) -> str:
    return text.upper()

async def main() -> None:
    server = await app.start("127.0.0.1", 0)
    async with BlazeClient("127.0.0.1", server.port) as client:
        print(await client.predict("echo", text="hi"))
    try:
        await app.start("127.0.0.1", 0, http_port=0)
    except ConfigurationError as exc:
        print(exc)
    await server.stop(0)

asyncio.run(main())
"""


def test_the_default_install_serves_grpc_without_the_http_extra() -> None:
    """`pip install blazerpc` has no aiohttp: importing, serving and calling over gRPC must
    work, and asking for the HTTP port must say which extra it needs."""
    done = subprocess.run(
        [sys.executable, "-c", DEFAULT_INSTALL], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "HI",
        "serving HTTP needs aiohttp: pip install 'blazerpc[http]'",
    ]
