"""Fixtures for the editor tests: tiny random models (with key statistics) and requests."""
from __future__ import annotations

import pytest
from editor_helpers import REQUESTS, Tiny


@pytest.fixture(scope="session")
def llama():
    return Tiny("llama")


@pytest.fixture(scope="session")
def gpt2():
    return Tiny("gpt2")


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def any_tiny(request, llama, gpt2):
    return {"llama": llama, "gpt2": gpt2}[request.param]


@pytest.fixture()
def requests_():
    return list(REQUESTS)


