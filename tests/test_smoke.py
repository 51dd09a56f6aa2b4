"""The quick-start path: register, serve, call by reflection."""

from blazerpc import BlazeApp

from .support import client_for


async def test_echo_round_trip(app: BlazeApp) -> None:
    @app.model("echo")
    async def echo(text: str) -> str:
        return text.upper()

    async with client_for(app) as client:
        assert await client.predict("echo", text="hi") == "HI"
