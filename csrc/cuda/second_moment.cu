// CUDA kernels for seqedit::second_moment_ / second_moment_list_:  acc += sum_i w_i k_i k_i^T.
//
// This is a SYRK (C = K^T K with K[N,d]) whose result must be as accurate as a float64
// accumulation. Design decisions:
//
// * Hand-tiled, not cuBLAS. at::mm would have to be fed float32 blocks (its float32 path obeys
//   the process-wide TF32 switch, which a training script may have turned on, and TF32 breaks
//   the 1e-6 accuracy contract), it would materialise a d x d float32 product per block of keys
//   and it cannot skip the lower triangle. A custom kernel keeps the float64 running sums in
//   registers, computes only the upper-triangle tiles and adds every tile to acc once.
//
// * Precision: products and short sums in float32, flushed into float64 registers every
//   FLUSH_KEYS keys. The float32 partial sum of FLUSH_KEYS products has a relative error of a
//   few float32 ulps; those errors are independent across chunks and average out in the float64
//   total, so the result is within ~1e-7 of an all-float64 computation at any N.
//
// * Two kernels:
//   - mma: bfloat16/float16 keys without weights go to the tensor cores (mma.sync m16n8k16 with
//     float32 accumulation). A product of two 8- or 11-bit significands is exact in float32, so
//     only the accumulation rounds. Tensor cores accumulate with truncation rather than
//     round-to-nearest, which biases long sums towards zero: flushing every 128 keys
//     (8 mma steps) bounds that bias to ~3e-7 relative.
//   - simt: every other case (float32 keys, weights, odd d or misaligned rows). Plain FFMA
//     (round-to-nearest), 8x8 outputs per thread. float32 keys would need 3 bfloat16 splits
//     and 6 tensor-core products each to stay exact; on Hopper that is no faster than FFMA.
//
// * Symmetry: a grid of T(T+1)/2 upper-triangle tiles (T = ceil(d/128)); an off-diagonal
//   tile is added to acc[I,J] and, transposed, to acc[J,I]. Diagonal tiles compute both
//   halves (waste: 1/T of the work).
//
// * Parallelism: when the tiles alone cannot fill the GPU (small d), the keys are split into
//   ranges handled by different blocks, which then add into acc with float64 atomics (the
//   result is then reproducible only up to float64 rounding order). With one range per tile
//   every acc element has exactly one writer and plain read-modify-writes are used.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace seqedit_cuda {
namespace {

constexpr int TILE = 128;        // output tile edge (both kernels)
constexpr int THREADS = 256;     // both kernels
constexpr int FLUSH_KEYS = 128;  // float32 -> float64 flush interval, in keys

// -------------------------------------------------------------------------------------------
// Shared helpers
// -------------------------------------------------------------------------------------------

// Row I of the upper triangle holds tiles (I, I..T-1); T <= ~1000, so a short loop per block
// is cheaper than worrying about the rounding of a closed-form square root.
__device__ __forceinline__ void upper_tile(int t, int tiles_per_side, int& bi, int& bj) {
  int row_len = tiles_per_side;
  int i = 0;
  while (t >= row_len) {
    t -= row_len;
    --row_len;
    ++i;
  }
  bi = i;
  bj = i + t;
}

template <bool ATOMIC>
__device__ __forceinline__ void add_out(double* p, double v) {
  if constexpr (ATOMIC) {
    atomicAdd(p, v);
  } else {
    *p += v;
  }
}

template <typename T>
__device__ __forceinline__ float to_float(T x) {
  return static_cast<float>(x);
}

// -------------------------------------------------------------------------------------------
// SIMT kernel: any key dtype, optional weights
// -------------------------------------------------------------------------------------------
constexpr int SIMT_BK = 8;  // keys per shared-memory stage
static_assert(FLUSH_KEYS % SIMT_BK == 0, "flush interval must be whole stages");

// Thread (ty, tx) of a 16x16 grid owns rows {ty*4..+3, 64+ty*4..+3} and the same pattern of
// columns: the split keeps each warp's float4 reads of a shared row in 256 contiguous bytes
// (2 wavefronts), where 8 contiguous outputs per thread would need 4.
template <typename T, bool WEIGHTED, bool ATOMIC>
__global__ void __launch_bounds__(THREADS, 1)
    second_moment_simt_kernel(const T* __restrict__ keys, int64_t ldk, int64_t n_keys, int d,
                              const float* __restrict__ weights, double* __restrict__ out,
                              int64_t ldo, int tiles_per_side, int64_t keys_per_split) {
  __shared__ __align__(16) float As[2][SIMT_BK][TILE];
  __shared__ __align__(16) float Bs[2][SIMT_BK][TILE];

  int bi, bj;
  upper_tile(blockIdx.x, tiles_per_side, bi, bj);
  const int row0 = bi * TILE;
  const int col0 = bj * TILE;
  const int64_t n_begin = static_cast<int64_t>(blockIdx.y) * keys_per_split;
  const int64_t n_end = min(n_keys, n_begin + keys_per_split);
  if (n_begin >= n_end) return;

  const int tid = threadIdx.x;
  const int ty = tid >> 4;
  const int tx = tid & 15;

  // Global -> register staging: element e = tid + i*256 of a [SIMT_BK][TILE] stage, so a warp
  // reads 32 consecutive columns of one key (coalesced).
  constexpr int PER_THREAD = SIMT_BK * TILE / THREADS;  // 4
  float ra[PER_THREAD], rb[PER_THREAD];

  auto load_stage = [&](int64_t n0) {
#pragma unroll
    for (int i = 0; i < PER_THREAD; ++i) {
      const int e = tid + i * THREADS;
      const int kr = e / TILE;
      const int c = e % TILE;
      const int64_t n = n0 + kr;
      float a = 0.f, b = 0.f;
      if (n < n_end) {
        const T* row = keys + n * ldk;
        if (row0 + c < d) a = to_float(row[row0 + c]);
        if (col0 + c < d) b = to_float(row[col0 + c]);
        if constexpr (WEIGHTED) a *= weights[n];
      }
      ra[i] = a;
      rb[i] = b;
    }
  };
  auto store_stage = [&](int buf) {
#pragma unroll
    for (int i = 0; i < PER_THREAD; ++i) {
      const int e = tid + i * THREADS;
      As[buf][e / TILE][e % TILE] = ra[i];
      Bs[buf][e / TILE][e % TILE] = rb[i];
    }
  };

  float acc[8][8];
  double accd[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      acc[i][j] = 0.f;
      accd[i][j] = 0.0;
    }

  const int64_t stages = (n_end - n_begin + SIMT_BK - 1) / SIMT_BK;
  load_stage(n_begin);
  store_stage(0);
  __syncthreads();

  constexpr int STAGES_PER_FLUSH = FLUSH_KEYS / SIMT_BK;
  int since_flush = 0;
  for (int64_t s = 0; s < stages; ++s) {
    const int buf = static_cast<int>(s & 1);
    const bool more = s + 1 < stages;
    // Issue the next stage's global loads before the math so their latency hides behind it.
    if (more) load_stage(n_begin + (s + 1) * SIMT_BK);

#pragma unroll
    for (int k = 0; k < SIMT_BK; ++k) {
      const float4 a0 = *reinterpret_cast<const float4*>(&As[buf][k][ty * 4]);
      const float4 a1 = *reinterpret_cast<const float4*>(&As[buf][k][64 + ty * 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&Bs[buf][k][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&Bs[buf][k][64 + tx * 4]);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }

    if (++since_flush == STAGES_PER_FLUSH || !more) {
      since_flush = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          accd[i][j] += static_cast<double>(acc[i][j]);
          acc[i][j] = 0.f;
        }
    }

    if (more) {
      // The buffer written here was last read in iteration s-1, which every thread finished
      // before the barrier that ended it.
      store_stage(buf ^ 1);
      __syncthreads();
    }
  }

  const bool mirror = bi != bj;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int r = row0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
    if (r >= d) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int c = col0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + (j - 4));
      if (c >= d) continue;
      add_out<ATOMIC>(out + static_cast<int64_t>(r) * ldo + c, accd[i][j]);
      if (mirror) add_out<ATOMIC>(out + static_cast<int64_t>(c) * ldo + r, accd[i][j]);
    }
  }
}

