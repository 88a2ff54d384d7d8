"""Fixtures of the session tests (llama/gpt2 in tests/conftest.py; helpers in session_helpers.py)."""
from __future__ import annotations

import pytest
from session_helpers import FakeEditor

from seqedit.models import spec as model_spec


@pytest.fixture
def fake(llama):
    return FakeEditor(model_spec(llama[0]))
