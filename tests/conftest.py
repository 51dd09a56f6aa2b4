"""Shared fixtures; shared helpers (ports, paths, running servers) live in `support`."""

from __future__ import annotations

import pytest
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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many of the docs' code blocks ran, so none is left out unseen (tests/test_docs.py)."""
    from .doc_snippets import census

    terminalreporter.write_line(census())
