"""The live accumulated change ΔW = Σ (applied deltas) of each edited weight, kept factored.

One object per session, fed by every weight change the session makes (edits, guard
corrections, rollbacks, replay), read by PRUNE, weight health and the PEFT export. Per weight
the factors are stacked lazily into U [d_out, r], V [d_in, r] (float64, CPU): exact top singular
triplets then cost a QR of each factor and an SVD of an r×r core (`ops.top_singular_factored`),
never an SVD of the d_out×d_in matrix. When r outgrows min(d_out, d_in) the stack is refactored
exactly (thin SVD of the stack, singular values at float64 rounding dropped), so memory stays
O((d_out + d_in)·min(d_out, d_in)) however many edits the session makes.

This is ΔW as the editors and guards computed it (float64 sums of their factors); the stored
weights carry it rounded into their dtype. Weight health measures the stored difference.
"""
from __future__ import annotations

import torch

from .. import ops
from .base import Delta

_EPS64 = torch.finfo(torch.float64).eps


class AccumulatedDelta:
    def __init__(self) -> None:
        self._pending: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._stacked: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def add(self, delta: Delta, alpha: float = 1.0) -> None:
        """Record that `alpha · delta` was applied (rollback: alpha = −1)."""
        for layer in delta.layers:
            if layer.rank == 0:
                continue
            u = layer.u.detach().to("cpu", torch.float64) * float(alpha)
            self._pending.setdefault(layer.name, []).append((u, layer.v.detach().to("cpu", torch.float64)))

    @property
    def names(self) -> list[str]:
        return sorted({*self._pending, *self._stacked})

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(U [d_out, r], V [d_in, r]) float64 with ΔW = U Vᵀ; r = 0 for a weight never edited."""
        parts = self._pending.pop(name, [])
        held = self._stacked.get(name)
        if held is not None:
            parts.insert(0, held)
        if not parts:
            return torch.zeros(0, 0, dtype=torch.float64), torch.zeros(0, 0, dtype=torch.float64)
        u = torch.cat([p[0] for p in parts], 1)
        v = torch.cat([p[1] for p in parts], 1)
        if u.shape[1] > min(u.shape[0], v.shape[0]):
            u, v = _compact(u, v)
        self._stacked[name] = (u, v)
        return u, v

    def rank(self, name: str) -> int:
        return self.factors(name)[0].shape[1]

    def dense(self, name: str) -> torch.Tensor:
        u, v = self.factors(name)
        if u.numel() == 0:
            raise KeyError(f"{name} has no accumulated change")
        return u @ v.T

    def top_singular(self, name: str, k: int | None = None):
        """Exact top-k singular triplets (S, U, V) of ΔW (all of them for k = None); empty
        tensors for a weight with no change."""
        u, v = self.factors(name)
        r = min(u.shape[0], v.shape[0], u.shape[1]) if u.numel() else 0
        if r == 0:
            return torch.zeros(0, dtype=torch.float64), u[:, :0], v[:, :0]
        return ops.top_singular_factored(u, v, r if k is None else min(k, r))

    def sigma_max(self, name: str) -> float:
        s = self.top_singular(name, 1)[0]
        return float(s[0]) if len(s) else 0.0


def _compact(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same U Vᵀ with r ≤ min(d_out, d_in): exact thin SVD of the stack, directions whose
    singular value is below float64 rounding of the largest dropped."""
    k = min(u.shape[0], v.shape[0], u.shape[1])
    s, left, right = ops.top_singular_factored(u, v, k)
    floor = float(s[0]) * max(u.shape[0], v.shape[0]) * _EPS64 if len(s) else 0.0
    keep = int((s > floor).sum())
    return (left[:, :keep] * s[:keep]).contiguous(), right[:, :keep].contiguous()
