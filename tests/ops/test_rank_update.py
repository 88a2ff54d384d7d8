"""rank_update_ against a float64 oracle, for the compiled kernel and the reference.

Tolerances. The update ΔW = α U Vᵀ is computed in float32 (float64 for a float64 W): each entry
is a k-term dot product plus the casts of U, V and the multiply by α, so it is off by at most
e = γ_{k+4}·|α|·(|U||V|ᵀ) with γ_n ≈ n·u_c. The sum W + ΔŴ is rounded once in the compute dtype
(u_c) and once into W's dtype (u_w, 0 for float32/float64), so
|W_out − W_exact| ≤ e + (u_c + u_w)·(1.01·|W_exact|) + (half the subnormal spacing of W's dtype)
plus the rounding of the float64 oracle itself (which matters only for a float64 W).
The statistics are float64 sums of per-entry quantities: Σ|ΔW| is off by at most Σe and
‖ΔW‖²_F by Σ(2|ΔW| + e)·e, plus a float64 summation term of ~1e-10 relative.
"""

import pytest
import torch

from seqedit import ops, reference

HAS_EXT = ops.backends()["extension"]

W_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# (40, 1100): two column tiles; (300, 129): two row tiles (see kTileElems in rank_update.cpp).
SHAPES = [(1, 1, 1), (1, 7, 3), (5, 1, 2), (17, 33, 1), (40, 1100, 4), (300, 129, 16)]


U64 = 2.0**-53


def unit_roundoff(dtype):
    return torch.finfo(dtype).eps / 2


