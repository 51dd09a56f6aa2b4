"""Shared fixtures; shared helpers (ports, paths, running servers) live in `support`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop
from hypothesis import HealthCheck, settings

from blazerpc import BlazeApp

# Fuzz profiles: a short pass in `make test`, `--hypothesis-profile=fuzz` for `make fuzz`.
_FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("ci", max_examples=80, **_FUZZ)
settings.register_profile("fuzz", max_examples=3000, **_FUZZ)
settings.load_profile("ci")


@pytest.fixture
def app() -> BlazeApp:
    return BlazeApp()


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Async tests run on asyncio's own loop; those marked `both_loops` on uvloop, which
    `blaze serve` runs on, as well."""
    if item.get_closest_marker("both_loops") is None:
        return {"asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many of the docs' code blocks ran, so none is left out unseen (tests/test_docs.py)."""
    from .doc_snippets import census

    terminalreporter.write_line(census())
