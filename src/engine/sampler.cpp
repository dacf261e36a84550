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

std::vector<std::pair<int32_t, int32_t>> Sampler::penalty_counts(std::span<const int32_t> history) const {
  std::vector<std::pair<int32_t, int32_t>> out;
  if (!penalized()) return out;
  const SamplerConfig& c = config_;
  size_t start = 0;
  if (c.penalty_last_n > 0 && history.size() > size_t(c.penalty_last_n)) start = history.size() - size_t(c.penalty_last_n);
  std::unordered_map<int32_t, int> counts;
  for (size_t i = start; i < history.size(); ++i)
    if (history[i] >= 0) ++counts[history[i]];
  out.assign(counts.begin(), counts.end());
  std::sort(out.begin(), out.end());
  return out;
}

bool Sampler::penalized() const {
  return config_.repetition_penalty != 1.f || config_.presence_penalty != 0.f || config_.frequency_penalty != 0.f;
}

void Sampler::penalize(std::vector<float>& work, std::span<const int32_t> history) const {
  const SamplerConfig& c = config_;
  for (auto [id, bias] : c.logit_bias)
    if (id >= 0 && size_t(id) < work.size()) work[size_t(id)] += bias;
  for (auto [id, n] : penalty_counts(history)) {
    if (size_t(id) >= work.size()) continue;
    float& l = work[size_t(id)];
    if (c.repetition_penalty != 1.f) l = l > 0 ? l / c.repetition_penalty : l * c.repetition_penalty;
    l -= c.presence_penalty + c.frequency_penalty * float(n);
  }
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  work_.assign(logits.begin(), logits.end());
  penalize(work_, history);
  if (config_.temperature == 0.f) return argmax(work_);
  return pick(work_, uniform());
}

int64_t Sampler::candidates_wanted(int64_t vocab, int64_t cap) const {
  if (config_.temperature == 0.f) return 1;
  const int64_t k = config_.top_k > 0 && config_.top_k < vocab ? config_.top_k : std::min(cap, vocab);
  return std::min(k, vocab);
}

int32_t Sampler::choose(std::span<const int32_t> ids, std::span<const float> values, double sum, int64_t vocab) {
  const SamplerConfig& c = config_;
  pending_u_ = -1;
  if (ids.empty()) return -1;
  if (c.temperature == 0.f) return ids[0];
  const double u = uniform();
  const size_t K = ids.size();
  const double mx = values[0];
  // keep: tokens still in play (may exceed the K candidates when nothing truncates).
  const bool by_k = c.top_k > 0 && c.top_k < vocab;
  size_t keep = by_k ? size_t(c.top_k) : size_t(vocab);
  std::vector<double> p(std::min(keep, K));
  double kept_sum = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    p[i] = std::exp((double(values[i]) - mx) / c.temperature);
    kept_sum += p[i];
  }
  if (by_k && K < keep) {  // the caller asked for fewer candidates than top_k keeps
    pending_u_ = u;
    return -1;
  }
  const double denom = by_k ? kept_sum : sum;
  for (auto& x : p) x /= denom;
  if (c.top_p < 1.f) {
    double cum = 0;
    size_t n = 0;
    while (n < p.size()) {
      cum += p[n++];
      if (cum >= c.top_p) break;
    }
    if (cum < c.top_p && keep > p.size()) {
      pending_u_ = u;
      return -1;
    }
    keep = std::min(keep, n);
  }
  if (c.min_p > 0.f) {
    const double floor = c.min_p * p[0];
    size_t n = 1;
    while (n < std::min(keep, p.size()) && p[n] >= floor) ++n;
    if (n == p.size() && keep > p.size()) {  // the floor may reach past the candidates
      pending_u_ = u;
      return -1;
    }
    keep = std::min(keep, n);
  }
  double mass = 1.0;  // nothing truncated: the whole distribution
  if (keep <= p.size()) {
    mass = 0;
    for (size_t i = 0; i < keep; ++i) mass += p[i];
  }
  double r = u * mass;
  for (size_t i = 0; i < std::min(keep, p.size()); ++i) {
    r -= p[i];
    if (r < 0) return ids[i];
  }
  if (keep > p.size()) {
    pending_u_ = u;
    return -1;
  }
  return ids[keep - 1];
}

int32_t Sampler::choose_full(std::span<const float> penalized_logits) {
  work_.assign(penalized_logits.begin(), penalized_logits.end());
  if (config_.temperature == 0.f) return argmax(work_);
  const double u = pending_u_ >= 0 ? pending_u_ : uniform();
  pending_u_ = -1;
  return pick(work_, u);
}

int32_t Sampler::pick(std::vector<float>& work, double u) {
  const size_t V = work.size();
  const SamplerConfig& c = config_;
  // Candidates sorted by logit (descending); equal logits keep id order (as the backends' top-k).
  idx_.resize(V);
  std::iota(idx_.begin(), idx_.end(), 0);
  size_t keep = V;
  auto by_logit = [&](int32_t a, int32_t b) { return work[size_t(a)] > work[size_t(b)] || (work[size_t(a)] == work[size_t(b)] && a < b); };
  if (c.top_k > 0 && size_t(c.top_k) < V) {
    keep = size_t(c.top_k);
    std::partial_sort(idx_.begin(), idx_.begin() + ptrdiff_t(keep), idx_.end(), by_logit);
  } else {
    std::sort(idx_.begin(), idx_.end(), by_logit);
  }
  // Softmax over the kept candidates at this temperature.
  const double mx = work[size_t(idx_[0])];
  std::vector<double> p(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) {
    p[i] = std::exp((double(work[size_t(idx_[i])]) - mx) / c.temperature);
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
  double r = u * mass;
  for (size_t i = 0; i < keep; ++i) {
    r -= p[i];
    if (r < 0) return idx_[i];
  }
  return idx_[keep - 1];
}

}  // namespace lathe::engine
