"""Helpers for the key-statistics tests: a small corpus, a float64 oracle, forward counters."""
from __future__ import annotations

import random

import torch

from seqedit.models import spec as model_spec

WORDS = ("the of and river city king war music art science born empire language north west "
         "painter century island republic theory planet ocean mountain famous early modern").split()


def make_corpus(n: int = 40, seed: int = 0) -> list[str]:
    """Documents of very different lengths (a few bytes to ~1000), so batches carry padding."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = rng.randint(1, 12) if i % 3 else rng.randint(20, 140)
        docs.append(" ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + ".")
    return docs


def plain_second_moment(model, tokenizer, layer: int, docs: list[str], max_length: int):
    """Oracle: one document per forward, the full model, no padding, float64 k kᵀ per token."""
    module = model_spec(model).mlp_out(model, layer)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    total, count = None, 0
    try:
        with torch.no_grad():
            for doc in docs:
                ids = tokenizer(doc, truncation=True, max_length=max_length)["input_ids"]
                model(input_ids=torch.tensor([ids]))
                k = captured.pop()[0].double()
                total = k.T @ k if total is None else total + k.T @ k
                count += len(ids)
    finally:
        handle.remove()
    return total / count, count


class ForwardCounter:
    """Counts calls of a module's forward (a cache hit must run none)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()


class Killer:
    """Raises from inside the forward once `after` forwards completed: a simulated crash."""

    def __init__(self, module: torch.nn.Module, after: int):
        self.after, self.calls = after, 0
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        if self.calls == self.after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()
