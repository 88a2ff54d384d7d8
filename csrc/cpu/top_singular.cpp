// CPU kernels of seqedit::top_singular and seqedit::top_singular_factored.
//
// top_singular runs randomized subspace iteration on a block of p = k + max(k, 10) columns.
// Each iteration costs one product with A^T and one with A (BLAS; they dominate), a QR of an
// m x p block and a thin SVD of an n x p block. Both products are taken with the thin block on
// the left, (Q^T A)^T and (V^T A^T)^T: MKL's float64 GEMM with a thin right-hand side is 2-4x
// slower on the project's AMD CPU (bench/ops.py --products). The Rayleigh-Ritz step
//   A^T Q = V~ S Y^T  ->  U = Q Y, V = V~
// makes A^T U = V S exact, so ||A v_i - s_i u_i|| is the whole residual of the pair and bounds
// the distance from s_i to a singular value of A; iteration stops once every residual of the
// top k is at most tol * s_0. The random start is drawn from a CPU generator seeded by the
// caller, so results are reproducible and match the Python reference.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

namespace {

using Triplets = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

at::ScalarType compute_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Mirrors seqedit.reference.oversampled_rank.
int64_t oversampled_rank(int64_t k, int64_t m, int64_t n) {
  return std::min({m, n, k + std::max<int64_t>(k, 10)});
}

// Sign convention shared with seqedit.reference.canonical_signs: the largest-magnitude entry
// of every u_i is positive (the first one on ties); v_i flips with it.
std::pair<at::Tensor, at::Tensor> canonical_signs(const at::Tensor& u, const at::Tensor& v) {
  const at::Tensor idx = u.abs().argmax(-2, /*keepdim=*/true);
  at::Tensor sign = u.gather(-2, idx).sign();
  sign = at::where(sign == 0, at::ones_like(sign), sign);
  // Contiguous, as the fake-tensor registration promises.
  return {(u * sign).contiguous(), (v * sign).contiguous()};
}

Triplets top_singular_cpu(const at::Tensor& a, int64_t k, double tol, int64_t max_iter,
                          int64_t seed) {
  TORCH_CHECK_VALUE(a.dim() == 2 || a.dim() == 3,
                    "top_singular: a must be [m, n] or [b, m, n], got ", a.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(a.scalar_type()),
                   "top_singular: a must be floating point, got ", a.scalar_type());
  const int64_t m = a.size(-2), n = a.size(-1);
  TORCH_CHECK_VALUE(k >= 1 && k <= std::min(m, n), "top_singular: k must be in [1, min(m, n) = ",
                    std::min(m, n), "], got ", k);
  TORCH_CHECK_VALUE(std::isfinite(tol) && tol >= 0, "top_singular: tol must be finite and >= 0");
  TORCH_CHECK_VALUE(max_iter >= 1, "top_singular: max_iter must be >= 1, got ", max_iter);

  const bool batched = a.dim() == 3;
  const at::Tensor A = (batched ? a : a.unsqueeze(0)).to(compute_type(a.scalar_type()));
  const int64_t p = oversampled_rank(k, m, n);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
  const at::Tensor start = at::randn({n, p}, gen, A.options().device(at::kCPU)).to(A.device());

  // A x for a thin block x [*, n, p], as (x^T A^T)^T (see above); the result is a column-major
  // view, the layout LAPACK's QR wants anyway.
  const auto times_a = [&A](const at::Tensor& x) { return at::matmul(x.mT(), A.mT()).mT(); };
  at::Tensor av = times_a(start);
  TORCH_CHECK_VALUE(at::isfinite(av).all().item<bool>(),
                    "top_singular: a contains non-finite values");
  at::Tensor s, u, v;
  for (int64_t it = 0; it < max_iter; ++it) {
    const at::Tensor q = std::get<0>(at::linalg_qr(av));
    at::Tensor yh;
    std::tie(v, s, yh) = at::linalg_svd(at::matmul(q.mT(), A).mT(), /*full_matrices=*/false);
    u = at::matmul(q, yh.mH());
    av = times_a(v);
    const at::Tensor top_s = s.narrow(-1, 0, k).unsqueeze(-2);
    const at::Tensor resid =
        at::linalg_vector_norm(av.narrow(-1, 0, k) - u.narrow(-1, 0, k) * top_s, 2, {-2});
    if ((resid.amax(-1) <= s.select(-1, 0) * tol).all().item<bool>()) break;
  }
  auto [uk, vk] = canonical_signs(u.narrow(-1, 0, k), v.narrow(-1, 0, k));
  at::Tensor sk = s.narrow(-1, 0, k).contiguous();
  if (!batched) return {sk[0], uk[0], vk[0]};
  return {sk, uk, vk};
}

Triplets top_singular_factored_cpu(const at::Tensor& u, const at::Tensor& v, int64_t k) {
  TORCH_CHECK_VALUE((u.dim() == 2 || u.dim() == 3) && v.dim() == u.dim() &&
                        u.size(-1) == v.size(-1) && (u.dim() == 2 || u.size(0) == v.size(0)),
                    "top_singular_factored: u and v must be [m, r] and [n, r] (or batched "
                    "[b, m, r] and [b, n, r]), got ",
                    u.sizes(), " and ", v.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(u.scalar_type()) && at::isFloatingType(v.scalar_type()),
                   "top_singular_factored: u and v must be floating point");
  const int64_t limit = std::min({u.size(-2), v.size(-2), u.size(-1)});
  TORCH_CHECK_VALUE(k >= 1 && k <= limit, "top_singular_factored: k must be in [1, min(m, n, r) = ",
                    limit, "], got ", k);

  const auto compute = compute_type(at::promote_types(u.scalar_type(), v.scalar_type()));
  const auto [qu, ru] = at::linalg_qr(u.to(compute));
  const auto [qv, rv] = at::linalg_qr(v.to(compute));
  const auto [x, s, yh] = at::linalg_svd(at::matmul(ru, rv.mT()), /*full_matrices=*/false);
  auto [uk, vk] = canonical_signs(at::matmul(qu, x.narrow(-1, 0, k)),
                                  at::matmul(qv, yh.mH().narrow(-1, 0, k)));
  return {s.narrow(-1, 0, k).contiguous(), uk, vk};
}

}  // namespace

TORCH_LIBRARY_IMPL(seqedit, CPU, m) {
  m.impl("top_singular", &top_singular_cpu);
  m.impl("top_singular_factored", &top_singular_factored_cpu);
}
