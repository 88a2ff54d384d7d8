"""PRUNE (spec §1): keep the accumulated change ΔW of each edited weight from outgrowing W₀.

Every singular value s of ΔW at or above σ̄ = σ_max(W₀) is mapped through a concave F (below σ̄
F is the identity); the model becomes W₀ + F(ΔW). Only the few directions with s ≥ σ̄ move, so
the restraint is a low-rank correction  −Σ_{s_i ≥ σ̄} (s_i − F(s_i)) u_i v_iᵀ  found from the
session's factored ΔW (QR of the factors, SVD of a small core): no SVD of a d_out×d_in matrix,
no dense ΔW. σ̄ is one subspace iteration on W₀ per weight, cached.

Two modes. "posthoc" (the original code: restrain once, from unrestrained weights, for
measuring): `guard` passes edits through and `view` hands the session the correction of the
current ΔW, applied only while evaluators run. "every": after every k-th committed edit the
step's delta is extended so that the model becomes W₀ + F(ΔW_before + δ) — computed on the
whole accumulated change, never a restrained delta stacked on already-edited weights (the bug
of a third-party port, spec §1.3).

Counting for "every": only committed edits count. The step being guarded restrains when
(committed edits so far + 1) is a multiple of `every`; a refused edit never commits, a rolled-back
one uncommits, so the count — and with it which steps restrain — follows the ledger, also on
resume (the session replays `commit`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .. import ops
from ..editors.base import Delta, LayerDelta
from .base import GuardBase, GuardConfig, GuardContext, record

KINDS = {"log": math.e, "log2": 2.0, "log1_5": 1.5, "log1_2": 1.2, "linear": None}
MODES = ("posthoc", "every")
# σ̄ decides which directions move: found in float64 to within 1e-6·σ̄ (past the precision of
# the stored weights); a spectrum with no gap at the top stops at the iteration cap instead,
# with the Rayleigh–Ritz estimate (measured within 1e-6 on Gaussian matrices).
SIGMA_TOL = 1e-6
_FIRST_K = 8  # directions asked for first; real runs rarely have more above σ̄


@dataclass(frozen=True)
class PruneConfig(GuardConfig):
    """kind: F above σ̄ — "log" (α = e), "log2", "log1_5", "log1_2": log_α(s) − log_α(σ̄) + σ̄;
    "linear": (s + σ̄)/2. mode: "posthoc" (only under `view`) or "every" (in the weights after
    every `every`-th committed edit)."""

    guard = "prune"

    kind: str = "log"
    mode: str = "posthoc"
    every: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"prune: kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        if self.mode not in MODES:
            raise ValueError(f"prune: mode must be one of {list(MODES)}, got {self.mode!r}")
        if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 1:
            raise ValueError(f"prune: every must be a positive int, got {self.every!r}")


def restrain_values(s: torch.Tensor, sigma_bar: float, kind: str) -> torch.Tensor:
    """F(s) elementwise: s below σ̄, the `kind` map at or above (continuous, increasing)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    alpha = KINDS[kind]
    above = s >= sigma_bar
    if alpha is None:
        mapped = (s + sigma_bar) / 2
    else:
        # clamp: log of the entries below σ̄ is discarded by `where`, but must not be −inf/NaN.
        mapped = torch.log(s.clamp(min=sigma_bar) / sigma_bar) / math.log(alpha) + sigma_bar
    return torch.where(above, mapped, s)


def base_sigma(w0: torch.Tensor) -> float:
    """σ_max(W₀) by subspace iteration in float64 (orientation does not matter)."""
    return float(ops.top_singular(w0.detach().to(torch.float64), 1, tol=SIGMA_TOL)[0][0])


def leading_above(u: torch.Tensor, v: torch.Tensor, sigma_bar: float):
    """(S, L, R, top): the singular triplets of ΔW = U Vᵀ with s ≥ σ̄ (float64), and its largest
    singular value (0 for ΔW of rank 0). Asks for k directions, doubling k until the smallest
    returned is below σ̄ or k is the rank."""
    if not (math.isfinite(sigma_bar) and sigma_bar > 0):
        raise ValueError(f"sigma_bar must be a positive finite number, got {sigma_bar!r}")
    u, v = u.detach().to(torch.float64), v.detach().to(torch.float64)
    limit = min(u.shape[0], v.shape[0], u.shape[1]) if u.numel() and v.numel() else 0
    if limit == 0:
        return u.new_zeros(0), u[:, :0], v[:, :0], 0.0
    k = min(_FIRST_K, limit)
    while True:
        s, left, right = ops.top_singular_factored(u, v, k)
        if float(s[-1]) < sigma_bar or k == limit:
            break
        k = min(2 * k, limit)
    n = int((s >= sigma_bar).sum())
    return s[:n], left[:, :n], right[:, :n], float(s[0])