def make_factors(m, n, k, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(m, k, generator=g).to(dtype=dtype, device=device)
    v = torch.randn(n, k, generator=g).to(dtype=dtype, device=device)
    return u, v


def make_weight(shape, dtype, device, seed, layout="contiguous"):
    """W with values like a trained layer (not zeros), in the requested memory layout."""
    g = torch.Generator().manual_seed(seed + 100)
    rows, cols = shape
    if layout == "colmajor":
        return torch.randn(cols, rows, generator=g).to(dtype=dtype, device=device).T
    if layout == "rowpadded":
        return torch.randn(rows, cols + 3, generator=g).to(dtype=dtype, device=device)[:, 1:-2]
    if layout == "strided":
        big = torch.randn(2 * rows, 3 * cols, generator=g).to(dtype=dtype, device=device)
        return big[::2, ::3]
    return torch.randn(rows, cols, generator=g).to(dtype=dtype, device=device)


def oracle(w0, u, v, alpha, transposed):
    """Exact result in float64, its error bound, the exact ΔW and the bound on ΔW (storage
    orientation)."""
    compute = torch.float64 if w0.dtype == torch.float64 else torch.float32
    uc = unit_roundoff(compute)
    uw = 0.0 if w0.dtype in (torch.float32, torch.float64) else unit_roundoff(w0.dtype)
    delta = alpha * (u.double() @ v.double().T)
    mag = u.double().abs() @ v.double().abs().T
    delta_err = (u.shape[1] + 4) * uc * abs(alpha) * mag
    if transposed:
        delta, delta_err, mag = delta.T, delta_err.T, mag.T
    exact = w0.double() + delta
    subnormal = torch.finfo(w0.dtype).tiny * torch.finfo(w0.dtype).eps
    # The float64 oracle rounds too; that matters when the op itself computes in float64.
    oracle_err = (u.shape[1] + 2) * U64 * (abs(alpha) * mag + exact.abs())
    bound = delta_err + (uc + uw) * 1.01 * exact.abs() + subnormal + oracle_err
    return exact, bound, delta, delta_err


def check_update(impl, device, m, n, k, w_dtype, transposed, seed, layout="contiguous",
                 uv_dtype=torch.float32, alpha=0.75):
    u, v = make_factors(m, n, k, uv_dtype, device, seed)
    w = make_weight((n, m) if transposed else (m, n), w_dtype, device, seed, layout)
    base_before = w._base.clone() if w._base is not None else None
    w0 = w.clone()
    stats = impl.rank_update_(w, u, v, alpha, transposed, True)

    exact, bound, delta, delta_err = oracle(w0, u, v, alpha, transposed)
    err = (w.double() - exact).abs()
    assert w.dtype == w_dtype
    assert bool((err <= bound).all()), f"max err/bound {(err / bound).max().item():.3g}"
    if base_before is not None:  # entries of the underlying buffer outside the view untouched
        mask = torch.ones_like(base_before, dtype=torch.bool)
        offset = w.storage_offset() - w._base.storage_offset()
        mask.as_strided(w.shape, w.stride(), offset).fill_(False)
        assert torch.equal(w._base[mask], base_before[mask])

    assert stats.dtype == torch.float64 and stats.shape == (3,)
    abs_w, abs_d, sq_d = stats.tolist()
    assert abs_w == pytest.approx(w.double().abs().sum().item(), rel=1e-10)
    assert abs(abs_d - delta.abs().sum().item()) <= delta_err.sum().item() + 1e-10 * abs_d
    sq_bound = ((2 * delta.abs() + delta_err) * delta_err).sum().item()
    assert abs(sq_d - delta.square().sum().item()) <= sq_bound + 1e-10 * sq_d


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("w_dtype", W_DTYPES)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_matches_float64(impl, m, n, k, w_dtype, transposed):
    check_update(impl, "cpu", m, n, k, w_dtype, transposed, seed=m * n + k)


@pytest.mark.parametrize("uv_dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_factor_dtypes(impl, uv_dtype):
    check_update(impl, "cpu", 40, 70, 5, torch.float32, False, seed=1, uv_dtype=uv_dtype)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("layout", ["colmajor", "rowpadded", "strided"])
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_weight(impl, layout, w_dtype, transposed):
    check_update(impl, "cpu", 37, 1100, 3, w_dtype, transposed, seed=5, layout=layout)


def test_negative_and_zero_alpha(impl):
    check_update(impl, "cpu", 20, 30, 2, torch.float32, False, seed=2, alpha=-3.5)
    check_update(impl, "cpu", 20, 30, 2, torch.bfloat16, True, seed=2, alpha=0.0)


@pytest.mark.parametrize("w_dtype", W_DTYPES)
def test_rank_zero_leaves_weight_untouched(impl, w_dtype):
    w = make_weight((6, 9), w_dtype, "cpu", 0)
    w[0, 0] = -0.0  # even the sign of a zero must survive
    before = w.clone()
    stats = impl.rank_update_(w, torch.empty(6, 0), torch.empty(9, 0), 2.0, False, True)
    assert torch.equal(w, before) and torch.signbit(w[0, 0])
    assert stats.tolist() == pytest.approx([before.double().abs().sum().item(), 0.0, 0.0])


def test_no_stats_returns_empty(impl):
    w = make_weight((4, 5), torch.float32, "cpu", 0)
    out = impl.rank_update_(w, *make_factors(4, 5, 2, torch.float32, "cpu", 0), 1.0, False, False)
    assert out.numel() == 0


def test_list_form(impl):
    layers = [  # (m, n, k, dtype, transposed, alpha)
        (20, 30, 1, torch.float32, False, 0.5),
        (30, 20, 4, torch.bfloat16, True, -2.0),
        (5, 7, 3, torch.float64, False, 1.0),
    ]
    weights, us, vs = [], [], []
    for i, (m, n, k, dt, tr, _) in enumerate(layers):
        u, v = make_factors(m, n, k, torch.float32, "cpu", i)
        weights.append(make_weight((n, m) if tr else (m, n), dt, "cpu", i))
        us.append(u)
        vs.append(v)
    before = [w.clone() for w in weights]
    out = impl.rank_update_list_(weights, us, vs, [a for *_, a in layers],
                                 [tr for *_, tr, _ in layers], True)
    assert len(out) == len(layers)
    for w, w0, u, v, stats, (*_, tr, alpha) in zip(weights, before, us, vs, out, layers):
        exact, bound, delta, _ = oracle(w0, u, v, alpha, tr)
        assert bool(((w.double() - exact).abs() <= bound).all())
        assert stats[1].item() == pytest.approx(delta.abs().sum().item(), rel=1e-5)


@pytest.mark.skipif(not HAS_EXT, reason="extension not built")
@pytest.mark.parametrize("bad", ["shape", "alpha"])
def test_compiled_list_checks_every_layer_before_changing_one(bad):
    """The kernel itself (not only the Python wrapper) refuses a list with one bad entry whole."""
    u, v = make_factors(6, 5, 2, torch.float32, "cpu", 0)
    w0 = make_weight((6, 5), torch.float32, "cpu", 0)
    w1 = make_weight((6, 5), torch.float32, "cpu", 1)
    before = (w0.clone(), w1.clone())
    us, alphas = [u, u], [1.0, 1.0]
    if bad == "shape":
        us = [u, u[:4]]
    else:
        alphas = [1.0, float("nan")]
    with pytest.raises(ValueError, match="rank_update_"):
        torch.ops.seqedit.rank_update_list_([w0, w1], us, [v, v], alphas, [False, False], True)
    assert torch.equal(w0, before[0]) and torch.equal(w1, before[1])


@pytest.mark.skipif(not HAS_EXT, reason="extension not built")
def test_same_bits_for_any_thread_count():
    threads = torch.get_num_threads()
    u, v = make_factors(300, 2000, 8, torch.float32, "cpu", 0)
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            w = make_weight((300, 2000), torch.bfloat16, "cpu", 0)
            stats = torch.ops.seqedit.rank_update_(w, u, v, 0.1, False, True)
            results.append((w, stats))
    finally:
        torch.set_num_threads(threads)
    for w, stats in results[1:]:
        assert torch.equal(w, results[0][0]) and torch.equal(stats, results[0][1])


@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float16])
def test_rounds_once_to_nearest_even_and_propagates_nan_inf(impl, w_dtype):
    """With k = 1 and α = 1 the float32 update is a single product, so the result must equal
    PyTorch's own float32 → dtype rounding bit for bit: ties to even, NaN and ±inf kept."""
    eps = torch.finfo(w_dtype).eps
    w = torch.tensor([[1.0, 1.0, 1.0, -2.5, float("nan"), 3.0, 0.0]], dtype=w_dtype)
    v = torch.tensor([[eps / 2], [3 * eps / 2], [eps / 4], [float("inf")], [1.0], [float("nan")],
                      [-1e-30]])
    u = torch.ones(1, 1)
    expected = (w.float() + (u @ v.T)).to(w_dtype)
    impl.rank_update_(w, u, v, 1.0, False, False)
    assert torch.equal(w.isnan(), expected.isnan())
    assert torch.equal(w.nan_to_num(), expected.nan_to_num())


