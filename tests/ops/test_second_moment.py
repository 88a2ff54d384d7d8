"""second_moment_ against a float64 oracle, for the compiled kernel and the reference.

Tolerances are the classic rounding-error bound of a dot product: an entry that is a sum of n
rounded products, then added to acc, is off by at most γ_{n+3}·(|acc₀| + Σ_i |w_i||k_i||k_i|ᵀ)
with γ_n ≈ n·u (u = unit roundoff of the arithmetic: 2⁻²⁴ float32, 2⁻⁵³ float64; the +3 covers
the weight multiply, the cast of the weights and the final add). The compiled kernel forms
products in float32 and sums at most BLOCK of them before switching to acc's dtype, so with a
float64 acc its bound is γ_{BLOCK+3} in float32 units whatever N is; the reference computes in
acc's dtype throughout.
"""

import pytest
import torch

from seqedit import ops

HAS_EXT = ops.backends()["extension"]

U32 = 2.0**-24
U64 = 2.0**-53
BLOCK = 256  # kBlockRows in csrc/cpu/second_moment.cpp

# d = 257 and 520 split into 2 and 3 tiles (few tile pairs: blocks of keys are split across
# threads); d = 1300 into 6 tiles (21 pairs: each pair is one work item).
SHAPES = [(0, 5), (1, 1), (7, 1), (13, 3), (300, 17), (600, 257), (413, 520), (40, 1300)]
KEY_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_keys(n, d, dtype, device, seed, layout="contiguous"):
    """Random keys with a nonzero mean (like real activations), in the requested memory layout."""
    g = torch.Generator().manual_seed(seed)
    if layout == "transposed":
        k = (torch.randn(d, n, generator=g) + 0.5).T
    elif layout == "strided":
        k = (torch.randn(n, 2 * d, generator=g) + 0.5)[:, ::2]
    else:
        k = torch.randn(n, d, generator=g) + 0.5
    return k.to(dtype=dtype, device=device)


def make_acc(d, dtype, device, seed, layout="contiguous"):
    g = torch.Generator().manual_seed(seed + 1)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = (a + a.T).to(dtype)
    if layout == "strided":  # a view into a larger buffer
        big = torch.zeros(d + 3, d + 5, dtype=dtype)
        big[1 : d + 1, 2 : d + 2] = a
        return big.to(device)[1 : d + 1, 2 : d + 2]
    return a.to(device)


def error_bound(acc0, keys, weights, acc_dtype, compiled):
    k = keys.double().cpu().abs()
    w = torch.ones(k.shape[0], dtype=torch.float64) if weights is None else weights.double().cpu()
    mag = acc0.double().cpu().abs() + (k * w.abs()[:, None]).T @ k
    n = keys.shape[0]
    if acc_dtype == torch.float32:
        terms, u = n, U32
    elif compiled:
        terms, u = min(n, BLOCK), U32
    else:
        terms, u = n, U64
    return (terms + 3) * u * mag


