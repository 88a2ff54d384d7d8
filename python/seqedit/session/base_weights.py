"""Copies of the edited matrices as they were before the session moved them (W₀).

Evaluators need the base weights twice: weight health measures ΔW = W − W₀, and locality compares
the edited model with the *unedited* one. `unedited()` swaps the saved tensors into the parameters
and back: a pointer swap, no arithmetic, so the edited weights return bit-identical — subtracting
and re-adding the edits would not. Only the matrices the editor edits are copied (the rest of the
model never changes), and only when the session has evaluators.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch


class BaseWeights:
    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self._saved: dict[str, torch.Tensor] = {}

    def snapshot(self, names: Iterable[str]) -> None:
        """Save each named parameter not saved yet; call before it first changes."""
        for name in names:
            if name not in self._saved:
                self._saved[name] = self._model.get_parameter(name).detach().clone()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._saved)

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._saved[name]
        except KeyError:
            raise KeyError(f"no base copy of {name!r}: the session saves the weights its editor "
                           f"edits ({sorted(self._saved)})") from None

    @contextlib.contextmanager
    def unedited(self) -> Iterator[None]:
        params = {name: self._model.get_parameter(name) for name in self._saved}
        current = {name: p.data for name, p in params.items()}
        try:
            for name, p in params.items():
                p.data = self._saved[name]
            yield
        finally:
            for name, p in params.items():
                p.data = current[name]