// -------------------------------------------------------------------------------------------
// Tensor-core kernel: bfloat16 / float16 keys, no weights, d % 8 == 0, 16-byte aligned rows
// -------------------------------------------------------------------------------------------
constexpr int MMA_BK = 32;      // keys per pipeline stage (two k16 steps)
constexpr int MMA_STAGES = 3;   // cp.async pipeline depth
constexpr int MMA_PAD = 8;      // 16 bytes per smem row: ldmatrix rows land in distinct banks
constexpr int MMA_LD = TILE + MMA_PAD;
constexpr int MMA_STAGE_ELEMS = MMA_BK * MMA_LD;  // one operand, one stage (uint16 elements)
constexpr size_t MMA_SMEM_BYTES = size_t(2) * MMA_STAGES * MMA_STAGE_ELEMS * sizeof(uint16_t);
static_assert(FLUSH_KEYS % MMA_BK == 0, "flush interval must be whole stages");

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; src_bytes == 0 zero-fills the destination (tails in N and d).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Shared tiles are stored [key][column] (as in global memory, so cp.async copies rows
// verbatim); the mma wants k-contiguous fragments, which ldmatrix.trans produces.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                                  uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

template <bool IS_BF16>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4],
                                          uint32_t b0, uint32_t b1) {
  if constexpr (IS_BF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// 8 warps as 2 (rows) x 4 (columns); each warp owns a 64x32 block of the 128x128 tile:
// 4 m16 x 4 n8 mma tiles, i.e. 64 float32 + 64 float64 accumulators per thread.
template <bool IS_BF16, bool ATOMIC>
__global__ void __launch_bounds__(THREADS, 1)
    second_moment_mma_kernel(const uint16_t* __restrict__ keys, int64_t ldk, int64_t n_keys,
                             int d, double* __restrict__ out, int64_t ldo, int tiles_per_side,
                             int64_t keys_per_split) {
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* As = smem;                                  // [STAGES][BK][MMA_LD]
  uint16_t* Bs = smem + MMA_STAGES * MMA_STAGE_ELEMS;   // [STAGES][BK][MMA_LD]

  int bi, bj;
  upper_tile(blockIdx.x, tiles_per_side, bi, bj);
  const int row0 = bi * TILE;
  const int col0 = bj * TILE;
  const int64_t n_begin = static_cast<int64_t>(blockIdx.y) * keys_per_split;
  const int64_t n_end = min(n_keys, n_begin + keys_per_split);
  if (n_begin >= n_end) return;
  const int ktiles = static_cast<int>((n_end - n_begin + MMA_BK - 1) / MMA_BK);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int warp_m = warp >> 2;  // 0..1 -> 64 rows each
  const int warp_n = warp & 3;   // 0..3 -> 32 columns each

  // A stage is 32 keys x 128 columns x 2 bytes = 512 chunks of 16 bytes per operand.
  auto load_stage = [&](int slot, int kt) {
    const int64_t n0 = n_begin + static_cast<int64_t>(kt) * MMA_BK;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int q = tid + i * THREADS;
      const int kr = q >> 4;
      const int c = (q & 15) * 8;
      const int64_t n = n0 + kr;
      const bool n_ok = n < n_end;
      const int ra = row0 + c;
      const int rb = col0 + c;
      const bool a_ok = n_ok && ra < d;
      const bool b_ok = n_ok && rb < d;
      const uint16_t* src_a = a_ok ? keys + n * ldk + ra : keys;
      const uint16_t* src_b = b_ok ? keys + n * ldk + rb : keys;
      const int off = slot * MMA_STAGE_ELEMS + kr * MMA_LD + c;
      cp_async16(smem_addr(As + off), src_a, a_ok ? 16 : 0);
      cp_async16(smem_addr(Bs + off), src_b, b_ok ? 16 : 0);
    }
  };

  float acc[4][4][4];
  double accd[4][4][4];
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        acc[mi][ni][r] = 0.f;
        accd[mi][ni][r] = 0.0;
      }

#pragma unroll
  for (int s = 0; s < MMA_STAGES - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();  // empty groups keep the wait_group arithmetic uniform
  }

  // ldmatrix.x4 lane roles. A (rows m, k-contiguous fragments): matrices (k0,m0) (k0,m0+8)
  // (k0+8,m0) (k0+8,m0+8) give a0..a3 of m16n8k16. B: (k0,n0) (k0+8,n0) (k0,n0+8)
  // (k0+8,n0+8) give {b0,b1} of two adjacent n8 tiles.
  const int a_k = (lane & 7) + ((lane >> 4) << 3);
  const int a_m = ((lane >> 3) & 1) << 3;
  const int b_k = (lane & 7) + (((lane >> 3) & 1) << 3);
  const int b_n = (lane >> 4) << 3;

  // Each warp flushes every TILES_PER_FLUSH stages, but the warps are staggered by their index:
  // the float32->float64 conversions (16/clk/SM) of a quarter of the warps then overlap the
  // other warps' mma instead of stalling all eight at the same stage.
  constexpr int TILES_PER_FLUSH = FLUSH_KEYS / MMA_BK;
  const int flush_phase = TILES_PER_FLUSH - 1 - (warp % TILES_PER_FLUSH);
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<MMA_STAGES - 2>();
    // Makes stage kt visible to all warps and guarantees that everybody is done with the slot
    // that the prefetch below overwrites (it was consumed in iteration kt-1).
    __syncthreads();
    const int pf = kt + MMA_STAGES - 1;
    if (pf < ktiles) load_stage(pf % MMA_STAGES, pf);
    cp_async_commit();

    const int slot = kt % MMA_STAGES;
    const uint16_t* as = As + slot * MMA_STAGE_ELEMS;
    const uint16_t* bs = Bs + slot * MMA_STAGE_ELEMS;
#pragma unroll
    for (int kk = 0; kk < MMA_BK; kk += 16) {
      uint32_t af[4][4];
      uint32_t bf[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        const int m0 = warp_m * 64 + mi * 16;
        ldmatrix_x4_trans(smem_addr(as + (kk + a_k) * MMA_LD + m0 + a_m), af[mi][0], af[mi][1],
                          af[mi][2], af[mi][3]);
      }
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        const int n0 = warp_n * 32 + p * 16;
        ldmatrix_x4_trans(smem_addr(bs + (kk + b_k) * MMA_LD + n0 + b_n), bf[2 * p][0],
                          bf[2 * p][1], bf[2 * p + 1][0], bf[2 * p + 1][1]);
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_16816<IS_BF16>(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
    }

    if (kt % TILES_PER_FLUSH == flush_phase || kt + 1 == ktiles) {
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            accd[mi][ni][r] += static_cast<double>(acc[mi][ni][r]);
            acc[mi][ni][r] = 0.f;
          }
    }
  }
  cp_async_wait<0>();  // no copy may still target shared memory when the block retires

  // Accumulator layout of m16n8: c0,c1 -> (row g, cols 2t, 2t+1); c2,c3 -> row g+8.
  const int g = lane >> 2;
  const int t4 = lane & 3;
  const bool mirror = bi != bj;
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int row = row0 + warp_m * 64 + mi * 16 + g + ((r >> 1) << 3);
        const int col = col0 + warp_n * 32 + ni * 8 + 2 * t4 + (r & 1);
        if (row < d && col < d) {
          add_out<ATOMIC>(out + static_cast<int64_t>(row) * ldo + col, accd[mi][ni][r]);
          if (mirror) add_out<ATOMIC>(out + static_cast<int64_t>(col) * ldo + row, accd[mi][ni][r]);
        }
      }
}

