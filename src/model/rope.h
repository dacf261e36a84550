// RoPE frequency tables for every variant transformers implements (modeling_rope_utils.py):
// default, linear, dynamic NTK, llama3, yarn, longrope. The op (ops::rope) only sees cos/sin.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace lathe::model {

struct RopeFrequencies {
  std::vector<float> inv_freq;    // [rot_dim / 2]
  float attention_scaling = 1.f;  // folded into cos and sin (yarn, longrope)
};

int64_t rope_rot_dim(const ModelConfig& c);

// seq_len: the length the current forward covers (max position + 1). Only dynamic NTK and
// longrope depend on it, switching once it exceeds the original context.
RopeFrequencies rope_frequencies(const ModelConfig& c, int64_t seq_len);

// Frequencies are the same for every seq_len <= this (the short-context tables), so callers may
// compute them once; beyond it, call rope_frequencies with the actual length.
int64_t rope_static_length(const ModelConfig& c);

// cos/sin tables [n, rot_dim / 2] for the given positions, scaling folded in.
void rope_tables(const RopeFrequencies& f, const int32_t* positions, int64_t n, float* cos_out, float* sin_out);

}  // namespace lathe::model
