// CPU kernel of seqedit::rank_update_: W += alpha * U V^T in one pass over W.
//
// W is swept in tiles of about kTileElems elements. For each tile the float32 (float64 for a
// float64 W) update D = (alpha U_rows) V_cols^T is formed by BLAS into a buffer that stays in
// cache; then each row of W is read, added to D, rounded into W's dtype once and written back,
// and the statistics sum|W_new|, sum|D|, sum D^2 are accumulated in float64 from the row while
// it is still in L1. W crosses the memory bus once each way; the statistics cost no extra pass.
// Per-tile partial sums are reduced in tile order, so they do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "rank_update_args.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

// A float32 tile of 32K elements (128 KiB) fits in L2 next to the W rows it updates.
constexpr int64_t kTileElems = 32768;
constexpr int64_t kMaxTileCols = 1024;

using Stats = std::array<double, 3>;

bool unit_col_stride(const at::Tensor& t) { return t.size(1) <= 1 || t.stride(1) == 1; }

// The element loop is where the time goes once BLAS has formed the update. Build it twice on
// x86-64, for AVX2+FMA and for the baseline ISA, and let the loader pick (GCC function
// multi-versioning): the wheel stays portable and modern CPUs get 8-wide float vectors.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SEQEDIT_ISA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SEQEDIT_ISA_CLONES
#endif

// How each storage type is read into and rounded from the compute type. bfloat16 is handled on
// its raw bits with branch-free round-to-nearest-even so the element loop vectorizes (c10's
// conversion does not); float16 keeps c10's conversion (correct, not vectorized: rare for LLMs).
template <typename S>
struct Element {
  using acc_t = float;
  static float load(S x) { return static_cast<float>(x); }
  static S store(float x) { return static_cast<S>(x); }
};
template <>
struct Element<double> {
  using acc_t = double;
  static double load(double x) { return x; }
  static double store(double x) { return x; }
};
using BF16Bits = uint16_t;
template <>
struct Element<BF16Bits> {
  using acc_t = float;
  static float load(BF16Bits x) { return std::bit_cast<float>(static_cast<uint32_t>(x) << 16); }
  static BF16Bits store(float x) {
    const uint32_t bits = std::bit_cast<uint32_t>(x);
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;  // an integer test keeps it branch-free
    return static_cast<BF16Bits>(nan ? 0x7FC0u : rounded);
  }
};

// Adds one tile of the update to W and returns its statistics. The statistics re-read each
// row right after it is written, while it is still in L1: one fused loop would not vectorize
// for bfloat16 (mixed 16/32/64-bit lanes), two loops over a cached row do.
template <typename S, typename acc_t = typename Element<S>::acc_t>
inline __attribute__((always_inline)) Stats apply_tile(S* w, int64_t row_stride,
                                                       const acc_t* delta, int64_t rows,
                                                       int64_t cols, bool stats) {
  using E = Element<S>;
  double abs_w = 0.0, abs_d = 0.0, sq_d = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    S* wr = w + r * row_stride;
    const acc_t* dr = delta + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) wr[c] = E::store(E::load(wr[c]) + dr[c]);
    if (!stats) continue;
#pragma omp simd reduction(+ : abs_w, abs_d, sq_d)
    for (int64_t c = 0; c < cols; ++c) {
      const double w64 = E::load(wr[c]);
      const double d64 = dr[c];
      abs_w += std::abs(w64);
      abs_d += std::abs(d64);
      sq_d += d64 * d64;
    }
  }
  return {abs_w, abs_d, sq_d};
}

// One instantiation per storage type, each with its ISA clones (target_clones cannot go on
// templates).
SEQEDIT_ISA_CLONES Stats apply_tile_dtype(float* w, int64_t rs, const float* d, int64_t rows,
                                          int64_t cols, bool stats) {
  return apply_tile(w, rs, d, rows, cols, stats);
}
SEQEDIT_ISA_CLONES Stats apply_tile_dtype(double* w, int64_t rs, const double* d, int64_t rows,
                                          int64_t cols, bool stats) {
  return apply_tile(w, rs, d, rows, cols, stats);
}
SEQEDIT_ISA_CLONES Stats apply_tile_dtype(c10::BFloat16* w, int64_t rs, const float* d,
                                          int64_t rows, int64_t cols, bool stats) {
  return apply_tile(reinterpret_cast<BF16Bits*>(w), rs, d, rows, cols, stats);
}
SEQEDIT_ISA_CLONES Stats apply_tile_dtype(c10::Half* w, int64_t rs, const float* d, int64_t rows,
                                          int64_t cols, bool stats) {
  return apply_tile(w, rs, d, rows, cols, stats);
}

