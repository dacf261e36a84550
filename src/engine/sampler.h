// The sampler chain: penalties -> temperature -> top-k -> top-p -> min-p -> draw. Greedy (argmax,
// first index on ties, like torch.argmax) when temperature is 0. Seeded, so a seed reproduces a run.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

namespace lathe::engine {

struct SamplerConfig {
  float temperature = 1.f;        // 0: greedy
  int64_t top_k = 0;              // 0: off
  float top_p = 1.f;              // 1: off
  float min_p = 0.f;              // 0: off (keep tokens with p >= min_p * p_max)
  float repetition_penalty = 1.f; // HF/CTRL style: logit > 0 ? logit / p : logit * p, once per seen token
  float presence_penalty = 0.f;   // OpenAI style: logit -= presence if seen
  float frequency_penalty = 0.f;  // OpenAI style: logit -= frequency * count
  int64_t penalty_last_n = 0;     // window of history the penalties look at (0: all of it)
  uint64_t seed = 0;
  // OpenAI's logit_bias: (token id, value added to its logit) before the penalties; -100 / +100
  // all but ban / force a token. Ids past the vocabulary are ignored. A request with a bias samples
  // from the whole logits row on the host (see BatchEngine::step).
  std::vector<std::pair<int32_t, float>> logit_bias;
};

class Sampler {
 public:
  explicit Sampler(const SamplerConfig& config);
  // history: every token so far (prompt + generated), the penalties' input.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);
  const SamplerConfig& config() const { return config_; }

  // ---- The same choice from the backend's top-k (model::Runner::forward_select) --------------
  // The (id, count) pairs the penalties apply to, for this history.
  std::vector<std::pair<int32_t, int32_t>> penalty_counts(std::span<const int32_t> history) const;
  bool penalized() const;
  // Candidates to ask for: 1 when greedy, top_k when set, else `cap`.
  int64_t candidates_wanted(int64_t vocab, int64_t cap = 256) const;
  // Picks from the k best penalized logits (sorted, best first; equal logits lower id first) and
  // the softmax denominator over the whole vocabulary. Returns -1 when the candidates cannot decide
  // (the draw reaches past them): then call choose_full with the full penalized row, which reuses
  // this call's random draw, so the result equals sample() on the same logits.
  int32_t choose(std::span<const int32_t> ids, std::span<const float> values, double sum, int64_t vocab);
  int32_t choose_full(std::span<const float> penalized_logits);
  // Applies the penalties to a full row in place (what sample() does first).
  // The logit bias, then the penalties, applied to a full row in place.
  void penalize(std::vector<float>& logits, std::span<const int32_t> history) const;

 private:
  double uniform();  // [0, 1), 53 random bits: identical on every platform for a seed
  int32_t pick(std::vector<float>& work, double u);  // temperature > 0, penalties applied
  double pending_u_ = -1;  // the draw of a choose() that returned -1

  SamplerConfig config_;
  std::mt19937_64 rng_;
  std::vector<float> work_;
  std::vector<int32_t> idx_;
};

int32_t argmax(std::span<const float> logits);

}  // namespace lathe::engine
