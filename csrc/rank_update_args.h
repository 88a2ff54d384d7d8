// Argument checks of seqedit::rank_update_ / rank_update_list_ shared by the CPU and CUDA kernels,
// so both refuse the same inputs with the same messages. Backend-specific checks (device kind,
// index width) stay in the kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/List.h>

#include <cmath>

namespace seqedit {

inline void check_rank_update_args(const at::Tensor& weight, const at::Tensor& u,
                                   const at::Tensor& v, double alpha, bool transposed) {
  TORCH_CHECK_VALUE(weight.dim() == 2, "rank_update_: weight must be 2-D, got ", weight.sizes());
  TORCH_CHECK_VALUE(u.dim() == 2 && v.dim() == 2 && u.size(1) == v.size(1),
                    "rank_update_: u and v must be [m, k] and [n, k], got ", u.sizes(), " and ",
                    v.sizes());
  const int64_t rows = transposed ? v.size(0) : u.size(0);
  const int64_t cols = transposed ? u.size(0) : v.size(0);
  TORCH_CHECK_VALUE(weight.size(0) == rows && weight.size(1) == cols, "rank_update_: weight ",
                    weight.sizes(), " does not match u ", u.sizes(), " and v ", v.sizes(),
                    transposed ? " (transposed)" : "");
  for (const at::Tensor* t : {&weight, &u, &v}) {
    TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()),
                     "rank_update_: expected floating point tensors, got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == weight.device(),
                      "rank_update_: all tensors must be on one device");
  }
  TORCH_CHECK_VALUE(std::isfinite(alpha), "rank_update_: alpha must be finite, got ", alpha);
  at::assert_no_internal_overlap(weight);
}

inline void check_rank_update_list_lengths(at::TensorList weights, at::TensorList us,
                                           at::TensorList vs, at::ArrayRef<double> alphas,
                                           const c10::List<bool>& transposed) {
  const size_t n = weights.size();
  TORCH_CHECK_VALUE(us.size() == n && vs.size() == n && alphas.size() == n &&
                        transposed.size() == n,
                    "rank_update_list_: weights, us, vs, alphas and transposed must have the "
                    "same length");
}

}  // namespace seqedit