// -------------------------------------------------------------------------------------------
// Host side
// -------------------------------------------------------------------------------------------

int sm_count(int device) {
  static std::atomic<int> cache[64] = {};
  if (device < 0 || device >= 64) device = 0;
  int v = cache[device].load(std::memory_order_relaxed);
  if (v == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
    cache[device].store(v, std::memory_order_relaxed);
  }
  return v;
}

// SEQEDIT_SECOND_MOMENT_KERNEL=simt forces the FFMA kernel (for cross-checking the tensor-core
// kernel on a new GPU); anything else keeps the automatic choice. Read on every call (a
// microsecond next to a kernel launch) so a test can switch it from Python.
bool mma_disabled() {
  const char* v = std::getenv("SEQEDIT_SECOND_MOMENT_KERNEL");
  return v != nullptr && std::strcmp(v, "simt") == 0;
}

// Keys per block. Both kernels run one block per SM (register bound), so the grid should fill
// whole waves: the number of key ranges per tile is the smallest that keeps at least 90% of the
// SM slots of the last wave busy (or the best found). Each range is a whole number of flush
// chunks and at least 4 of them, so the float64 atomics at the end stay negligible.
int64_t keys_per_split(int64_t n_keys, int64_t tiles, int sms) {
  const int64_t chunks = (n_keys + FLUSH_KEYS - 1) / FLUSH_KEYS;
  const int64_t max_splits = std::min<int64_t>({std::max<int64_t>(1, chunks / 4), 65535, 64});
  int64_t splits = 1;
  double best = 0.0;
  for (int64_t s = 1; s <= max_splits; ++s) {
    const int64_t blocks = tiles * s;
    const int64_t waves = (blocks + sms - 1) / sms;
    const double fill = static_cast<double>(blocks) / static_cast<double>(waves * sms);
    if (fill > best + 1e-9) {
      best = fill;
      splits = s;
    }
    if (fill >= 0.9) break;
  }
  const int64_t chunks_per_split = (chunks + splits - 1) / splits;
  return chunks_per_split * FLUSH_KEYS;
}

