// CPU kernel of seqedit::second_moment_: acc[d,d] += sum_i w_i k_i k_i^T.
//
// The Gram matrix is cut into column tiles and only the tile pairs (I, J) with I <= J are
// computed: this halves the flops, and each off-diagonal tile is added to acc twice (as itself
// and transposed), so those parts of the update are exact mirror images. Keys are read in
// blocks of kBlockRows rows; for each block the tile product K[:, I]^T K[:, J] is formed in
// float32 by BLAS (at::mm, where all the flops go) and summed into a tile accumulator of acc's
// dtype. With a float64 acc the float32 rounding is thus confined to sums of at most
// kBlockRows products, and the error relative to an all-float64 computation does not grow
// with N.
//
// Work is split over (tile pair, segment of blocks) items in one parallel region, each BLAS
// call single-threaded: many small multithreaded BLAS calls would pay a fork/join each.
// Items that share a tile pair (only when there are few pairs, i.e. small d) keep private
// partial tiles that are reduced in item order, so results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

namespace {

// 256 float32 products per sum: the within-block relative rounding error stays around
// sqrt(256) * 6e-8 ~ 1e-6 and these errors average out across blocks in a float64 acc; 256 is
// also a long enough inner dimension for BLAS to run at full speed.
constexpr int64_t kBlockRows = 256;
// Tiles of about this width: large enough for efficient GEMMs, small enough that skipping the
// lower triangle saves most of its flops (and a float64 tile fits in L2).
constexpr int64_t kTile = 256;
// Enough independent items to keep this many threads busy when d is small.
constexpr int64_t kMinItems = 16;

void check_pair(const at::Tensor& acc, const at::Tensor& keys,
                const std::optional<at::Tensor>& weights) {
  TORCH_CHECK_VALUE(acc.dim() == 2 && acc.size(0) == acc.size(1),
                    "second_moment_: acc must be a square matrix, got shape ", acc.sizes());
  TORCH_CHECK_TYPE(acc.scalar_type() == at::kFloat || acc.scalar_type() == at::kDouble,
                   "second_moment_: acc must be float32 or float64, got ", acc.scalar_type());
  TORCH_CHECK_VALUE(keys.dim() == 2 && keys.size(1) == acc.size(0),
                    "second_moment_: keys must be [N, ", acc.size(0), "], got ", keys.sizes());
  const auto kt = keys.scalar_type();
  TORCH_CHECK_TYPE(kt == at::kFloat || kt == at::kBFloat16 || kt == at::kHalf,
                   "second_moment_: keys must be float32, bfloat16 or float16, got ", kt);
  TORCH_CHECK_VALUE(keys.device() == acc.device(), "second_moment_: keys on ", keys.device(),
                    " but acc on ", acc.device());
  if (weights.has_value()) {
    const auto& w = *weights;
    TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == keys.size(0),
                      "second_moment_: weights must be [", keys.size(0), "], got ", w.sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()),
                     "second_moment_: weights must be floating point, got ", w.scalar_type());
    TORCH_CHECK_VALUE(w.device() == acc.device(), "second_moment_: weights on ", w.device(),
                      " but acc on ", acc.device());
  }
}

struct Range {
  int64_t begin;
  int64_t size;
};

// Part `index` of `count` near-equal parts of [0, total).
Range part(int64_t total, int64_t count, int64_t index) {
  const int64_t base = total / count, extra = total % count;
  return {index * base + std::min(index, extra), base + (index < extra ? 1 : 0)};
}

// acc[I, J] += tile and, off the diagonal, acc[J, I] += tile^T.
void add_symmetric(const at::Tensor& acc, Range ri, Range rj, const at::Tensor& tile) {
  acc.narrow(0, ri.begin, ri.size).narrow(1, rj.begin, rj.size).add_(tile);
  if (ri.begin != rj.begin) {
    acc.narrow(0, rj.begin, rj.size).narrow(1, ri.begin, ri.size).add_(tile.t());
  }
}

void second_moment_one(const at::Tensor& acc, const at::Tensor& keys,
                       const std::optional<at::Tensor>& weights) {
  check_pair(acc, keys, weights);
  const int64_t n = keys.size(0);
  const int64_t d = keys.size(1);
  if (n == 0 || d == 0) return;

  const int64_t tiles = (d + kTile - 1) / kTile;
  std::vector<std::pair<Range, Range>> pairs;
  for (int64_t i = 0; i < tiles; ++i) {
    for (int64_t j = i; j < tiles; ++j) pairs.emplace_back(part(d, tiles, i), part(d, tiles, j));
  }
  const int64_t npairs = static_cast<int64_t>(pairs.size());
  const int64_t blocks = (n + kBlockRows - 1) / kBlockRows;
  const int64_t segments = std::clamp<int64_t>((kMinItems + npairs - 1) / npairs, 1, blocks);
  const at::Tensor w32 = weights.has_value() ? weights->to(at::kFloat) : at::Tensor();
  std::vector<at::Tensor> partial(segments > 1 ? npairs * segments : 0);

  at::parallel_for(0, npairs * segments, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const auto& [ri, rj] = pairs[item / segments];
      const Range seg = part(blocks, segments, item % segments);
      at::Tensor tile = at::zeros({ri.size, rj.size}, acc.options());
      at::Tensor gram = at::empty({ri.size, rj.size}, acc.options().dtype(at::kFloat));
      for (int64_t b = seg.begin; b < seg.begin + seg.size; ++b) {
        const int64_t r0 = b * kBlockRows, rows = std::min(kBlockRows, n - r0);
        const at::Tensor block = keys.narrow(0, r0, rows);
        at::Tensor left = block.narrow(1, ri.begin, ri.size).to(at::kFloat);
        if (w32.defined()) left = left * w32.narrow(0, r0, rows).unsqueeze(1);
        const at::Tensor right = block.narrow(1, rj.begin, rj.size).to(at::kFloat);
        tile.add_(at::mm_out(gram, left.t(), right));
      }
      if (segments > 1) {
        partial[item] = tile;
      } else {
        add_symmetric(acc, ri, rj, tile);
      }
    }
  });
  for (int64_t p = 0; p < npairs && segments > 1; ++p) {
    const auto& [ri, rj] = pairs[p];
    at::Tensor tile = partial[p * segments];
    for (int64_t s = 1; s < segments; ++s) tile.add_(partial[p * segments + s]);
    add_symmetric(acc, ri, rj, tile);
  }
}

void second_moment_list_cpu(at::TensorList accs, at::TensorList keys,
                            const c10::List<std::optional<at::Tensor>>& weights) {
  TORCH_CHECK_VALUE(accs.size() == keys.size() && accs.size() == weights.size(),
                    "second_moment_list_: accs, keys and weights must have the same length, got ",
                    accs.size(), ", ", keys.size(), ", ", weights.size());
  for (size_t i = 0; i < accs.size(); ++i) second_moment_one(accs[i], keys[i], weights.get(i));
}

}  // namespace

TORCH_LIBRARY_IMPL(seqedit, CPU, m) {
  m.impl("second_moment_", &second_moment_one);
  m.impl("second_moment_list_", &second_moment_list_cpu);
}
