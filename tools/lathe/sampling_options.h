// Sampling flags shared by generate and chat; unset flags fall back to the model's
// generation_config.json (greedy when it does not ask for sampling).
#pragma once

#include <CLI/CLI.hpp>
#include <optional>

#include "engine/sampler.h"
#include "model/config.h"

namespace lathe::cli {

struct SamplingOptions {
  std::optional<float> temperature, top_p, min_p, repetition_penalty;
  std::optional<int64_t> top_k;
  float presence_penalty = 0, frequency_penalty = 0;
  int64_t penalty_last_n = 0;
  std::optional<uint64_t> seed;

  void add_to(CLI::App* cmd);
  engine::SamplerConfig resolve(const model::GenerationDefaults& defaults) const;
};

}  // namespace lathe::cli
