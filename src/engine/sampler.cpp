#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>

#include "core/error.h"

namespace lathe::engine {

int32_t argmax(std::span<const float> logits) {
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = i;
  return int32_t(best);
}

Sampler::Sampler(const SamplerConfig& c) : config_(c), rng_(c.seed) {
  if (!(c.temperature >= 0)) fail(ErrorKind::kInvalidArgument, "temperature must be >= 0 (got {})", c.temperature);
  if (c.top_k < 0) fail(ErrorKind::kInvalidArgument, "top-k must be >= 0 (got {})", c.top_k);
  if (!(c.top_p > 0 && c.top_p <= 1)) fail(ErrorKind::kInvalidArgument, "top-p must be in (0, 1] (got {})", c.top_p);
  if (!(c.min_p >= 0 && c.min_p <= 1)) fail(ErrorKind::kInvalidArgument, "min-p must be in [0, 1] (got {})", c.min_p);
  if (!(c.repetition_penalty > 0))
    fail(ErrorKind::kInvalidArgument, "repetition penalty must be > 0 (got {})", c.repetition_penalty);
}

double Sampler::uniform() { return double(rng_() >> 11) * 0x1.0p-53; }

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  const size_t V = logits.size();
  work_.assign(logits.begin(), logits.end());
  const SamplerConfig& c = config_;

  if (c.repetition_penalty != 1.f || c.presence_penalty != 0.f || c.frequency_penalty != 0.f) {
    size_t start = 0;
    if (c.penalty_last_n > 0 && history.size() > size_t(c.penalty_last_n)) start = history.size() - size_t(c.penalty_last_n);
    std::unordered_map<int32_t, int> counts;
    for (size_t i = start; i < history.size(); ++i)
      if (history[i] >= 0 && size_t(history[i]) < V) ++counts[history[i]];
    for (auto [id, n] : counts) {
      float& l = work_[size_t(id)];
      if (c.repetition_penalty != 1.f) l = l > 0 ? l / c.repetition_penalty : l * c.repetition_penalty;
      l -= c.presence_penalty + c.frequency_penalty * float(n);
    }
  }
  if (c.temperature == 0.f) return argmax(work_);

  // Candidates sorted by logit (descending); stable so equal logits keep id order.
  idx_.resize(V);
  std::iota(idx_.begin(), idx_.end(), 0);
  size_t keep = V;
  auto by_logit = [&](int32_t a, int32_t b) { return work_[size_t(a)] > work_[size_t(b)]; };
  if (c.top_k > 0 && size_t(c.top_k) < V) {
    keep = size_t(c.top_k);
    std::partial_sort(idx_.begin(), idx_.begin() + ptrdiff_t(keep), idx_.end(), by_logit);
  } else {
    std::stable_sort(idx_.begin(), idx_.end(), by_logit);
  }
  // Softmax over the kept candidates at this temperature.
  const double mx = work_[size_t(idx_[0])];
  std::vector<double> p(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) {
    p[i] = std::exp((double(work_[size_t(idx_[i])]) - mx) / c.temperature);
    sum += p[i];
  }
  for (auto& x : p) x /= sum;
  if (c.top_p < 1.f) {  // smallest prefix whose mass reaches top_p (always at least one token)
    double cum = 0;
    size_t n = 0;
    while (n < keep) {
      cum += p[n++];
      if (cum >= c.top_p) break;
    }
    keep = n;
  }
  if (c.min_p > 0.f) {
    const double floor = c.min_p * p[0];
    size_t n = 1;
    while (n < keep && p[n] >= floor) ++n;
    keep = n;
  }
  double mass = 0;
  for (size_t i = 0; i < keep; ++i) mass += p[i];
  double r = uniform() * mass;
  for (size_t i = 0; i < keep; ++i) {
    r -= p[i];
    if (r < 0) return idx_[i];
  }
  return idx_[keep - 1];
}

}  // namespace lathe::engine
