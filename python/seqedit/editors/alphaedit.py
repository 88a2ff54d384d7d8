"""AlphaEdit: MEMIT's skeleton with the update confined to the null space of preserved keys.

P = U₀U₀ᵀ, U₀ = eigenvectors of C (the preserved-knowledge keys' second moment) whose
eigenvalue is below `nullspace_threshold` — relative to the largest eigenvalue by default, since
C's scale depends on the model, layer and token count (the original's absolute 2e-2 was tuned on
one model). For a layer with new keys K [d_in,b], spread residual R [d_out,b] and the running
S_p = Σ K_p K_pᵀ of committed edits, the update minimises

    ‖(ΔP) K − R‖² + ‖(ΔP) K_p‖² + α‖ΔP‖²          (α = l2_weight)

and is written as ΔW = ΔP. Setting the gradient to zero and using P = Pᵀ = P²:

    ΔW (K Kᵀ P + K_p K_pᵀ P + α I) = R Kᵀ P
    ΔW = R Kᵀ P (S P + α I)⁻¹,     S = K Kᵀ + S_p.

In factors ΔW = R Vᵀ with V = (P S + α I)⁻¹ P K (the transpose of the above, solved in float64
by LU: the matrix is not symmetric). Every column of V lies in range(P) — from
α V = P(K − S V) — so ΔW (I − P) = 0: keys in the preserved subspace are mapped exactly as
before. Keys of committed edits are kept per layer in `self`, fed by `commit`/`revert` from
`Delta.keys`, so a session rebuilds the state by replaying its ledger.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Delta, EditContext
from .memit import LayerBandConfig, layer_loop


@dataclass(frozen=True)
class AlphaEditConfig(LayerBandConfig):
    nullspace_threshold: float = 1e-2
    nullspace_relative: bool = True
    l2_weight: float = 1.0

    def _problems(self, spec):
        yield from super()._problems(spec)
        if not self.nullspace_threshold > 0:
            yield f"nullspace_threshold must be > 0, got {self.nullspace_threshold}"
        if self.nullspace_relative and not self.nullspace_threshold < 1:
            yield f"a relative nullspace_threshold must be < 1, got {self.nullspace_threshold}"
        if not self.l2_weight > 0:
            yield f"l2_weight must be > 0 (it keeps the solve well posed), got {self.l2_weight}"

    @classmethod
    def for_model(cls, spec, **overrides):
        return cls._band_build(spec, overrides)


class AlphaEditEditor:
    """Stateful: per layer, the null-space projector (computed once, lazily) and Σ K_p K_pᵀ."""

    name = "alphaedit"

    def __init__(self, config: AlphaEditConfig):
        self.config = config
        self._projectors: dict[int, torch.Tensor] = {}
        self._past: dict[str, torch.Tensor] = {}  # weight name → Σ K_p K_pᵀ, float64
        self._committed = 0

    def projector(self, layer: int, ctx: EditContext) -> torch.Tensor:
        if layer not in self._projectors:
            c = ctx.require_second_moment(layer).to(torch.float64)
            self._projectors[layer] = nullspace_projector(c, self.config.nullspace_threshold,
                                                          self.config.nullspace_relative)
        return self._projectors[layer]

    def past_keys_gram(self, name: str, d_in: int) -> torch.Tensor:
        return self._past.get(name, torch.zeros(d_in, d_in, dtype=torch.float64))

    def compute(self, model, requests, ctx: EditContext) -> Delta:
        cfg, spec = self.config, ctx.spec
        cfg.check(spec)
        if not requests:
            raise ValueError("no requests to edit")

        def solve(layer, k, r):
            p = self.projector(layer, ctx).to(k.device)
            s = k @ k.T + self.past_keys_gram(spec.mlp_out_weight_name(layer), k.shape[0]).to(k.device)
            m = p @ s + cfg.l2_weight * torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
            if not bool(torch.isfinite(m).all() and torch.isfinite(k).all()):
                return torch.full_like(k, float("nan"))
            return torch.linalg.solve(m, p @ k)

        deltas, keys, info = layer_loop(model, requests, ctx, cfg, solve)
        info |= {"null_dims": {str(layer): _rank(self._projectors[layer]) for layer in sorted(cfg.layers)},
                 "past_edits": self._committed}
        return Delta(self.name, deltas, keys, info)

    def commit(self, delta: Delta) -> None:
        self._update(delta, +1)

    def revert(self, delta: Delta) -> None:
        self._update(delta, -1)

    def _update(self, delta: Delta, sign: int) -> None:
        for name, k in delta.keys.items():
            k = k.to(torch.float64)
            gram = k @ k.T
            self._past[name] = self.past_keys_gram(name, k.shape[0]) + sign * gram
        self._committed += sign

    def state(self) -> dict[str, torch.Tensor]:
        """Σ K_p K_pᵀ per weight name (copies), for inspection and tests."""
        return {n: g.clone() for n, g in self._past.items()}


def _rank(p: torch.Tensor) -> int | None:
    t = float(torch.trace(p))  # a projector's trace is its rank
    return int(round(t)) if t == t else None


def nullspace_projector(c: torch.Tensor, threshold: float, relative: bool = True) -> torch.Tensor:
    """Projector onto the span of C's eigenvectors with eigenvalue < threshold (· λ_max if relative)."""
    c = c.to(torch.float64)
    if not bool(torch.isfinite(c).all()):
        return torch.full_like(c, float("nan"))  # surfaces as a non-finite Delta, which sessions refuse
    evals, evecs = torch.linalg.eigh(c)
    cut = threshold * float(evals.max()) if relative else threshold
    basis = evecs[:, evals < cut]
    return basis @ basis.T
