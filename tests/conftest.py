"""Fixtures shared by every test folder: fresh tiny random models (model, tokenizer), one thread."""
from __future__ import annotations

import pytest
import torch

from seqedit.models import tiny


@pytest.fixture
def llama():
    return tiny("llama", seed=0)


@pytest.fixture
def gpt2():
    return tiny("gpt2", seed=0)


@pytest.fixture
def one_thread():
    # Tiny models gain nothing from threads, and on a shared machine OpenMP threads that spin
    # while other processes hold the cores made tiny forwards 10-30x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