def restraint(u: torch.Tensor, v: torch.Tensor, sigma_bar: float,
              kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Correction factors (cu [m, j], cv [n, j], float64) with U Vᵀ + cu cvᵀ = F(U Vᵀ); j is the
    number of singular values ≥ σ̄ (0: nothing to restrain)."""
    s, left, right, _ = leading_above(u, v, sigma_bar)
    return left * (restrain_values(s, sigma_bar, kind) - s), right


class PruneGuard(GuardBase):
    name = "prune"

    def __init__(self, config: PruneConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise ValueError("prune: pass a PruneConfig or options, not both")
        self.config = config if config is not None else PruneConfig(**options)
        self._edits = 0
        self._sigma_bar: dict[str, float] = {}
        self._transposed: dict[str, bool] = {}

    def guard(self, delta: Delta, requests: list, ctx: GuardContext) -> Delta:
        self._learn_orientation(delta)
        if self.config.mode != "every":
            return delta
        edits = self._edits + 1
        if edits % self.config.every:
            record(delta, self.name, {"applied": False, "edits": edits})
            return delta
        mine = {d.name: d for d in delta.layers}
        layers, weights = [], {}
        for name in sorted({*ctx.accumulated.names, *mine}):
            u, v = ctx.accumulated.factors(name)
            if name in mine:
                u, v = _stack(u, v, mine[name])
            layer, weights[name] = self._correct(name, u, v, ctx)
            if layer is not None:
                layers.append(layer)
        out = delta.plus(Delta(self.name, layers)) if layers else delta
        if out is not delta:
            # plus() copies info shallowly: give this Delta its own record dict.
            out.info["guards"] = dict(out.info.get("guards", {}))
        record(out, self.name, {"applied": True, "edits": edits, "weights": weights})
        return out

    def view(self, ctx: GuardContext) -> Delta | None:
        """posthoc: the correction that turns W₀ + ΔW into W₀ + F(ΔW) (layers may be empty when
        no direction reaches σ̄); None when nothing was edited or in "every" mode."""
        names = ctx.accumulated.names
        if self.config.mode != "posthoc" or not names:
            return None
        layers, weights = [], {}
        for name in names:
            u, v = ctx.accumulated.factors(name)
            layer, weights[name] = self._correct(name, u, v, ctx)
            if layer is not None:
                layers.append(layer)
        out = Delta(self.name, layers)
        record(out, self.name, {"applied": True, "edits": self._edits, "weights": weights})
        return out

    def commit(self, delta: Delta) -> None:
        self._learn_orientation(delta)
        self._edits += 1

    def revert(self, delta: Delta, undo: Delta | None = None) -> None:
        self._edits -= 1

    def sigma_bar(self, name: str, ctx: GuardContext) -> float:
        """σ_max(W₀) of weight `name`, computed once."""
        if name not in self._sigma_bar:
            s = base_sigma(ctx.base_weight(name))
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"prune: σ_max(W₀) of {name} is {s}; nothing to restrain against")
            alpha = KINDS[self.config.kind]
            if alpha is not None and s < 1 / math.log(alpha):
                # log_α has slope 1/(s ln α) > 1 just above such a σ̄: F enlarges, not restrains.
                warnings.warn(f"prune: σ̄ = {s:.4g} of {name} is below 1/ln α = "
                              f"{1 / math.log(alpha):.4g}, so kind {self.config.kind!r} enlarges "
                              "singular values just above σ̄", RuntimeWarning, stacklevel=2)
            self._sigma_bar[name] = s
        return self._sigma_bar[name]

    def _correct(self, name, u, v, ctx):
        sigma_bar = self.sigma_bar(name, ctx)
        s, left, right, top = leading_above(u, v, sigma_bar)
        f = restrain_values(s, sigma_bar, self.config.kind)
        # F is increasing and F ≥ σ̄ above σ̄, so the new top is F(old top) (= it below σ̄).
        entry = {"sigma_bar": sigma_bar, "restrained": len(s), "top_before": top,
                 "top_after": float(f[0]) if len(s) else top}
        if len(s) == 0:
            return None, entry
        # float32 like the editors' factors: what the session applies and the ledger stores.
        cu, cv = (left * (f - s)).float(), right.float()
        return LayerDelta(name, cu, cv, self._orientation(name, u.shape[0], v.shape[0], ctx)), entry

    def _learn_orientation(self, delta: Delta) -> None:
        for d in delta.layers:
            self._transposed[d.name] = d.transposed

    def _orientation(self, name: str, d_out: int, d_in: int, ctx: GuardContext) -> bool:
        """Storage flag of a weight this guard corrects; known from the deltas it has seen, else
        from W₀'s shape, else (square) the model's MLP layout."""
        if name in self._transposed:
            return self._transposed[name]
        shape = tuple(ctx.base_weight(name).shape)
        if d_out != d_in:
            return shape == (d_in, d_out)
        return bool(getattr(ctx.spec, "mlp_out_transposed", False))


def _stack(u: torch.Tensor, v: torch.Tensor, layer: LayerDelta) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulated factors followed by this step's (a weight never edited has r = 0 factors)."""
    du = layer.u.detach().to("cpu", torch.float64)
    dv = layer.v.detach().to("cpu", torch.float64)
    if u.shape[1] == 0:
        return du, dv
    return torch.cat([u, du], 1), torch.cat([v, dv], 1)
