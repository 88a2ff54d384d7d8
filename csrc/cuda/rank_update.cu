// CUDA kernels for seqedit::rank_update_ / rank_update_list_:  W += alpha * U V^T.
//
// Design: one kernel is a small GEMM with the update fused into its epilogue. Every 256-thread
// block owns a 128x128 tile of W (grid-stride over tiles), forms D = (alpha U_tile) V_tile^T in
// registers from K-chunks of the factors staged in shared memory, then reads each W element
// once, adds D, rounds once into W's dtype, writes it back and, if asked, accumulates
// sum|W_new|, sum|D| and sum D^2. W therefore crosses the memory bus exactly twice (one read,
// one write) and D is never stored: for the usual rank (k up to a few dozen) the kernel is
// bound by W's bandwidth; for large k it becomes an FFMA-bound GEMM that still touches W once.
//
// * Precision: float32 arithmetic (float64 for a float64 W), alpha folded into U first, exactly
//   as the CPU kernel does, so both backends round the same way up to summation order.
// * Each thread owns 8 rows x 8 contiguous columns, so its W accesses are 16-byte vectors for
//   16-bit dtypes (two/four for float32/float64) and a warp covers 256 contiguous bytes per row.
// * Each tile's W lines are prefetched into L2 before the factor loads and the math, so the
//   DRAM latency of W overlaps them (2 float blocks per SM also overlap each other's phases).
// * The factors are passed transposed ([k, rows] and [k, cols], made by the host wrapper) so
//   the shared-memory staging loads are coalesced and bank-conflict free.
// * Statistics: per-thread float partials over 8 elements (error < 1e-6 relative), then float64
//   per thread, per block (shuffles) and across blocks by one deterministic ATen sum over the
//   [blocks, 3] partials; no atomics, so the statistics are reproducible run to run.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include "rank_update_args.h"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

