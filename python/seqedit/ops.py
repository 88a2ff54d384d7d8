"""Public wrappers of the seqedit operators.

Every wrapper validates its inputs (raising ``TypeError``/``ValueError`` that name the argument),
then calls the compiled ``torch.ops.seqedit`` kernel for the tensors' device, or, when there is
none (extension not built, or built without CUDA), the pure-PyTorch version in
:mod:`seqedit.reference` after one ``RuntimeWarning``. Both give the same results up to rounding.

The in-place ops run under ``torch.no_grad()``: they edit weights, they are not part of a graph.

Singular vectors follow one sign convention everywhere: the largest-magnitude entry of each
left vector ``u_i`` is positive (the first such entry on ties) and ``v_i`` flips with it.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch

from seqedit import reference

__all__ = [
    "RankUpdateStats",
    "backends",
    "second_moment_",
    "second_moment_list_",
    "rank_update_",
    "rank_update_list_",
    "top_singular",
    "top_singular_factored",
    "DEFAULT_MAX_ITER",
]

DEFAULT_MAX_ITER = 100
"""Iteration cap of :func:`top_singular` when ``max_iter`` is None."""

_SEED = 0  # fixed: top_singular is deterministic
_KEY_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ACC_DTYPES = (torch.float32, torch.float64)
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _import_extension():
    try:
        from seqedit import _C
    except ImportError as exc:
        return None, f"seqedit._C could not be imported: {exc}"
    return _C, ""


_EXT, _EXT_REASON = _import_extension()


class RankUpdateStats(NamedTuple):
    """Statistics of one ``rank_update_``, accumulated in float64 in the same pass.

    ``abs_sum_w`` is Σ|W| after the update (as stored in W's dtype); ``abs_sum_delta`` and
    ``delta_fro_sq`` are Σ|ΔW| and ‖ΔW‖²_F of the update as computed (float32, or float64 for a
    float64 W), before it is rounded into W.
    """

    abs_sum_w: float
    abs_sum_delta: float
    delta_fro_sq: float


def backends() -> dict:
    """What is available: ``extension`` (compiled module imported), ``cpu``/``cuda`` (compiled
    kernels for that device), ``torch`` (version) and, without the extension, ``reason``."""
    info = {
        "extension": _EXT is not None,
        "cpu": _EXT is not None,
        "cuda": _EXT is not None and bool(_EXT.WITH_CUDA),
        "torch": torch.__version__,
    }
    if _EXT is None:
        info["reason"] = _EXT_REASON
    return info


def _impl(device: torch.device):
    """The namespace holding the kernels for ``device``: torch.ops.seqedit or the reference."""
    if _EXT is not None and (device.type == "cpu" or (device.type == "cuda" and _EXT.WITH_CUDA)):
        return torch.ops.seqedit
    why = _EXT_REASON or f"the extension has no {device.type} kernels"
    # Issued from this line, so Python's default filter shows it once per process and device.
    warnings.warn(
        f"seqedit.ops: using the slower pure-PyTorch reference for {device.type} tensors ({why})",
        RuntimeWarning,
        stacklevel=1,
    )
    return reference


# ---------------------------------------------------------------- validation helpers


def _tensor(name: str, t, ndims: tuple[int, ...], dtypes: tuple[torch.dtype, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} has dtype {t.dtype}; supported: {names}")


def _same_device(ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def _writable(name: str, t: torch.Tensor) -> None:
    # An expanded tensor (stride 0 over a dimension of size > 1) aliases its own elements, so
    # an in-place update of it would be garbage.
    if any(st == 0 and sz > 1 for st, sz in zip(t.stride(), t.shape)):
        raise ValueError(f"{name} has overlapping memory (expanded view); pass a real tensor")


def _one_device(name: str, tensors: Sequence[torch.Tensor]) -> None:
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"{name} must all be on one device, got {sorted(map(str, devices))}")


def _real(name: str, x) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return float(x)


def _int(name: str, x) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    return int(x)


def _same_length(**seqs) -> int:
    lengths = {name: len(s) for name, s in seqs.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"lists must have the same length, got {lengths}")
    return next(iter(lengths.values()))


def _as_list(name: str, x, n: int) -> list:
    if isinstance(x, (list, tuple)):
        if len(x) != n:
            raise ValueError(f"{name} has {len(x)} entries for {n} layers")
        return list(x)
    return [x] * n


# ---------------------------------------------------------------- second moment


def _check_second_moment(acc, keys, weights, where: str = "") -> None:
    _tensor(f"acc{where}", acc, (2,), _ACC_DTYPES)
    _tensor(f"keys{where}", keys, (2,), _KEY_DTYPES)
    if acc.shape[0] != acc.shape[1]:
        raise ValueError(f"acc{where} must be square, got shape {tuple(acc.shape)}")
    if keys.shape[1] != acc.shape[0]:
        raise ValueError(
            f"keys{where} has {keys.shape[1]} features but acc{where} is "
            f"{acc.shape[0]}x{acc.shape[1]}"
        )
    _writable(f"acc{where}", acc)
    if weights is not None:
        _tensor(f"weights{where}", weights, (1,), _FLOAT_DTYPES)
        if weights.shape[0] != keys.shape[0]:
            raise ValueError(
                f"weights{where} has {weights.shape[0]} entries for {keys.shape[0]} keys"
            )
    _same_device(f"acc{where}", acc, **{f"keys{where}": keys, f"weights{where}": weights})


def second_moment_(
    acc: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``acc += Σ_i w_i k_i k_iᵀ`` in place and return ``acc``.

    ``acc`` is ``[d, d]`` float32 or float64, ``keys`` ``[N, d]`` float32/bfloat16/float16,
    ``weights`` an optional ``[N]`` float tensor. Products are formed in float32 over blocks of
    keys and, for a float64 ``acc``, summed across blocks in float64, so the result stays within
    about 1e-6 (relative) of an all-float64 computation however many keys are accumulated.
    """
    _check_second_moment(acc, keys, weights)
    with torch.no_grad():
        _impl(acc.device).second_moment_(acc, keys, weights)
    return acc


def second_moment_list_(
    accs: Sequence[torch.Tensor],
    keys: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor | None] | None = None,
) -> list[torch.Tensor]:
    """:func:`second_moment_` for several layers in one call; returns ``accs`` as a list."""
    n = _same_length(accs=accs, keys=keys)
    weights = [None] * n if weights is None else list(weights)
    _same_length(accs=accs, weights=weights)
    for i, (a, k, w) in enumerate(zip(accs, keys, weights)):
        _check_second_moment(a, k, w, where=f"[{i}]")
    _one_device("accs", accs)
    if n:
        with torch.no_grad():
            _impl(accs[0].device).second_moment_list_(list(accs), list(keys), weights)
    return list(accs)


