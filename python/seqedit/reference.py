"""Pure-PyTorch reference of every seqedit op.

Each function takes exactly the arguments of the ``torch.ops.seqedit`` op of the same name and
returns what the op returns, so :mod:`seqedit.ops` can dispatch to either one. The code is kept
straightforward on purpose: it is the test oracle, the fallback when the compiled extension is
missing, and the baseline of ``bench/ops.py``. Input validation lives in :mod:`seqedit.ops`.
"""

from __future__ import annotations

import torch

__all__ = [
    "second_moment_",
    "second_moment_list_",
    "rank_update_",
    "rank_update_list_",
    "top_singular",
    "top_singular_factored",
    "oversampled_rank",
    "canonical_signs",
]


def second_moment_(acc: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor | None) -> None:
    """``acc += Σ_i w_i k_i k_iᵀ``, computed entirely in ``acc``'s dtype."""
    k = keys.to(acc.dtype)
    kw = k if weights is None else k * weights.to(acc.dtype).unsqueeze(1)
    acc.addmm_(kw.T, k)


def second_moment_list_(accs, keys, weights) -> None:
    for acc, k, w in zip(accs, keys, weights, strict=True):
        second_moment_(acc, k, w)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rank_update_(
    weight: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    alpha: float,
    transposed: bool,
    stats: bool,
) -> torch.Tensor:
    """``W += α U Vᵀ`` (``α V Uᵀ`` when ``transposed``), rounded into W's dtype once.

    Returns float64 ``[Σ|W_new|, Σ|ΔW|, ‖ΔW‖²_F]`` when ``stats`` (ΔW is the update as computed,
    before rounding into W's dtype), else an empty float64 tensor.
    """
    cdt = _compute_dtype(weight.dtype)
    delta = alpha * (u.to(cdt) @ v.to(cdt).T)
    if transposed:
        delta = delta.T
    if u.shape[1]:  # k = 0 must not touch W (W + 0 would turn -0.0 into +0.0)
        weight.copy_(weight.to(cdt) + delta)
    if not stats:
        return torch.empty(0, dtype=torch.float64, device=weight.device)
    delta64 = delta.double()
    return torch.stack(
        [weight.double().abs().sum(), delta64.abs().sum(), delta64.square().sum()]
    )


def rank_update_list_(weights, us, vs, alphas, transposed, stats) -> list[torch.Tensor]:
    return [
        rank_update_(w, u, v, a, t, stats)
        for w, u, v, a, t in zip(weights, us, vs, alphas, transposed, strict=True)
    ]


def oversampled_rank(k: int, m: int, n: int) -> int:
    """Width of the iterated subspace: k plus max(k, 10) extra columns, at most min(m, n).

    More columns make subspace iteration converge like (σ_p/σ_k)^(2·iterations) with a smaller
    ratio, at a cost linear in the width.
    """
    return min(m, n, k + max(k, 10))


def canonical_signs(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each singular pair (u_i, v_i) so the largest-magnitude entry of u_i is positive
    (the first such entry on ties); a zero column is left as is."""
    idx = u.abs().argmax(dim=-2, keepdim=True)
    sign = torch.sign(u.gather(-2, idx))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return (u * sign).contiguous(), (v * sign).contiguous()


def _random_start(n: int, p: int, seed: int, dtype: torch.dtype, device) -> torch.Tensor:
    # Drawn on the CPU generator so every backend starts from the same block.
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(n, p, generator=gen, dtype=dtype).to(device)


def top_singular(
    a: torch.Tensor, k: int, tol: float, max_iter: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets of ``a[..., m, n]`` by randomized subspace iteration.

    Every iteration multiplies by Aᵀ and A once, takes the Rayleigh–Ritz approximation from the
    current basis Q (``Aᵀ Q = Ṽ Σ Ỹᵀ`` gives ``U = Q Ỹ``, ``V = Ṽ``, exact ``Aᵀ U = V Σ``) and stops
    when every residual ``‖A v_i − σ_i u_i‖`` (i < k) is at most ``tol·σ_0``: each σ_i is then
    within ``tol·σ_0`` of a singular value of A.
    """
    cdt = _compute_dtype(a.dtype)
    batched = a.dim() == 3
    A = (a if batched else a.unsqueeze(0)).to(cdt)
    m, n = A.shape[-2:]
    p = oversampled_rank(k, m, n)
    av = (_random_start(n, p, seed, cdt, A.device).mT @ A.mT).mT  # the kernel's product order
    if not bool(torch.isfinite(av).all()):
        raise ValueError("top_singular: a contains non-finite values")
    for _ in range(max_iter):
        q = torch.linalg.qr(av).Q
        vt, s, yh = torch.linalg.svd((q.mT @ A).mT, full_matrices=False)
        u, v = q @ yh.mH, vt
        av = (v.mT @ A.mT).mT
        resid = torch.linalg.vector_norm(av[..., :k] - u[..., :k] * s[..., None, :k], dim=-2)
        if bool((resid.amax(dim=-1) <= tol * s[..., 0]).all()):
            break
    u, v = canonical_signs(u[..., :k], v[..., :k])
    s = s[..., :k].contiguous()
    return (s, u, v) if batched else (s[0], u[0], v[0])


def top_singular_factored(
    u: torch.Tensor, v: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets of ``A = U Vᵀ`` from QR of both factors and an SVD of the core."""
    cdt = _compute_dtype(torch.promote_types(u.dtype, v.dtype))
    qu, ru = torch.linalg.qr(u.to(cdt))
    qv, rv = torch.linalg.qr(v.to(cdt))
    x, s, yh = torch.linalg.svd(ru @ rv.mT, full_matrices=False)
    uu, vv = canonical_signs(qu @ x[..., :k], qv @ yh.mH[..., :k])
    return s[..., :k].contiguous(), uu, vv