namespace seqedit_cuda {
namespace {

constexpr int RU_TILE = 128;
constexpr int RU_THREADS = 256;

// Factor columns staged per pass: 32 KB of shared memory for either compute type, which leaves
// room for two float blocks per SM, so one block's W traffic overlaps the other's math.
template <typename C>
constexpr int kChunk = sizeof(C) == 4 ? 32 : 16;

template <typename T>
struct alignas(16) Vec8 {
  T v[8];
};

template <typename C>
__device__ __forceinline__ C fma_c(C a, C b, C c);
template <>
__device__ __forceinline__ float fma_c<float>(float a, float b, float c) {
  return fmaf(a, b, c);
}
template <>
__device__ __forceinline__ double fma_c<double>(double a, double b, double c) {
  return fma(a, b, c);
}

template <typename W, typename C>
__device__ __forceinline__ C load_c(W x) {
  return static_cast<C>(x);
}

__device__ __forceinline__ float abs_c(float x) { return fabsf(x); }
__device__ __forceinline__ double abs_c(double x) { return fabs(x); }

// Reads 8 consecutive C values from shared memory with the widest aligned accesses.
template <typename C>
__device__ __forceinline__ void load8(const C* p, C (&out)[8]) {
  if constexpr (std::is_same_v<C, float>) {
    const float4 x = reinterpret_cast<const float4*>(p)[0];
    const float4 y = reinterpret_cast<const float4*>(p)[1];
    out[0] = x.x; out[1] = x.y; out[2] = x.z; out[3] = x.w;
    out[4] = y.x; out[5] = y.y; out[6] = y.z; out[7] = y.w;
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const double2 x = reinterpret_cast<const double2*>(p)[i];
      out[2 * i] = x.x;
      out[2 * i + 1] = x.y;
    }
  }
}

template <typename WT, typename C>
__global__ void __launch_bounds__(RU_THREADS, sizeof(C) == 4 ? 2 : 1)
    rank_update_kernel(WT* __restrict__ w, int64_t ldw, int rows, int cols,
                       const C* __restrict__ at, const C* __restrict__ bt, int k, bool vec_ok,
                       double* __restrict__ partials, int tiles_c, int64_t num_tiles) {
  constexpr int KC = kChunk<C>;
  __shared__ __align__(16) C As[KC][RU_TILE];
  __shared__ __align__(16) C Bs[KC][RU_TILE];
  __shared__ double red[RU_THREADS / 32][3];

  const int tid = threadIdx.x;
  const int ty = tid >> 4;  // rows ty*8 .. ty*8+7 of the tile
  const int tx = tid & 15;  // columns tx*8 .. tx*8+7
  const bool want_stats = partials != nullptr;
  double s_abs_w = 0.0, s_abs_d = 0.0, s_sq_d = 0.0;

  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const int row0 = static_cast<int>(tile / tiles_c) * RU_TILE;
    const int col0 = static_cast<int>(tile % tiles_c) * RU_TILE;
    const int c0 = col0 + tx * 8;

    // Start pulling this tile of W into L2 now, so its DRAM latency overlaps the factor loads
    // and the math below instead of following them (no registers held; one request per
    // 128-byte line).
    if (c0 < cols && (tx * 8 * static_cast<int>(sizeof(WT))) % 128 == 0) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int r = row0 + ty * 8 + i;
        if (r < rows) {
          asm volatile("prefetch.global.L2 [%0];\n" ::"l"(w + static_cast<int64_t>(r) * ldw + c0));
        }
      }
    }

    C acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = C(0);

    for (int q0 = 0; q0 < k; q0 += KC) {
      const int kc = min(KC, k - q0);
      __syncthreads();  // the previous chunk (or tile) is no longer being read
      for (int e = tid; e < kc * RU_TILE; e += RU_THREADS) {
        const int q = e / RU_TILE;
        const int c = e % RU_TILE;
        const int64_t src = static_cast<int64_t>(q0 + q);
        As[q][c] = row0 + c < rows ? at[src * rows + row0 + c] : C(0);
        Bs[q][c] = col0 + c < cols ? bt[src * cols + col0 + c] : C(0);
      }
      __syncthreads();
      for (int q = 0; q < kc; ++q) {
        C a[8], b[8];
        load8<C>(&As[q][ty * 8], a);
        load8<C>(&Bs[q][tx * 8], b);
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fma_c<C>(a[i], b[j], acc[i][j]);
      }
    }

    // Epilogue: the only place W is read or written.
    const bool full = vec_ok && c0 + 8 <= cols;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int r = row0 + ty * 8 + i;
      if (r >= rows || c0 >= cols) continue;
      WT* wp = w + static_cast<int64_t>(r) * ldw + c0;
      C p_abs_w = C(0), p_abs_d = C(0), p_sq_d = C(0);
      if (full) {
        Vec8<WT> x = *reinterpret_cast<const Vec8<WT>*>(wp);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const C d = acc[i][j];
          const WT nw = static_cast<WT>(load_c<WT, C>(x.v[j]) + d);
          x.v[j] = nw;
          p_abs_w += abs_c(load_c<WT, C>(nw));
          p_abs_d += abs_c(d);
          p_sq_d = fma_c<C>(d, d, p_sq_d);
        }
        *reinterpret_cast<Vec8<WT>*>(wp) = x;
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          if (c0 + j < cols) {
            const C d = acc[i][j];
            const WT nw = static_cast<WT>(load_c<WT, C>(wp[j]) + d);
            wp[j] = nw;
            p_abs_w += abs_c(load_c<WT, C>(nw));
            p_abs_d += abs_c(d);
            p_sq_d = fma_c<C>(d, d, p_sq_d);
          }
        }
      }
      if (want_stats) {
        s_abs_w += static_cast<double>(p_abs_w);
        s_abs_d += static_cast<double>(p_abs_d);
        s_sq_d += static_cast<double>(p_sq_d);
      }
    }
  }

  if (!want_stats) return;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    s_abs_w += __shfl_down_sync(0xffffffffu, s_abs_w, off);
    s_abs_d += __shfl_down_sync(0xffffffffu, s_abs_d, off);
    s_sq_d += __shfl_down_sync(0xffffffffu, s_sq_d, off);
  }
  const int lane = tid & 31, warp = tid >> 5;
  if (lane == 0) {
    red[warp][0] = s_abs_w;
    red[warp][1] = s_abs_d;
    red[warp][2] = s_sq_d;
  }
  __syncthreads();
  if (tid < 3) {
    double s = 0.0;
    for (int i = 0; i < RU_THREADS / 32; ++i) s += red[i][tid];
    partials[static_cast<int64_t>(blockIdx.x) * 3 + tid] = s;
  }
}

int device_sms(int device) {
  static std::atomic<int> cache[64] = {};
  if (device < 0 || device >= 64) device = 0;
  int v = cache[device].load(std::memory_order_relaxed);
  if (v == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
    cache[device].store(v, std::memory_order_relaxed);
  }
  return v;
}

// The shared checks, plus what this kernel needs: CUDA tensors, 32-bit indexable sizes.
void check_args(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, double alpha,
                bool transposed) {
  seqedit::check_rank_update_args(weight, u, v, alpha, transposed);
  TORCH_CHECK_VALUE(weight.is_cuda(), "rank_update_: all tensors must be on one CUDA device");
  TORCH_CHECK_VALUE(weight.size(0) < INT32_MAX && weight.size(1) < INT32_MAX && u.size(1) < INT32_MAX,
                    "rank_update_: dimensions too large");
}

