"""Helpers for the lm-eval evaluator tests: an offline guard, weight snapshots, planted models."""
from __future__ import annotations

import socket

import pytest
import torch

from seqedit.metrics import EvalContext


@pytest.fixture
def offline(monkeypatch):
    """No network: every socket connect raises, and the HF libraries are told so."""
    def refuse(*_args, **_kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def context(tokenizer, tmp_path) -> EvalContext:
    return EvalContext(tokenizer=tokenizer, spec=None, cache_dir=tmp_path / "eval-cache")


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in before)


def collapse(model: torch.nn.Module) -> None:
    """Plant a muted model: all-zero output logits, so every context yields the same
    distribution, the same choice on label tasks and the same generation."""
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
