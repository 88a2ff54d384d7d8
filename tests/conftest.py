"""Fixtures shared by every test folder: fresh tiny random models (model, tokenizer)."""
from __future__ import annotations

import pytest

from seqedit.models import tiny


@pytest.fixture
def llama():
    return tiny("llama", seed=0)


@pytest.fixture
def gpt2():
    return tiny("gpt2", seed=0)
