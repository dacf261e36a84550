#include "support/batch_forward.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "support/golden.h"

namespace lathe::testing {

using model::KvCache;
using model::KvPool;
using model::LogitsFor;
using model::SeqInput;
using model::SeqKv;
using model::Workspace;

BatchForwardResult batch_vs_single(const model::Runner& runner, const std::vector<std::vector<int32_t>>& prompts,
                                   int decode_steps, int64_t block_size) {
  const auto& c = runner.config();
  const int64_t V = c.vocab_size;
  const size_t S = prompts.size();
  // The token each sequence is fed at decode step d (fixed, so both runs see the same inputs).
  auto feed = [&](size_t s, int d) { return prompts[s][size_t(d) % prompts[s].size()]; };

  // Alone: prompt logits (all rows) and each decode step's logits.
  std::vector<std::vector<float>> alone_prompt(S), alone_decode(S);
  for (size_t s = 0; s < S; ++s) {
    KvCache cache(c, int64_t(prompts[s].size()) + decode_steps + 1, runner.ops());
    Workspace ws(runner.ops());
    Tensor logits;
    runner.forward(prompts[s], cache, ws, LogitsFor::kAll, &logits);
    alone_prompt[s].assign(logits.as<float>(), logits.as<float>() + logits.numel());
    for (int d = 0; d < decode_steps; ++d) {
      const int32_t t = feed(s, d);
      runner.forward(std::span<const int32_t>(&t, 1), cache, ws, LogitsFor::kLast, &logits);
      alone_decode[s].insert(alone_decode[s].end(), logits.as<float>(), logits.as<float>() + V);
    }
  }

  // Together: blocks handed out shuffled, so no sequence's blocks are consecutive.
  int64_t need = 0;
  for (const auto& p : prompts) need += (int64_t(p.size()) + decode_steps + block_size) / block_size;
  KvPool pool(c, need + 1, block_size, runner.ops());
  std::vector<int32_t> free_blocks(static_cast<size_t>(need + 1));
  std::iota(free_blocks.begin(), free_blocks.end(), 0);
  std::mt19937 rng(7);
  std::shuffle(free_blocks.begin(), free_blocks.end(), rng);
  std::vector<SeqKv> kv(S);
  for (size_t s = 0; s < S; ++s) {
    const int64_t blocks = (int64_t(prompts[s].size()) + decode_steps + block_size) / block_size;
    for (int64_t b = 0; b < blocks; ++b) {
      kv[s].blocks.push_back(free_blocks.back());
      free_blocks.pop_back();
    }
  }

  BatchForwardResult r;
  auto compare = [&](const float* got, const float* want) {
    double w = 0;
    for (int64_t i = 0; i < V; ++i) w = std::max(w, double(std::fabs(got[i] - want[i])));
    r.worst = std::max(r.worst, w);
    r.rows += 1;
    r.argmax_diff += argmax(got, V) != argmax(want, V);
  };

  Workspace ws(runner.ops());
  Tensor logits;
  // Step 1: sequence 0 prefills its first half only (no logits); the others prefill everything,
  // sequence 1 asking for all rows and the rest for the last.
  const size_t half = prompts[0].size() / 2;
  {
    std::vector<SeqInput> step;
    if (half > 0) step.push_back({std::span<const int32_t>(prompts[0].data(), half), &kv[0], LogitsFor::kNone});
    for (size_t s = 1; s < S; ++s) step.push_back({prompts[s], &kv[s], s == 1 ? LogitsFor::kAll : LogitsFor::kLast});
    runner.forward_batch(step, pool, ws, &logits);
    const float* row = logits.as<float>();
    for (size_t s = 1; s < S; ++s) {
      const int64_t n = int64_t(prompts[s].size());
      for (int64_t i = s == 1 ? 0 : n - 1; i < n; ++i, row += V) compare(row, alone_prompt[s].data() + i * V);
    }
  }
  // Step 2: the rest of sequence 0 (all rows) alongside everyone else's first decode.
  {
    std::vector<SeqInput> step;
    std::vector<int32_t> tokens(S);
    step.push_back({std::span<const int32_t>(prompts[0].data() + half, prompts[0].size() - half), &kv[0],
                    LogitsFor::kAll});
    for (size_t s = 1; s < S; ++s) {
      tokens[s] = feed(s, 0);
      step.push_back({std::span<const int32_t>(&tokens[s], 1), &kv[s], LogitsFor::kLast});
    }
    runner.forward_batch(step, pool, ws, &logits);
    const float* row = logits.as<float>();
    for (size_t i = half; i < prompts[0].size(); ++i, row += V) compare(row, alone_prompt[0].data() + i * V);
    for (size_t s = 1; s < S; ++s, row += V) compare(row, alone_decode[s].data());
  }
  // Then decode steps for everyone (sequence 0 is one step behind the others).
  for (int d = 0; d + 1 < decode_steps; ++d) {
    std::vector<SeqInput> step;
    std::vector<int32_t> tokens(S);
    for (size_t s = 0; s < S; ++s) {
      tokens[s] = feed(s, s == 0 ? d : d + 1);
      step.push_back({std::span<const int32_t>(&tokens[s], 1), &kv[s], LogitsFor::kLast});
    }
    runner.forward_batch(step, pool, ws, &logits);
    for (size_t s = 0; s < S; ++s)
      compare(logits.as<float>() + int64_t(s) * V, alone_decode[s].data() + (s == 0 ? d : d + 1) * V);
  }
  return r;
}

}  // namespace lathe::testing
