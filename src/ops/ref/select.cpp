// Host defaults of the token-selection ops (sampling penalties, top-k), for backends whose memory
// is host memory; the CUDA backend runs its own kernels.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "ops/ops.h"

namespace lathe::ops {

void Ops::apply_penalties(const PenaltyParams& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    float* row = p.logits + r * p.vocab;
    for (int32_t i = p.offsets[r]; i < p.offsets[r + 1]; ++i) {
      float& l = row[p.ids[i]];
      if (p.repetition[r] != 1.f) l = l > 0 ? l / p.repetition[r] : l * p.repetition[r];
      l -= p.presence[r] + p.frequency[r] * float(p.counts[i]);
    }
  }
}

void Ops::top_k(const TopKParams& p) {
  if (p.k < 1 || p.k > std::min(p.vocab, TopKParams::kMaxK))
    fail(ErrorKind::kInvalidArgument, "top_k: k = {} is outside 1..{}", p.k, std::min(p.vocab, TopKParams::kMaxK));
  std::vector<int32_t> idx(static_cast<size_t>(p.vocab));
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* row = p.logits + r * p.vocab;
    std::iota(idx.begin(), idx.end(), 0);
    auto before = [&](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); };
    std::partial_sort(idx.begin(), idx.begin() + p.k, idx.end(), before);
    for (int64_t i = 0; i < p.k; ++i) {
      p.ids[r * p.k + i] = idx[size_t(i)];
      p.values[r * p.k + i] = row[idx[size_t(i)]];
    }
    if (p.inv_temperature) {
      const double mx = row[idx[0]], it = p.inv_temperature[r];
      double sum = 0;
      for (int64_t j = 0; j < p.vocab; ++j) sum += std::exp((double(row[j]) - mx) * it);
      p.sums[r] = float(sum);
    }
  }
}

}  // namespace lathe::ops
