"""Checked float64 linear algebra for the closed-form editors: every way the key statistics or a
system built from them can make an edit unsafe becomes a `SolveError` naming the layer.

* `second_moment(ctx, layer, d_in)`: C from the provider, refused unless it is a floating-point
  [d_in, d_in] tensor that is finite, symmetric, not all zeros and has no negative diagonal
  entry. The content checks are O(d²) and memoised per tensor (`EditContext.derived`), so a
  session pays them once per layer.
* `spd_factor(a)`: Cholesky factor of a symmetric positive definite matrix, or the reason there
  is none: not positive definite, or ill-conditioned — estimated condition number above
  `MAX_CONDITION`. Beyond that, float64 solves keep fewer than ~4 significant digits
  (error ≈ κ·2.2e-16) and the solution is dominated by directions the statistics barely
  determine, which is how a near-singular C turns into a ΔW as large as W.
* `indefinite(c)`: whether a C whose factorisation failed is clearly not positive semi-definite
  (no second moment E[kkᵀ] can be), as opposed to merely singular.

The condition estimate uses only the factor already computed: κ₁ = ‖A‖₁‖A⁻¹‖₁ with ‖A⁻¹‖₁
from Hager's iteration as refined by Higham (what LAPACK's xPOCON computes; a few O(d²)
triangular solves, a lower bound that in practice is within a factor ~2 of κ₁), or (max/min
diagonal of L)², a cruder lower bound on κ₂, when that alone already exceeds the limit. κ₁
exceeds κ₂ by up to ~√d on statistics-like matrices (measured: ×2 at d = 7, ×10-25 at d = 503),
so on wide layers the limit bites at κ₂ ≈ 1e10; real statistics sit far below (SmolLM2-135M,
100k tokens: κ₂ = 2e2-1e3). No O(d³) work is added to what the editors already factor on
the healthy path; a failed factorisation adds one more (`indefinite`), memoised with it.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .base import EditContext, SolveError

MAX_CONDITION = 1e12
# Relative to the largest diagonal entry. Statistics accumulated in float64 from float32 keys
# are accurate to ~1e-6 relative (seqedit.ops.second_moment_), so an eigenvalue below −1e-4 of
# the scale cannot be rounding of a PSD matrix.
NEGATIVE_TOLERANCE = 1e-4
# Asymmetry tolerated, relative to max |C|, per ulp of C's dtype: float64 accumulations stay far
# below it, float32 ones (~1e-7 per operation, summed over many tokens) within it.
_ASYMMETRY_ULPS = 1e4
_BLOCK_ROWS = 1024  # content checks go through C in row blocks, never a second d×d temporary


class Factor(NamedTuple):
    """A memoised factorisation: the factor, or the reason the solve must be refused (or both
    None where there is nothing to factor)."""

    chol: torch.Tensor | None
    refusal: str | None


def second_moment(ctx: EditContext, layer: int, d_in: int) -> torch.Tensor:
    """C for `layer` from the context's provider, validated (SolveError otherwise)."""
    c = ctx.require_second_moment(layer)
    expected = f"a floating-point [{d_in}, {d_in}] tensor (C = E[kkᵀ] of the layer's {d_in}-wide keys)"
    if not isinstance(c, torch.Tensor):
        raise SolveError(f"key statistics for layer {layer}: expected {expected}, got {type(c).__name__}")
    if tuple(c.shape) != (d_in, d_in) or not c.is_floating_point():
        raise SolveError(f"key statistics for layer {layer}: expected {expected}, got "
                         f"{list(c.shape)} {str(c.dtype).removeprefix('torch.')}")
    problem = ctx.derived(("second_moment_problem", layer), c, content_problem)
    if problem is not None:
        raise SolveError(f"key statistics C for layer {layer} {problem}; recompute them on the "
                         "unedited model (seqedit.stats.second_moments)")
    return c