template <typename T, bool WEIGHTED, bool ATOMIC>
void launch_simt(const at::Tensor& keys, const at::Tensor& w, double* out, int64_t ldo,
                 int tiles_per_side, int64_t tiles, int64_t splits, int64_t per_split,
                 cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(splits));
  second_moment_simt_kernel<T, WEIGHTED, ATOMIC><<<grid, THREADS, 0, stream>>>(
      reinterpret_cast<const T*>(keys.const_data_ptr()), keys.stride(0), keys.size(0),
      static_cast<int>(keys.size(1)), WEIGHTED ? w.const_data_ptr<float>() : nullptr, out, ldo,
      tiles_per_side, per_split);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void dispatch_simt(const at::Tensor& keys, const at::Tensor& w, bool weighted, bool atomic,
                   double* out, int64_t ldo, int tiles_per_side, int64_t tiles, int64_t splits,
                   int64_t per_split, cudaStream_t stream) {
  if (weighted) {
    if (atomic)
      launch_simt<T, true, true>(keys, w, out, ldo, tiles_per_side, tiles, splits, per_split, stream);
    else
      launch_simt<T, true, false>(keys, w, out, ldo, tiles_per_side, tiles, splits, per_split, stream);
  } else {
    if (atomic)
      launch_simt<T, false, true>(keys, w, out, ldo, tiles_per_side, tiles, splits, per_split, stream);
    else
      launch_simt<T, false, false>(keys, w, out, ldo, tiles_per_side, tiles, splits, per_split, stream);
  }
}

