"""Shared fixtures: real servers on ephemeral ports, real clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from hypothesis import HealthCheck, settings

from blazerpc import BlazeApp, BlazeClient, Server

# Fuzz profiles: a short pass in `make test`, `--hypothesis-profile=fuzz` for `make fuzz`.
_FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("ci", max_examples=80, **_FUZZ)
settings.register_profile("fuzz", max_examples=3000, **_FUZZ)
settings.load_profile("ci")


@asynccontextmanager
async def running(app: BlazeApp) -> AsyncIterator[Server]:
    """Serve `app` on 127.0.0.1 on a free port for the duration of the block."""
    server = await app.start(host="127.0.0.1", port=0)
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


@asynccontextmanager
async def client_for(app: BlazeApp, *, registry: bool = False) -> AsyncIterator[BlazeClient]:
    """A running server for `app` and a BlazeClient connected to it."""
    async with (
        running(app) as server,
        BlazeClient(
            "127.0.0.1", server.port, registry=app.registry if registry else None
        ) as client,
    ):
        yield client


@pytest.fixture
def app() -> BlazeApp:
    return BlazeApp()
