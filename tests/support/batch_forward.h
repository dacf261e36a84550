// Batched forward vs one sequence at a time, shared by the CPU and CUDA model tests: several
// prompts of different lengths run through Runner::forward_batch over one paged pool (shuffled
// blocks, a chunked prefill mixed with decodes, then all-decode steps that a device backend
// replays as a graph) must give the logits each prompt gets alone through Runner::forward.
#pragma once

#include <cstdint>
#include <vector>

#include "model/model.h"

namespace lathe::testing {

struct BatchForwardResult {
  double worst = 0;    // max |batched - single| over every compared logit
  int64_t rows = 0;    // logits rows compared
  int argmax_diff = 0; // rows whose argmax differs
};

BatchForwardResult batch_vs_single(const model::Runner& runner, const std::vector<std::vector<int32_t>>& prompts,
                                   int decode_steps, int64_t block_size);

}  // namespace lathe::testing
