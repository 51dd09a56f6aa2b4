"""Tests of real models (torch, ONNX Runtime, Hugging Face): every test here is marked
`models`, which `make test` deselects and `make test-models` runs. Frameworks are imported
inside the tests, so a missing one fails them there instead of skipping them."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.models)
