// CUDA kernels of seqedit::top_singular and seqedit::top_singular_factored, written with ATen
// operators (cuBLAS products, cuSOLVER QR) rather than hand-written CUDA: the work is a few
// skinny matrix products per iteration, which cuBLAS already runs at the memory/compute limit.
// This file is plain C++ (compiled by the host compiler) and only built with CUDA support.
//
// Semantics follow seqedit.reference.top_singular exactly (same oversampled width, same seeded
// start block drawn on the CPU generator, same Rayleigh-Ritz step, stopping rule and sign
// convention), so CPU and CUDA results agree up to floating-point rounding. One change of
// route, not of result: the reference takes a thin SVD of the n x p block A^T Q; here it is
// factored as QR (cuSOLVER, on the device) followed by an SVD of the p x p triangle on the host.
// A p x p SVD (p <= 2k + ~10) costs microseconds in LAPACK but milliseconds of kernel launches
// in cuSOLVER, and the host round trip is free because every iteration synchronises anyway to
// test convergence.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

namespace seqedit_cuda {
namespace {

using Triplets = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Host SVD only for small cores; a large one (many edits in top_singular_factored) is better
// served by the device solver than by a copy plus a single-threaded-ish LAPACK call.
constexpr int64_t kHostSvdMaxDim = 512;

at::ScalarType compute_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Thin SVD of a (batched) small matrix: returns (X, S, Yh) with r = X diag(S) Yh on r's device.
std::tuple<at::Tensor, at::Tensor, at::Tensor> small_svd(const at::Tensor& r) {
  if (std::max(r.size(-1), r.size(-2)) > kHostSvdMaxDim) {
    return at::linalg_svd(r, /*full_matrices=*/false);
  }
  auto [x, s, yh] = at::linalg_svd(r.cpu(), /*full_matrices=*/false);
  const auto dev = r.device();
  return {x.to(dev), s.to(dev), yh.to(dev)};
}

// Largest-magnitude entry of every column of u made positive (first one on ties); v follows.
std::pair<at::Tensor, at::Tensor> fix_signs(const at::Tensor& u, const at::Tensor& v) {
  const at::Tensor where_max = u.abs().argmax(-2, /*keepdim=*/true);
  at::Tensor flip = at::sign(u.gather(-2, where_max));
  flip = at::where(flip == 0, at::ones_like(flip), flip);
  return {u * flip, v * flip};
}

Triplets top_singular_cuda(const at::Tensor& a, int64_t k, double tol, int64_t max_iter,
                           int64_t seed) {
  TORCH_CHECK_VALUE(a.dim() == 2 || a.dim() == 3, "top_singular: a must be [m, n] or [b, m, n], got ",
                    a.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(a.scalar_type()), "top_singular: a must be floating point, got ",
                   a.scalar_type());
  const int64_t m = a.size(-2), n = a.size(-1);
  TORCH_CHECK_VALUE(k >= 1 && k <= std::min(m, n), "top_singular: k must be in [1, min(m, n) = ",
                    std::min(m, n), "], got ", k);
  TORCH_CHECK_VALUE(std::isfinite(tol) && tol >= 0, "top_singular: tol must be finite and >= 0");
  TORCH_CHECK_VALUE(max_iter >= 1, "top_singular: max_iter must be >= 1, got ", max_iter);
  const c10::cuda::CUDAGuard guard(a.device());

  const bool batched = a.dim() == 3;
  const auto cdt = compute_dtype(a.scalar_type());
  const at::Tensor A = (batched ? a : a.unsqueeze(0)).to(cdt);
  const at::Tensor At = A.mT();
  const int64_t p = std::min({m, n, k + std::max<int64_t>(k, 10)});

  // Same start block as the CPU kernel and the reference: CPU generator, then copied over.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
  const at::Tensor start = at::randn({n, p}, gen, at::TensorOptions().dtype(cdt)).to(A.device());

  at::Tensor av = at::matmul(A, start);
  TORCH_CHECK_VALUE(at::isfinite(av).all().item<bool>(), "top_singular: a contains non-finite values");
  at::Tensor s, u, v;
  for (int64_t it = 0; it < max_iter; ++it) {
    const at::Tensor q = std::get<0>(at::linalg_qr(av));
    // A^T Q = Qz Rz and Rz = X S Yh give A^T Q = (Qz X) S Yh: V = Qz X, U = Q Yh^H.
    const auto [qz, rz] = at::linalg_qr(at::matmul(At, q));
    at::Tensor x, yh;
    std::tie(x, s, yh) = small_svd(rz);
    v = at::matmul(qz, x);
    u = at::matmul(q, yh.mH());
    av = at::matmul(A, v);
    const at::Tensor s_top = s.narrow(-1, 0, k);
    const at::Tensor resid =
        at::linalg_vector_norm(av.narrow(-1, 0, k) - u.narrow(-1, 0, k) * s_top.unsqueeze(-2), 2, {-2});
    if ((resid.amax(-1) <= s.select(-1, 0) * tol).all().item<bool>()) break;
  }
  auto [uk, vk] = fix_signs(u.narrow(-1, 0, k), v.narrow(-1, 0, k));
  at::Tensor sk = s.narrow(-1, 0, k).contiguous();
  if (batched) return {sk, uk, vk};
  return {sk.select(0, 0), uk.select(0, 0), vk.select(0, 0)};
}

Triplets top_singular_factored_cuda(const at::Tensor& u, const at::Tensor& v, int64_t k) {
  TORCH_CHECK_VALUE((u.dim() == 2 || u.dim() == 3) && v.dim() == u.dim() && u.size(-1) == v.size(-1) &&
                        (u.dim() == 2 || u.size(0) == v.size(0)),
                    "top_singular_factored: u and v must be [m, r] and [n, r] (or batched "
                    "[b, m, r] and [b, n, r]), got ",
                    u.sizes(), " and ", v.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(u.scalar_type()) && at::isFloatingType(v.scalar_type()),
                   "top_singular_factored: u and v must be floating point");
  TORCH_CHECK_VALUE(u.device() == v.device(), "top_singular_factored: u and v on different devices");
  const int64_t limit = std::min({u.size(-2), v.size(-2), u.size(-1)});
  TORCH_CHECK_VALUE(k >= 1 && k <= limit, "top_singular_factored: k must be in [1, min(m, n, r) = ",
                    limit, "], got ", k);
  const c10::cuda::CUDAGuard guard(u.device());

  const auto cdt = compute_dtype(at::promote_types(u.scalar_type(), v.scalar_type()));
  // U V^T = Qu (Ru Rv^T) Qv^T, and the SVD of the small core gives the rest exactly.
  const auto [qu, ru] = at::linalg_qr(u.to(cdt));
  const auto [qv, rv] = at::linalg_qr(v.to(cdt));
  const auto [x, s, yh] = small_svd(at::matmul(ru, rv.mT()));
  auto [uk, vk] = fix_signs(at::matmul(qu, x.narrow(-1, 0, k)), at::matmul(qv, yh.mH().narrow(-1, 0, k)));
  return {s.narrow(-1, 0, k).contiguous(), uk, vk};
}

}  // namespace
}  // namespace seqedit_cuda

TORCH_LIBRARY_IMPL(seqedit, CUDA, m) {
  m.impl("top_singular", &seqedit_cuda::top_singular_cuda);
  m.impl("top_singular_factored", &seqedit_cuda::top_singular_factored_cuda);
}
