"""Fixtures for the key-statistics tests."""
from __future__ import annotations

import pytest
import torch
from stats_helpers import make_corpus



@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models gain nothing from threads, and on a shared machine OpenMP threads that spin
    # while other processes hold the cores made these tests ~10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
