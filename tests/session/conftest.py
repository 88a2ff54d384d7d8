"""Fixtures of the session tests (helpers live in session_helpers.py, importable by name)."""
from __future__ import annotations

import pytest
from session_helpers import FakeEditor

from seqedit.models import spec as model_spec
from seqedit.models import tiny


@pytest.fixture
def llama():
    return tiny("llama", seed=0)


@pytest.fixture
def gpt2():
    return tiny("gpt2", seed=0)


@pytest.fixture
def fake(llama):
    return FakeEditor(model_spec(llama[0]))
