"""Fixtures for the key-statistics tests."""
from __future__ import annotations

import pytest
from stats_helpers import make_corpus



@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