def content_problem(c: torch.Tensor) -> str | None:
    """Why a square floating-point C cannot be a second moment E[kkᵀ], or None."""
    d = c.shape[0]
    bad = 0
    scale = 0.0
    asym = 0.0
    for i in range(0, d, _BLOCK_ROWS):
        rows = c[i:i + _BLOCK_ROWS]
        finite = torch.isfinite(rows)
        bad += int((~finite).sum())
        if bad:
            continue
        scale = max(scale, float(rows.abs().max()))
        asym = max(asym, float((rows - c[:, i:i + _BLOCK_ROWS].T).abs().max()))
    if bad:
        return f"has {bad} non-finite {'entry' if bad == 1 else 'entries'} (NaN or inf)"
    if scale == 0:
        return "is all zeros (no keys were accumulated)"
    diag = c.diagonal()
    if float(diag.min()) < 0:
        return (f"has a negative diagonal entry ({float(diag.min()):.3g} at index {int(diag.argmin())}), "
                "so it is not positive semi-definite as a second moment must be")
    tol = _ASYMMETRY_ULPS * torch.finfo(c.dtype).eps * scale
    if asym > tol:
        return f"is not symmetric (max |C − Cᵀ| = {asym:.3g}, {asym / scale:.2g} of max |C|)"
    return None


def spd_factor(a: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
    """(L, None) with a = L Lᵀ, or (None, why the matrix cannot be solved safely)."""
    if not bool(torch.isfinite(a).all()):
        return None, "has non-finite entries"
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        return None, f"is not positive definite (Cholesky failed at column {int(info)})"
    kappa = condition_estimate(a, chol)
    if not kappa <= MAX_CONDITION:
        return None, (f"is ill-conditioned (estimated condition number {kappa:.2g}, limit "
                      f"{MAX_CONDITION:.0e}: a float64 solve would be dominated by rounding)")
    return chol, None


def condition_estimate(a: torch.Tensor, chol: torch.Tensor) -> float:
    """Estimated κ₁ of SPD `a` from its Cholesky factor (a lower bound; see the module docstring)."""
    diag = chol.diagonal()
    ratio = float((diag.max() / diag.min()) ** 2)
    if not ratio <= MAX_CONDITION:
        return ratio  # already refused: the solves below would be spent on a foregone answer
    norm1 = float(a.abs().sum(0).max())
    inv = inverse_norm1(lambda x: torch.cholesky_solve(x, chol), None, a.shape[0], a.dtype, a.device)
    return max(ratio, norm1 * inv)


def inverse_norm1(solve: Callable[[torch.Tensor], torch.Tensor],
                  solve_t: Callable[[torch.Tensor], torch.Tensor] | None,
                  n: int, dtype: torch.dtype, device) -> float:
    """Lower bound on ‖A⁻¹‖₁ from solves with A (and Aᵀ; None: A is symmetric): Hager's
    iteration with Higham's extra test vector, as in LAPACK's xLACN2 (at most 5 iterations)."""
    solve_t = solve_t or solve
    x = torch.full((n, 1), 1.0 / n, dtype=dtype, device=device)
    est, j_old = 0.0, -1
    for _ in range(5):
        y = solve(x)
        new = float(y.abs().sum())
        if not new > est:  # no growth (or NaN): the previous estimate stands
            est = max(est, new) if new == new else float("inf")
            break
        est = new
        z = solve_t(torch.where(y >= 0, 1.0, -1.0).to(dtype))
        j = int(z.abs().argmax())
        if j == j_old or float(z.abs().max()) <= float((z * x).sum()):
            break
        x = torch.zeros_like(x)
        x[j] = 1.0
        j_old = j
    # Hager's iteration can stall on matrices built against it; this vector catches those.
    i = torch.arange(n, dtype=dtype, device=device)
    alt = (1 + i / max(n - 1, 1)) * torch.where(i % 2 == 0, 1.0, -1.0).to(dtype)
    alt_est = 2 * float(solve(alt[:, None]).abs().sum()) / (3 * n)
    return max(est, alt_est if alt_est == alt_est else float("inf"))


def indefinite(c: torch.Tensor) -> str | None:
    """Why `c` (which failed to factor) is clearly not PSD, or None if it is PSD to tolerance.

    C + μI, μ = NEGATIVE_TOLERANCE · max diag(C), is positive definite for every PSD C however
    singular, and not positive definite when C has an eigenvalue below −μ: one extra
    factorisation, paid only on this failure path and memoised with the factor.
    """
    c = c.to(torch.float64)
    mu = NEGATIVE_TOLERANCE * float(c.diagonal().max())
    shifted = c + mu * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    if int(torch.linalg.cholesky_ex(shifted)[1]) == 0:
        return None
    return (f"is indefinite (an eigenvalue below −{NEGATIVE_TOLERANCE:g}·max diag(C)), which a second "
            "moment E[kkᵀ] cannot be")
