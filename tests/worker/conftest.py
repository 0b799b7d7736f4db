"""The GPU worker's tests: the model's code on the tiny model, in this process."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_dir(tiny_model_dir: Path) -> Path:
    """The session's tiny model (tests/conftest.py), built once for all of them; they
    only read it."""
    return tiny_model_dir