# ---------------------------------------------------------------- rank update


def _check_rank_update(weight, u, v, alpha, transposed, where: str = "") -> float:
    _tensor(f"weight{where}", weight, (2,), _FLOAT_DTYPES)
    _tensor(f"u{where}", u, (2,), _FLOAT_DTYPES)
    _tensor(f"v{where}", v, (2,), _FLOAT_DTYPES)
    if not isinstance(transposed, bool):
        raise TypeError(f"transposed{where} must be a bool, got {type(transposed).__name__}")
    if u.shape[1] != v.shape[1]:
        raise ValueError(
            f"u{where} {tuple(u.shape)} and v{where} {tuple(v.shape)} must have the same rank k"
        )
    m, n = u.shape[0], v.shape[0]
    expected = (n, m) if transposed else (m, n)
    if tuple(weight.shape) != expected:
        raise ValueError(
            f"weight{where} has shape {tuple(weight.shape)} but u{where} {tuple(u.shape)} and "
            f"v{where} {tuple(v.shape)} give {expected}"
            + (" (transposed=True)" if transposed else " (pass transposed=True for [in, out])")
        )
    _writable(f"weight{where}", weight)
    _same_device(f"weight{where}", weight, **{f"u{where}": u, f"v{where}": v})
    return _real(f"alpha{where}", alpha)


def _stats(t: torch.Tensor) -> RankUpdateStats:
    return RankUpdateStats(*t.tolist())


def rank_update_(
    weight: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    alpha: float = 1.0,
    *,
    transposed: bool = False,
    stats: bool = False,
) -> RankUpdateStats | None:
    """``W += α U Vᵀ`` in place (``U[m,k]``, ``V[n,k]``), in one pass over W.

    With ``transposed=True`` W is stored ``[n, m]`` (GPT-2 Conv1D) and gets ``α V Uᵀ``. The update
    is computed in float32 (float64 for a float64 W) and rounded into W's dtype once. W may have
    any layout. With ``stats=True`` returns :class:`RankUpdateStats` from the same pass.
    ``k = 0`` leaves W untouched.
    """
    alpha = _check_rank_update(weight, u, v, alpha, transposed)
    with torch.no_grad():
        out = _impl(weight.device).rank_update_(weight, u, v, alpha, transposed, stats)
    return _stats(out) if stats else None