template <bool IS_BF16, bool ATOMIC>
void launch_mma(const at::Tensor& keys, double* out, int64_t ldo, int tiles_per_side,
                int64_t tiles, int64_t splits, int64_t per_split, cudaStream_t stream) {
  auto kernel = second_moment_mma_kernel<IS_BF16, ATOMIC>;
  // 52 KB of dynamic shared memory is above the 48 KB default limit; setting the attribute is
  // a cheap host call, so it is repeated instead of cached per device.
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(MMA_SMEM_BYTES)));
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(splits));
  kernel<<<grid, THREADS, MMA_SMEM_BYTES, stream>>>(
      reinterpret_cast<const uint16_t*>(keys.const_data_ptr()), keys.stride(0), keys.size(0),
      static_cast<int>(keys.size(1)), out, ldo, tiles_per_side, per_split);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_inputs(const at::Tensor& acc, const at::Tensor& keys,
                  const std::optional<at::Tensor>& weights) {
  TORCH_CHECK_VALUE(acc.is_cuda() && keys.is_cuda() && acc.device() == keys.device(),
                    "second_moment_: acc and keys must be on one CUDA device");
  TORCH_CHECK_VALUE(acc.dim() == 2 && acc.size(0) == acc.size(1),
                    "second_moment_: acc must be a square matrix, got shape ", acc.sizes());
  TORCH_CHECK_TYPE(acc.scalar_type() == at::kFloat || acc.scalar_type() == at::kDouble,
                   "second_moment_: acc must be float32 or float64, got ", acc.scalar_type());
  TORCH_CHECK_VALUE(keys.dim() == 2 && keys.size(1) == acc.size(0), "second_moment_: keys must be [N, ",
                    acc.size(0), "], got ", keys.sizes());
  const auto kt = keys.scalar_type();
  TORCH_CHECK_TYPE(kt == at::kFloat || kt == at::kBFloat16 || kt == at::kHalf,
                   "second_moment_: keys must be float32, bfloat16 or float16, got ", kt);
  TORCH_CHECK_VALUE(acc.size(0) <= (int64_t{1} << 30), "second_moment_: d too large");
  if (weights.has_value() && weights->defined()) {
    TORCH_CHECK_VALUE(weights->device() == keys.device(), "second_moment_: weights on another device");
    TORCH_CHECK_VALUE(weights->dim() == 1 && weights->size(0) == keys.size(0),
                      "second_moment_: weights must be [N] = [", keys.size(0), "], got ", weights->sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(weights->scalar_type()),
                     "second_moment_: weights must be floating point");
  }
}