def check_against_float64(impl, device, n, d, key_dtype, acc_dtype, weighted, seed,
                          key_layout="contiguous", acc_layout="contiguous"):
    keys = make_keys(n, d, key_dtype, device, seed, key_layout)
    weights = None
    if weighted:
        g = torch.Generator().manual_seed(seed + 2)
        weights = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 0.5).to(device)
    acc = make_acc(d, acc_dtype, device, seed, acc_layout)
    acc0 = acc.clone()
    impl.second_moment_(acc, keys, weights)

    k64 = keys.double()
    kw64 = k64 if weights is None else k64 * weights.double()[:, None]
    expected = acc0.double() + kw64.T @ k64
    bound = error_bound(acc0, keys, weights, acc_dtype, impl is torch.ops.seqedit)
    err = (acc.double() - expected).abs().cpu()
    assert acc.dtype == acc_dtype
    assert bool((err <= bound).all()), f"max err/bound {(err / bound).max().item():.3g}"


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("acc_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("key_dtype", KEY_DTYPES)
def test_matches_float64(impl, n, d, key_dtype, acc_dtype):
    check_against_float64(impl, "cpu", n, d, key_dtype, acc_dtype, weighted=False, seed=n + d)


@pytest.mark.parametrize("key_dtype", KEY_DTYPES)
@pytest.mark.parametrize("n,d", [(1, 1), (300, 17), (413, 520)])
def test_weights(impl, n, d, key_dtype):
    check_against_float64(impl, "cpu", n, d, key_dtype, torch.float64, weighted=True, seed=7)


@pytest.mark.parametrize("key_layout", ["transposed", "strided"])
@pytest.mark.parametrize("acc_layout", ["contiguous", "strided"])
def test_non_contiguous(impl, key_layout, acc_layout):
    check_against_float64(impl, "cpu", 301, 270, torch.float32, torch.float64, weighted=True,
                          seed=3, key_layout=key_layout, acc_layout=acc_layout)


def test_no_keys_is_a_no_op(impl):
    acc = make_acc(6, torch.float64, "cpu", 0)
    before = acc.clone()
    impl.second_moment_(acc, torch.empty(0, 6), None)
    assert torch.equal(acc, before)


def test_list_form(impl):
    accs = [make_acc(d, dt, "cpu", d) for d, dt in [(5, torch.float64), (300, torch.float32)]]
    keys = [make_keys(40, 5, torch.bfloat16, "cpu", 1),
            make_keys(600, 300, torch.float32, "cpu", 2)]
    weights = [torch.rand(40, dtype=torch.float64), None]
    before = [a.clone() for a in accs]
    impl.second_moment_list_(accs, keys, weights)
    for a, a0, k, w in zip(accs, before, keys, weights):
        k64 = k.double()
        kw64 = k64 if w is None else k64 * w[:, None]
        err = (a.double() - a0.double() - kw64.T @ k64).abs()
        # The float32 bound (n terms) covers both layers and both implementations.
        assert bool((err <= error_bound(a0, k, w, torch.float32, False)).all())


@pytest.mark.skipif(not HAS_EXT, reason="extension not built")
@pytest.mark.parametrize("n,d", [(2000, 300), (300, 1300)])  # blocks split over items; 21 pairs
def test_same_bits_for_any_thread_count(n, d):
    keys = make_keys(n, d, torch.bfloat16, "cpu", 4)
    weights = torch.rand(n, generator=torch.Generator().manual_seed(4))
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            acc = make_acc(d, torch.float64, "cpu", 4)
            torch.ops.seqedit.second_moment_(acc, keys, weights)
            results.append(acc)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(r, results[0]) for r in results[1:])


@pytest.mark.skipif(not HAS_EXT, reason="extension not built")
def test_float64_accuracy_does_not_drift_at_a_million_keys():
    """10⁶ keys streamed into a float64 acc stay within 1e-6 (relative, Frobenius) of float64
    arithmetic; the same stream accumulated in float32 (``acc32 += kᵀk`` per chunk) drifts: its
    error grows with N and ends two orders of magnitude above ours."""
    d, chunk, n_total = 32, 1 << 16, 10**6
    g = torch.Generator().manual_seed(0)
    ours = torch.zeros(d, d, dtype=torch.float64)
    exact = torch.zeros(d, d, dtype=torch.float64)
    naive = torch.zeros(d, d, dtype=torch.float32)
    naive_err = []
    for start in range(0, n_total, chunk):
        k = torch.randn(min(chunk, n_total - start), d, generator=g) + 0.5
        ops.second_moment_(ours, k)
        k64 = k.double()
        exact.addmm_(k64.T, k64)
        naive.addmm_(k.T, k)
        naive_err.append(((naive.double() - exact).norm() / exact.norm()).item())
    ours_err = ((ours - exact).norm() / exact.norm()).item()
    assert ours_err <= 1e-6
    assert naive_err[-1] > 100 * ours_err
    assert naive_err[-1] > 2 * naive_err[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCUDA:
    @pytest.mark.parametrize("n,d", SHAPES)
    @pytest.mark.parametrize("acc_dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("key_dtype", KEY_DTYPES)
    def test_matches_float64(self, cuda_impl, n, d, key_dtype, acc_dtype):
        check_against_float64(cuda_impl, "cuda", n, d, key_dtype, acc_dtype, False, seed=n + d)

    @pytest.mark.parametrize("key_dtype", KEY_DTYPES)
    def test_weights(self, cuda_impl, key_dtype):
        check_against_float64(cuda_impl, "cuda", 413, 520, key_dtype, torch.float64, True, seed=7)

    @pytest.mark.parametrize("key_layout", ["transposed", "strided"])
    @pytest.mark.parametrize("acc_layout", ["contiguous", "strided"])
    def test_non_contiguous(self, cuda_impl, key_layout, acc_layout):
        check_against_float64(cuda_impl, "cuda", 301, 270, torch.float32, torch.float64, True,
                              seed=3, key_layout=key_layout, acc_layout=acc_layout)

    def test_no_keys_is_a_no_op(self, cuda_impl):
        acc = make_acc(6, torch.float64, "cuda", 0)
        before = acc.clone()
        cuda_impl.second_moment_(acc, torch.empty(0, 6, device="cuda"), None)
        assert torch.equal(acc, before)