// target[r, c] += a[r, :] . b[c, :] for a target with unit column stride.
template <typename scalar_t>
Stats update_rows(at::Tensor& target, const at::Tensor& a, const at::Tensor& b, bool stats) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t rows = target.size(0), cols = target.size(1);
  const int64_t col_tiles = (cols + kMaxTileCols - 1) / kMaxTileCols;
  const int64_t tile_cols = (cols + col_tiles - 1) / col_tiles;
  const int64_t tile_rows = std::clamp<int64_t>(kTileElems / tile_cols, 1, rows);
  const int64_t row_tiles = (rows + tile_rows - 1) / tile_rows;
  const int64_t row_stride = target.stride(0);
  scalar_t* base = target.data_ptr<scalar_t>();

  std::vector<Stats> partial(row_tiles * col_tiles, Stats{0.0, 0.0, 0.0});
  at::parallel_for(0, row_tiles * col_tiles, 1, [&](int64_t begin, int64_t end) {
    at::Tensor buffer = at::empty({tile_rows * tile_cols}, a.options());
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r0 = (t / col_tiles) * tile_rows, c0 = (t % col_tiles) * tile_cols;
      const int64_t nr = std::min(tile_rows, rows - r0), nc = std::min(tile_cols, cols - c0);
      at::Tensor delta = buffer.narrow(0, 0, nr * nc).view({nr, nc});
      at::mm_out(delta, a.narrow(0, r0, nr), b.narrow(0, c0, nc).t());
      partial[t] = apply_tile_dtype(base + r0 * row_stride + c0, row_stride,
                                    delta.const_data_ptr<acc_t>(), nr, nc, stats);
    }
  });
  Stats total{0.0, 0.0, 0.0};
  for (const Stats& p : partial) {
    for (int i = 0; i < 3; ++i) total[i] += p[i];
  }
  return total;
}

at::Tensor rank_update_one(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v,
                           double alpha, bool transposed, bool stats) {
  seqedit::check_rank_update_args(weight, u, v, alpha, transposed);
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(weight.device());
  if (u.size(1) == 0 || weight.numel() == 0) {
    if (!stats) return at::empty({0}, f64);
    const at::Tensor abs_w = at::linalg_vector_norm(weight, 1, {}, false, at::kDouble);
    return at::cat({abs_w.reshape({1}), at::zeros({2}, f64)});
  }

  // Work on a view with unit column stride: (rows_of, cols_of) are the factors whose rows
  // index the rows and the columns of that view.
  at::Tensor target = weight;
  at::Tensor rows_of = transposed ? v : u;
  at::Tensor cols_of = transposed ? u : v;
  if (!unit_col_stride(target) && target.stride(0) == 1) {
    target = target.t();
    std::swap(rows_of, cols_of);
  }
  const bool copy_back = !unit_col_stride(target);
  if (copy_back) target = target.contiguous();

  const auto compute = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor a = (rows_of.to(compute) * alpha).contiguous();
  const at::Tensor b = cols_of.to(compute).contiguous();
  Stats total{};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, target.scalar_type(),
                                  "rank_update_", [&] {
                                    total = update_rows<scalar_t>(target, a, b, stats);
                                  });
  // Only a W without a unit stride in either dimension was copied (never the transposed view).
  if (copy_back) weight.copy_(target);
  if (!stats) return at::empty({0}, f64);
  return at::tensor({total[0], total[1], total[2]}, f64);
}

std::vector<at::Tensor> rank_update_list_cpu(at::TensorList weights, at::TensorList us,
                                             at::TensorList vs, at::ArrayRef<double> alphas,
                                             const c10::List<bool>& transposed, bool stats) {
  seqedit::check_rank_update_list_lengths(weights, us, vs, alphas, transposed);
  const size_t n = weights.size();
  // Validate every layer before the first one changes.
  for (size_t i = 0; i < n; ++i) {
    seqedit::check_rank_update_args(weights[i], us[i], vs[i], alphas[i], transposed.get(i));
  }
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(rank_update_one(weights[i], us[i], vs[i], alphas[i], transposed.get(i), stats));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(seqedit, CPU, m) {
  m.impl("rank_update_", &rank_update_one);
  m.impl("rank_update_list_", &rank_update_list_cpu);
}
