"""Shared fixtures; shared helpers (ports, paths, running servers) live in `support`."""

from __future__ import annotations

import pytest

from blazerpc import BlazeApp


@pytest.fixture
def app() -> BlazeApp:
    return BlazeApp()