def rank_update_list_(
    weights: Sequence[torch.Tensor],
    us: Sequence[torch.Tensor],
    vs: Sequence[torch.Tensor],
    alphas: float | Sequence[float] = 1.0,
    *,
    transposed: bool | Sequence[bool] = False,
    stats: bool = False,
) -> list[RankUpdateStats] | None:
    """:func:`rank_update_` for several layers in one call; ``alphas`` and ``transposed`` may be
    scalars or per-layer lists."""
    n = _same_length(weights=weights, us=us, vs=vs)
    alphas = _as_list("alphas", alphas, n)
    transposed = _as_list("transposed", transposed, n)
    alphas = [
        _check_rank_update(w, u, v, a, t, where=f"[{i}]")
        for i, (w, u, v, a, t) in enumerate(zip(weights, us, vs, alphas, transposed))
    ]
    _one_device("weights", weights)
    if n == 0:
        return [] if stats else None
    with torch.no_grad():
        out = _impl(weights[0].device).rank_update_list_(
            list(weights), list(us), list(vs), alphas, transposed, stats
        )
    return [_stats(t) for t in out] if stats else None


# ---------------------------------------------------------------- top singular


def top_singular(
    a: torch.Tensor, k: int, *, tol: float = 1e-4, max_iter: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets ``(S[k], U[m,k], V[n,k])`` of ``a[m,n]`` (or batched ``a[b,m,n]``).

    Randomized subspace iteration with oversampling and Rayleigh–Ritz, from a fixed seed (so
    deterministic). It stops when every residual ``‖A v_i − s_i u_i‖`` of the top k is at most
    ``tol·S[0]`` — then each ``S[i]`` is within ``tol·S[0]`` of a true singular value — or after
    ``max_iter`` iterations (default :data:`DEFAULT_MAX_ITER`), returning the estimate reached.
    float32/bfloat16/float16 inputs are computed and returned in float32, float64 in float64.
    """
    _tensor("a", a, (2, 3), _FLOAT_DTYPES)
    k = _int("k", k)
    m, n = a.shape[-2:]
    if not 1 <= k <= min(m, n):
        raise ValueError(f"k must be in [1, min(m, n) = {min(m, n)}] for a of shape "
                         f"{tuple(a.shape)}, got {k}")
    tol = _real("tol", tol)
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    max_iter = DEFAULT_MAX_ITER if max_iter is None else _int("max_iter", max_iter)
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    return tuple(_impl(a.device).top_singular(a, k, tol, max_iter, _SEED))


def top_singular_factored(
    u: torch.Tensor, v: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-k singular triplets of ``A = U Vᵀ`` from ``u[m,r]`` and ``v[n,r]`` (or batched
    ``[b,m,r]``, ``[b,n,r]``): QR of both factors and an SVD of the ``r x r`` core; ``A`` is never
    formed. ``k`` must be at most ``min(m, n, r)``."""
    _tensor("u", u, (2, 3), _FLOAT_DTYPES)
    _tensor("v", v, (u.dim(),), _FLOAT_DTYPES)
    if u.shape[-1] != v.shape[-1] or u.shape[:-2] != v.shape[:-2]:
        raise ValueError(
            f"u {tuple(u.shape)} and v {tuple(v.shape)} must share the rank r (last dim) "
            "and batch size"
        )
    _same_device("u", u, v=v)
    k = _int("k", k)
    limit = min(u.shape[-2], v.shape[-2], u.shape[-1])
    if not 1 <= k <= limit:
        raise ValueError(f"k must be in [1, min(m, n, r) = {limit}], got {k}")
    return tuple(_impl(u.device).top_singular_factored(u, v, k))


# ---------------------------------------------------------------- fake tensors (torch.compile)

if _EXT is not None:

    @torch.library.register_fake("seqedit::second_moment_")
    def _second_moment_fake(acc, keys, weights):
        return None

    @torch.library.register_fake("seqedit::second_moment_list_")
    def _second_moment_list_fake(accs, keys, weights):
        return None

    def _stats_like(weight, stats):
        return weight.new_empty((3 if stats else 0,), dtype=torch.float64)

    @torch.library.register_fake("seqedit::rank_update_")
    def _rank_update_fake(weight, u, v, alpha, transposed, stats):
        return _stats_like(weight, stats)

    @torch.library.register_fake("seqedit::rank_update_list_")
    def _rank_update_list_fake(weights, us, vs, alphas, transposed, stats):
        return [_stats_like(w, stats) for w in weights]

    def _triplets_like(lead, m, n, k, dtype, like):
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return (
            like.new_empty((*lead, k), dtype=dtype),
            like.new_empty((*lead, m, k), dtype=dtype),
            like.new_empty((*lead, n, k), dtype=dtype),
        )

    @torch.library.register_fake("seqedit::top_singular")
    def _top_singular_fake(a, k, tol, max_iter, seed):
        return _triplets_like(a.shape[:-2], a.shape[-2], a.shape[-1], k, a.dtype, a)

    @torch.library.register_fake("seqedit::top_singular_factored")
    def _top_singular_factored_fake(u, v, k):
        dtype = torch.promote_types(u.dtype, v.dtype)
        return _triplets_like(u.shape[:-2], u.shape[-2], v.shape[-2], k, dtype, u)
