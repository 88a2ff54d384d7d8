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

A rank-deficient or ill-conditioned C is what this method is built for (its small eigenvalues
are the null space), so only statistics that are malformed (shape, dtype, non-finite,
asymmetric, all zeros) or indefinite (an eigenvalue below −1e-4·λ_max) are refused, once per
layer and session. The solve itself is well posed whenever S is PSD and P a projector: then
V = PV solves (PSP + αI)V = PK with PSP + αI ⪰ αI, so ⟨V, PK⟩ ≥ α‖V‖²_F (and ‖V‖_F ≤ ‖PK‖_F/α).
A singular system, a non-finite V or one short of that inequality (an indefinite Σ K_p K_pᵀ,
i.e. corrupted state) is a `SolveError` naming the layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _solve
from .base import Delta, EditContext, SolveError
from .memit import LayerBandConfig, layer_loop

# Rounding slack on ⟨V, PK⟩ ≥ α‖V‖²_F (see the module docstring): equality needs V entirely in
# directions S does not see, and healthy solves sit well above it; falling short by more than
# this takes an indefinite system.
_ENERGY_SLACK = 1e-3


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

    @property
    def layers(self) -> list[int]:
        return sorted(self.config.layers)

    def projector(self, layer: int, ctx: EditContext, d_in: int | None = None) -> torch.Tensor:
        """P for `layer` from validated statistics (SolveError otherwise); a refusal is memoised
        in ctx.memo per C, so a session with bad statistics does not redo the eigendecomposition."""
        if layer not in self._projectors:
            cfg = self.config
            c = _solve.second_moment(ctx, layer, ctx.spec.mlp_hidden_size if d_in is None else d_in)

            def build(c):
                try:
                    return nullspace_projector(c, cfg.nullspace_threshold, cfg.nullspace_relative), None
                except SolveError as exc:
                    return None, exc.reason

            key = ("alphaedit_projector", layer, cfg.nullspace_threshold, cfg.nullspace_relative)
            p, refusal = ctx.derived(key, c, build)
            if refusal is not None:
                raise SolveError(f"AlphaEdit at layer {layer}: key statistics {refusal}; recompute them "
                                 "on the unedited model (seqedit.stats.second_moments)")
            self._projectors[layer] = p
        p = self._projectors[layer]
        if d_in is not None and p.shape[0] != d_in:
            raise SolveError(f"AlphaEdit at layer {layer}: keys of width {d_in} against a projector "
                             f"built from [{p.shape[0]}, {p.shape[0]}] statistics")
        return p

    def past_keys_gram(self, name: str, d_in: int) -> torch.Tensor:
        return self._past.get(name, torch.zeros(d_in, d_in, dtype=torch.float64))

    def compute(self, model, requests, ctx: EditContext) -> Delta:
        cfg, spec = self.config, ctx.spec
        cfg.check(spec)
        if not requests:
            raise ValueError("no requests to edit")

        for layer in cfg.layers:  # refuse bad statistics before the value optimisation
            self.projector(layer, ctx)

        alpha = cfg.l2_weight + cfg.update_norm_weight  # ENCORE's μ‖ΔW‖² adds to α‖ΔP‖² (norm.py)

        def solve(layer, k, r):
            p = self.projector(layer, ctx, k.shape[0]).to(k.device)
            s = k @ k.T + self.past_keys_gram(spec.mlp_out_weight_name(layer), k.shape[0]).to(k.device)
            m = p @ s + alpha * torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
            pk = p @ k
            if not bool(torch.isfinite(m).all()):
                raise SolveError(f"AlphaEdit at layer {layer}: non-finite system (the committed edits' "
                                 "key Gram matrix has overflowed or is corrupt)")
            v, info = torch.linalg.solve_ex(m, pk)
            energy, floor = float((v * pk).sum()), alpha * float((v * v).sum())
            if int(info) != 0 or not energy >= (1 - _ENERGY_SLACK) * floor:
                raise SolveError(
                    f"AlphaEdit at layer {layer}: the system P·S + αI is singular or indefinite "
                    f"(⟨V, PK⟩ = {energy:.3g} against α‖V‖² = {floor:.3g}, which a PSD S cannot fall "
                    "below): Σ K_p K_pᵀ of the committed edits is no longer positive semi-definite — "
                    "was an edit reverted that was never committed?")
            return v

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
    """Projector onto the span of C's eigenvectors with eigenvalue < threshold (· λ_max if relative).

    SolveError where C cannot be a second moment: non-finite, without a positive eigenvalue, or
    with an eigenvalue below −NEGATIVE_TOLERANCE·λ_max (rounding of a PSD matrix stays far above).
    """
    c = c.to(torch.float64)
    if not bool(torch.isfinite(c).all()):
        raise SolveError("C has non-finite entries (NaN or inf)")
    try:
        evals, evecs = torch.linalg.eigh(c)
    except torch.linalg.LinAlgError as exc:  # LAPACK's iteration did not converge
        raise SolveError(f"the eigendecomposition of C failed ({exc})") from exc
    top, bottom = float(evals.max()), float(evals.min())
    if not top > 0:
        raise SolveError(f"C has no positive eigenvalue (largest {top:.3g}): it is zero or negative "
                         "semi-definite, not a second moment E[kkᵀ]")
    if bottom < -_solve.NEGATIVE_TOLERANCE * top:
        raise SolveError(f"C is indefinite (eigenvalue {bottom:.3g} against λ_max = {top:.3g}), which a "
                         "second moment E[kkᵀ] cannot be")
    cut = threshold * top if relative else threshold
    basis = evecs[:, evals < cut]
    return basis @ basis.T
