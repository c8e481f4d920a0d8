"""Shared fixtures for the shipslog test suite.

Tests are deterministic: hypothesis runs derandomized, every test works in its
own temporary folder, and no test leaves a process behind.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "shipslog",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("shipslog")

@pytest.fixture
def root(tmp_path: os.PathLike[str]) -> str:
    """A fresh host root inside the test's temporary folder."""
    return os.path.join(os.fspath(tmp_path), "root")