template <typename WT, typename C>
void launch(at::Tensor& target, const at::Tensor& at_, const at::Tensor& bt_, double* partials,
            int64_t grid, int tiles_c, int64_t num_tiles, cudaStream_t stream) {
  const int64_t ldw = target.stride(0);
  WT* w = reinterpret_cast<WT*>(target.data_ptr());
  const bool vec_ok = ldw % 8 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  rank_update_kernel<WT, C><<<static_cast<unsigned>(grid), RU_THREADS, 0, stream>>>(
      w, ldw, static_cast<int>(target.size(0)), static_cast<int>(target.size(1)),
      at_.const_data_ptr<C>(), bt_.const_data_ptr<C>(), static_cast<int>(at_.size(0)), vec_ok,
      partials, tiles_c, num_tiles);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor rank_update_one(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v,
                           double alpha, bool transposed, bool stats) {
  check_args(weight, u, v, alpha, transposed);
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(weight.device());
  if (u.size(1) == 0 || weight.numel() == 0) {
    if (!stats) return at::empty({0}, f64);
    const at::Tensor abs_w = at::linalg_vector_norm(weight, 1, {}, false, at::kDouble);
    return at::cat({abs_w.reshape({1}), at::zeros({2}, f64)});
  }

  // The kernel wants unit column stride; a transposed view (unit row stride) is handled by
  // swapping the roles of the factors, anything else by a contiguous copy written back after.
  at::Tensor target = weight;
  at::Tensor rows_of = transposed ? v : u;
  at::Tensor cols_of = transposed ? u : v;
  auto unit_cols = [](const at::Tensor& t) { return t.size(1) <= 1 || t.stride(1) == 1; };
  if (!unit_cols(target) && target.stride(0) == 1) {
    target = target.t();
    std::swap(rows_of, cols_of);
  }
  const bool copy_back = !unit_cols(target);
  if (copy_back) target = target.contiguous();

  const bool f64_w = weight.scalar_type() == at::kDouble;
  const auto compute = f64_w ? at::kDouble : at::kFloat;
  // [k, rows] and [k, cols]: tiny next to W, and coalesced for the kernel's staging loads.
  const at::Tensor at_ = (rows_of.to(compute) * alpha).t().contiguous();
  const at::Tensor bt_ = cols_of.to(compute).t().contiguous();

  const int64_t rows = target.size(0), cols = target.size(1);
  const int tiles_c = static_cast<int>((cols + RU_TILE - 1) / RU_TILE);
  const int64_t num_tiles = ((rows + RU_TILE - 1) / RU_TILE) * tiles_c;
  const int64_t grid = std::min<int64_t>(num_tiles, int64_t{8} * device_sms(weight.get_device()));
  at::Tensor partials = stats ? at::empty({grid, 3}, f64) : at::Tensor();
  double* pp = stats ? partials.data_ptr<double>() : nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(weight.get_device()).stream();

  switch (target.scalar_type()) {
    case at::kFloat:
      launch<float, float>(target, at_, bt_, pp, grid, tiles_c, num_tiles, stream);
      break;
    case at::kDouble:
      launch<double, double>(target, at_, bt_, pp, grid, tiles_c, num_tiles, stream);
      break;
    case at::kBFloat16:
      launch<c10::BFloat16, float>(target, at_, bt_, pp, grid, tiles_c, num_tiles, stream);
      break;
    case at::kHalf:
      launch<c10::Half, float>(target, at_, bt_, pp, grid, tiles_c, num_tiles, stream);
      break;
    default:
      TORCH_CHECK_TYPE(false, "rank_update_: unsupported weight dtype ", target.scalar_type());
  }
  if (copy_back) weight.copy_(target);
  if (!stats) return at::empty({0}, f64);
  return partials.sum(0);
}

at::Tensor rank_update_cuda(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v,
                            double alpha, bool transposed, bool stats) {
  return rank_update_one(weight, u, v, alpha, transposed, stats);
}

std::vector<at::Tensor> rank_update_list_cuda(at::TensorList weights, at::TensorList us,
                                              at::TensorList vs, at::ArrayRef<double> alphas,
                                              const c10::List<bool>& transposed, bool stats) {
  seqedit::check_rank_update_list_lengths(weights, us, vs, alphas, transposed);
  const size_t n = weights.size();
  // Validate every layer before the first one changes.
  for (size_t i = 0; i < n; ++i) check_args(weights[i], us[i], vs[i], alphas[i], transposed.get(i));
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(rank_update_one(weights[i], us[i], vs[i], alphas[i], transposed.get(i), stats));
  }
  return out;
}

}  // namespace
}  // namespace seqedit_cuda

TORCH_LIBRARY_IMPL(seqedit, CUDA, m) {
  m.impl("rank_update_", &seqedit_cuda::rank_update_cuda);
  m.impl("rank_update_list_", &seqedit_cuda::rank_update_list_cuda);
}