void second_moment_one(const at::Tensor& acc, const at::Tensor& keys_in,
                       const std::optional<at::Tensor>& weights) {
  check_inputs(acc, keys_in, weights);
  const int64_t n_keys = keys_in.size(0);
  const int64_t d = acc.size(0);
  if (n_keys == 0 || d == 0) return;

  const c10::cuda::CUDAGuard guard(acc.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(acc.get_device()).stream();

  // Rows must be contiguous; a row stride (a slice of a wider buffer) is fine.
  at::Tensor keys = keys_in.stride(1) == 1 && keys_in.stride(0) >= d ? keys_in : keys_in.contiguous();
  const bool weighted = weights.has_value() && weights->defined();
  at::Tensor w = weighted ? weights->to(at::kFloat).contiguous() : at::Tensor();

  // float64 acc with unit column stride is accumulated in place; otherwise the new term is
  // summed in a float64 scratch and added in one ATen op (float32 acc: rounded once).
  const bool direct = acc.scalar_type() == at::kDouble && acc.stride(1) == 1 && acc.stride(0) >= d;
  at::Tensor scratch = direct ? acc : at::zeros({d, d}, acc.options().dtype(at::kDouble));
  double* out = scratch.data_ptr<double>();
  const int64_t ldo = scratch.stride(0);

  const int tiles_per_side = static_cast<int>((d + TILE - 1) / TILE);
  const int64_t tiles = static_cast<int64_t>(tiles_per_side) * (tiles_per_side + 1) / 2;
  TORCH_CHECK(tiles <= INT32_MAX, "second_moment_: d too large");
  const int64_t per_split = keys_per_split(n_keys, tiles, sm_count(acc.get_device()));
  const int64_t splits = (n_keys + per_split - 1) / per_split;
  const bool atomic = splits > 1;

  const auto kt = keys.scalar_type();
  const bool mma_ok = !weighted && !mma_disabled() && (kt == at::kBFloat16 || kt == at::kHalf) &&
                      d % 8 == 0 && keys.stride(0) % 8 == 0 &&
                      reinterpret_cast<uintptr_t>(keys.const_data_ptr()) % 16 == 0;
  if (mma_ok) {
    const bool bf16 = kt == at::kBFloat16;
    if (bf16 && atomic) launch_mma<true, true>(keys, out, ldo, tiles_per_side, tiles, splits, per_split, stream);
    else if (bf16) launch_mma<true, false>(keys, out, ldo, tiles_per_side, tiles, splits, per_split, stream);
    else if (atomic) launch_mma<false, true>(keys, out, ldo, tiles_per_side, tiles, splits, per_split, stream);
    else launch_mma<false, false>(keys, out, ldo, tiles_per_side, tiles, splits, per_split, stream);
  } else if (kt == at::kFloat) {
    dispatch_simt<float>(keys, w, weighted, atomic, out, ldo, tiles_per_side, tiles, splits, per_split, stream);
  } else if (kt == at::kBFloat16) {
    dispatch_simt<c10::BFloat16>(keys, w, weighted, atomic, out, ldo, tiles_per_side, tiles, splits, per_split, stream);
  } else {
    dispatch_simt<c10::Half>(keys, w, weighted, atomic, out, ldo, tiles_per_side, tiles, splits, per_split, stream);
  }

  if (!direct) acc.add_(scratch);
}

// The C++ signatures must be exactly those of the CPU kernels (docs/contracts.md): the
// dispatcher refuses two kernels of one operator with different unboxed signatures.
void second_moment_cuda(const at::Tensor& acc, const at::Tensor& keys,
                        const std::optional<at::Tensor>& weights) {
  second_moment_one(acc, keys, weights);
}

void second_moment_list_cuda(at::TensorList accs, at::TensorList keys,
                             const c10::List<std::optional<at::Tensor>>& weights) {
  TORCH_CHECK_VALUE(accs.size() == keys.size(), "second_moment_list_: ", accs.size(), " accs but ",
                    keys.size(), " key tensors");
  TORCH_CHECK_VALUE(weights.size() == 0 || weights.size() == accs.size(), "second_moment_list_: ",
                    weights.size(), " weights for ", accs.size(), " layers");
  // Validate everything before the first layer is touched, so a bad layer leaves all unchanged.
  for (size_t i = 0; i < accs.size(); ++i) {
    check_inputs(accs[i], keys[i], weights.size() ? weights.get(i) : std::optional<at::Tensor>());
  }
  for (size_t i = 0; i < accs.size(); ++i) {
    second_moment_one(accs[i], keys[i], weights.size() ? weights.get(i) : std::optional<at::Tensor>());
  }
}

}  // namespace
}  // namespace seqedit_cuda

TORCH_LIBRARY_IMPL(seqedit, CUDA, m) {
  m.impl("second_moment_", &seqedit_cuda::second_moment_cuda);
  m.impl("second_moment_list_", &seqedit_cuda::second_moment_list_cuda);
}
