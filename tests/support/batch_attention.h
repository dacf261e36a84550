// A batched, paged attention case shared by the parity tests of every backend: several sequences
// with their own query and key counts, K/V rows scattered over a pool through shuffled block
// tables, checked against the reference's single-sequence attention on each sequence's rows
// gathered into a contiguous cache.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "ops/ops.h"
#include "support/parity.h"

namespace lathe::testing {

struct BatchAttnCase {
  std::vector<int64_t> q_len;   // queries per sequence
  std::vector<int64_t> kv_len;  // keys per sequence (>= its queries)
  int64_t heads = 8, kv_heads = 2, head_dim = 64, window = 0;
  float softcap = 0.f;
  int64_t block_size = 16;
  int64_t spare_blocks = 0;  // extra (unused) table entries per sequence, as a recorded graph has
  DType kv_dtype = DType::kF32;  // kBF16: the pool holds bf16 K/V (the reference gets the same rounded values)
  bool lowp_out = false;  // also run with only a bf16 output (out_lowp): must be the fp32 output rounded
  // kQ8/kQ4: the pool holds codes and scales written by the host reference (ops/kv_quant.h); the
  // reference attends over the dequantized values, so only the backend's reading is measured.
  ops::KvQuant kv_quant = ops::KvQuant::kNone;
};

// Runs `backend.attention_batch` (inputs uploaded through its memory interface) and returns the
// error against `ref`; records it in `worst` against `tol`.
double check_batch_attention(ops::Ops& backend, ops::Ops& ref, std::mt19937& rng, Worst& worst,
                             const BatchAttnCase& c, double tol);

}  // namespace lathe::testing
