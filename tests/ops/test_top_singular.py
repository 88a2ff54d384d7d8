"""top_singular / top_singular_factored on matrices with known spectra, for both implementations.

The truth is a float64 SVD of the very matrix passed in (after its rounding to the input dtype).
What is checked, with slack = tol + 100·ε of the compute dtype (float32 for half inputs):
- the stopping rule: every residual ‖A v_i − s_i u_i‖ ≤ slack·s_0;
- singular values: each s_i within slack·s_0 of the true σ_i (a residual r bounds the distance of
  s_i to the spectrum by r; ordering makes it the i-th);
- orthonormal U and V (to 100·ε);
- subspaces, never single vectors inside a cluster: for each group of (near-)equal true values
  lying wholly inside the top k, Wedin's theorem bounds ‖sin Θ‖ between the computed and true
  spans by √g·slack·s_0 / δ (g the group size, δ the gap to the rest of the spectrum); we allow 2×.
"""

import math

import pytest
import torch

from seqedit import ops, reference

HAS_EXT = ops.backends()["extension"]
SEED = 0  # the op's fixed seed, as ops.top_singular passes it
MAX_ITER = ops.DEFAULT_MAX_ITER


@pytest.fixture(autouse=True)
def one_thread():
    """top_singular has no threading of its own (only ATen calls on small matrices here). On a
    shared 2-core machine the OpenMP fork/join around each tiny BLAS/LAPACK call was measured at
    ~200x the work itself, so these tests run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compute_eps(dtype):
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


def spectrum(kind, r):
    i = torch.arange(r, dtype=torch.float64)
    if kind == "decaying":
        return 0.8**i
    if kind == "clustered":  # three values 1e-3 apart, then a gap, then decay
        return torch.cat([torch.tensor([1.0, 0.999, 0.998]), 0.5 * 0.85 ** i[3:]])[:r]
    if kind == "repeated":  # a triple value on top, a double value further down
        return torch.cat([torch.tensor([2.0, 2.0, 2.0, 1.0, 0.6, 0.6]), 0.4 * 0.8 ** i[6:]])[:r]
    raise ValueError(kind)


def known_matrix(m, n, kind, dtype, device, seed, batch=()):
    """A = Q1 diag(s) Q2ᵀ with random orthonormal Q1, Q2."""
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    q1 = torch.linalg.qr(torch.randn(*batch, m, r, generator=g, dtype=torch.float64))[0]
    q2 = torch.linalg.qr(torch.randn(*batch, n, r, generator=g, dtype=torch.float64))[0]
    a = (q1 * spectrum(kind, r)) @ q2.mT
    return a.to(dtype=dtype, device=device)


def groups(s, k, rel_gap):
    """Index groups of consecutive true singular values closer than rel_gap·s_0 that lie wholly
    in the top k, with the gap δ separating each group from the rest of the spectrum."""
    out, start = [], 0
    for i in range(1, len(s) + 1):
        if i == len(s) or s[i - 1] - s[i] > rel_gap * s[0]:
            if i <= k:
                below = s[i].item() if i < len(s) else 0.0
                above = s[start - 1].item() if start > 0 else math.inf
                delta = min(s[i - 1].item() - below, above - s[start].item())
                out.append((start, i, delta))
            start = i
    return out


def check_triplets(a, k, S, U, V, tol, sv_only=False, eps=None):
    """Check (S, U, V) against a float64 SVD of a (a single matrix); eps is the machine epsilon
    of the arithmetic that produced them (by default, the one top_singular uses for a)."""
    eps = compute_eps(a.dtype) if eps is None else eps
    slack = tol + 100 * eps
    A = a.double().cpu()
    S, U, V = S.double().cpu(), U.double().cpu(), V.double().cpu()
    m, n = A.shape
    assert S.shape == (k,) and U.shape == (m, k) and V.shape == (n, k)
    tu, ts, tvh = torch.linalg.svd(A, full_matrices=False)
    s0 = ts[0].item()
    assert bool((S[:-1] >= S[1:]).all()), "singular values not sorted"
    assert (S - ts[:k]).abs().max().item() <= slack * s0 + 1e-300
    eye = torch.eye(k, dtype=torch.float64)
    assert (U.T @ U - eye).abs().max().item() <= 100 * eps
    assert (V.T @ V - eye).abs().max().item() <= 100 * eps
    resid = torch.linalg.vector_norm(A @ V - U * S, dim=0)
    assert resid.max().item() <= slack * s0 + 1e-300
    if sv_only:
        return
    # The documented sign convention: the largest-magnitude entry of each u_i is positive.
    assert bool((U.gather(0, U.abs().argmax(0, keepdim=True)) >= 0).all())
    for lo, hi, delta in groups(ts, k, rel_gap=1e-2):
        g = hi - lo
        bound = 2 * math.sqrt(g) * slack * s0 / delta
        for ours, truth in ((U[:, lo:hi], tu[:, lo:hi]), (V[:, lo:hi], tvh.T[:, lo:hi])):
            sin_theta = torch.linalg.matrix_norm(ours - truth @ (truth.T @ ours), ord=2).item()
            assert sin_theta <= bound, f"group {lo}:{hi} sinΘ {sin_theta:.2e} > {bound:.2e}"


def run(impl, a, k, tol=1e-4, max_iter=MAX_ITER):
    return impl.top_singular(a, k, tol, max_iter, SEED)


@pytest.mark.parametrize("kind", ["decaying", "clustered", "repeated"])
@pytest.mark.parametrize("m,n,k", [(40, 30, 1), (40, 30, 3), (30, 70, 5), (64, 64, 16)])
def test_known_spectra(impl, m, n, k, kind):
    a = known_matrix(m, n, kind, torch.float32, "cpu", seed=m + n + k)
    check_triplets(a, k, *run(impl, a, k), tol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtypes(impl, dtype):
    a = known_matrix(50, 35, "repeated", dtype, "cpu", seed=1)
    S, U, V = run(impl, a, 4)
    assert S.dtype == U.dtype == V.dtype == (dtype if dtype == torch.float64 else torch.float32)
    check_triplets(a, 4, S, U, V, tol=1e-4)


def test_float64_tight_tolerance(impl):
    a = known_matrix(60, 45, "decaying", torch.float64, "cpu", seed=2)
    check_triplets(a, 6, *run(impl, a, 6, tol=1e-12), tol=1e-12)


def test_gaussian_matrix(impl):
    """No low-rank structure: a slowly decaying spectrum needs many iterations."""
    a = torch.randn(60, 40, generator=torch.Generator().manual_seed(3))
    check_triplets(a, 3, *run(impl, a, 3), tol=1e-4, sv_only=True)


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 6, 1), (6, 1, 1), (20, 20, 20), (12, 9, 9)])
def test_tiny_and_full_rank_requests(impl, m, n, k):
    a = torch.randn(m, n, generator=torch.Generator().manual_seed(m * n), dtype=torch.float64)
    check_triplets(a, k, *run(impl, a, k), tol=1e-4)


@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_non_contiguous(impl, layout):
    base = known_matrix(70, 60, "decaying", torch.float32, "cpu", seed=4)
    a = base.T if layout == "transposed" else base[::2, 1::2]
    check_triplets(a, 3, *run(impl, a, 3), tol=1e-4)


def test_batched(impl):
    a = known_matrix(30, 25, "clustered", torch.float32, "cpu", seed=5, batch=(3,))
    S, U, V = run(impl, a, 4)
    assert S.shape == (3, 4) and U.shape == (3, 30, 4) and V.shape == (3, 25, 4)
    for i in range(3):
        check_triplets(a[i], 4, S[i], U[i], V[i], tol=1e-4)


def test_deterministic(impl):
    a = known_matrix(50, 40, "repeated", torch.float32, "cpu", seed=6)
    first, second = run(impl, a, 5), run(impl, a, 5)
    assert all(torch.equal(x, y) for x, y in zip(first, second))


@pytest.mark.skipif(not HAS_EXT, reason="extension not built")
def test_extension_matches_reference():
    a = known_matrix(50, 40, "decaying", torch.float32, "cpu", seed=7)
    for x, y in zip(run(torch.ops.seqedit, a, 3), run(reference, a, 3)):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_zero_matrix(impl):
    S, U, V = run(impl, torch.zeros(8, 5), 2)
    assert torch.equal(S, torch.zeros(2))
    assert bool(torch.isfinite(U).all() and torch.isfinite(V).all())


def test_max_iter_caps_the_work(impl):
    a = torch.randn(60, 50, generator=torch.Generator().manual_seed(8))
    S, U, V = run(impl, a, 3, tol=0.0, max_iter=1)
    assert S.shape == (3,) and bool(torch.isfinite(S).all())
    # Ritz values from any subspace interlace: they never exceed the true singular values.
    assert bool((S <= torch.linalg.svdvals(a)[:3] * (1 + 1e-5)).all())


def test_non_finite_input_is_rejected(impl):
    a = torch.randn(6, 5)
    a[2, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        run(impl, a, 2)


@pytest.mark.parametrize("m,n,r,k", [(10, 8, 3, 3), (3, 9, 5, 3), (50, 40, 1, 1), (30, 20, 6, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_factored(impl, m, n, r, k, dtype):
    g = torch.Generator().manual_seed(m + n + r)
    u = torch.randn(m, r, generator=g).to(dtype)
    v = torch.randn(n, r, generator=g).to(dtype)
    S, U, V = impl.top_singular_factored(u, v, k)
    # QR and a small SVD are backward stable: errors of a few ε of the compute dtype times ‖A‖.
    check_triplets(u.double() @ v.double().T, k, S, U, V, tol=0.0, eps=compute_eps(dtype))


def test_factored_batched_and_non_contiguous(impl):
    g = torch.Generator().manual_seed(11)
    u = torch.randn(2, 4, 12, generator=g).mT  # [2, 12, 4], not contiguous
    v = torch.randn(2, 9, 8, generator=g)[:, :, ::2]
    S, U, V = impl.top_singular_factored(u, v, 3)
    assert S.shape == (2, 3) and U.shape == (2, 12, 3) and V.shape == (2, 9, 3)
    for i in range(2):
        check_triplets(u[i] @ v[i].T, 3, S[i], U[i], V[i], tol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCUDA:
    @pytest.mark.parametrize("kind", ["decaying", "clustered", "repeated"])
    @pytest.mark.parametrize("m,n,k", [(40, 30, 3), (30, 70, 5), (64, 64, 16)])
    def test_known_spectra(self, cuda_impl, m, n, k, kind):
        a = known_matrix(m, n, kind, torch.float32, "cuda", seed=m + n + k)
        check_triplets(a, k, *run(cuda_impl, a, k), tol=1e-4)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
    def test_dtypes(self, cuda_impl, dtype):
        a = known_matrix(50, 35, "repeated", dtype, "cuda", seed=1)
        check_triplets(a, 4, *run(cuda_impl, a, 4), tol=1e-4)

    def test_batched(self, cuda_impl):
        a = known_matrix(30, 25, "clustered", torch.float32, "cuda", seed=5, batch=(3,))
        S, U, V = run(cuda_impl, a, 4)
        for i in range(3):
            check_triplets(a[i], 4, S[i], U[i], V[i], tol=1e-4)

    def test_deterministic(self, cuda_impl):
        a = known_matrix(50, 40, "repeated", torch.float32, "cuda", seed=6)
        first, second = run(cuda_impl, a, 5), run(cuda_impl, a, 5)
        assert all(torch.equal(x, y) for x, y in zip(first, second))

    def test_factored(self, cuda_impl):
        g = torch.Generator().manual_seed(3)
        u, v = torch.randn(30, 6, generator=g).cuda(), torch.randn(20, 6, generator=g).cuda()
        S, U, V = cuda_impl.top_singular_factored(u, v, 2)
        check_triplets(u @ v.T, 2, S, U, V, tol=0.0)