def test_reference_is_straightforward_equivalent():
    """The reference computes exactly what the docs say: one rounding of W + ΔW into W's dtype."""
    w = make_weight((3, 4), torch.bfloat16, "cpu", 0)
    u, v = make_factors(3, 4, 2, torch.float32, "cpu", 0)
    expected = (w.float() + 0.3 * (u @ v.T)).to(torch.bfloat16)
    reference.rank_update_(w, u, v, 0.3, False, False)
    assert torch.equal(w, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCUDA:
    @pytest.mark.parametrize("transposed", [False, True])
    @pytest.mark.parametrize("w_dtype", W_DTYPES)
    @pytest.mark.parametrize("m,n,k", SHAPES)
    def test_matches_float64(self, cuda_impl, m, n, k, w_dtype, transposed):
        check_update(cuda_impl, "cuda", m, n, k, w_dtype, transposed, seed=m * n + k)

    @pytest.mark.parametrize("transposed", [False, True])
    @pytest.mark.parametrize("layout", ["colmajor", "rowpadded", "strided"])
    def test_non_contiguous_weight(self, cuda_impl, layout, transposed):
        check_update(cuda_impl, "cuda", 37, 1100, 3, torch.bfloat16, transposed, seed=5,
                     layout=layout)

    def test_rank_zero_leaves_weight_untouched(self, cuda_impl):
        w = make_weight((6, 9), torch.float32, "cuda", 0)
        before = w.clone()
        empty = torch.empty(6, 0, device="cuda"), torch.empty(9, 0, device="cuda")
        stats = cuda_impl.rank_update_(w, *empty, 2.0, False, True)
        assert torch.equal(w, before)
        assert stats.tolist() == pytest.approx([before.double().abs().sum().item(), 0.0, 0.0])
