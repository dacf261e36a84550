// GPTQ checkpoints (AutoGPTQ / GPTQModel layout, ../shared/docs/prior-art/exllamav2.md §1.7):
// per layer `<prefix>.qweight` int32 [K * bits / 32, N] (codes packed along K, row k of word row
// k / (32 / bits) at bits (k % (32 / bits)) * bits), `.qzeros` int32 [G, N * bits / 32] (packed
// the same way along N), `.scales` [G, N] float16 (or bfloat16/float32), optional `.g_idx` int32
// [K] (the group of each input row: act-order checkpoints), optional `.bias`.
// Weight: w[n][k] = scale[g][n] * (q[k][n] - zero[g][n]), g = g_idx[k] or k / group_size. The
// original ("v1") format stores zero - 1; checkpoint_format "gptq_v2" stores the zero itself.
// Symmetric checkpoints simply store the midpoint as every zero.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace lathe::quant {

struct GptqMatrix {
  int bits = 4;
  int64_t in_features = 0;   // K
  int64_t out_features = 0;  // N
  int64_t group_size = 0;    // rows per group when there is no g_idx
  bool v2_zeros = false;     // zeros stored as is (checkpoint_format "gptq_v2"), else stored - 1
  std::vector<int32_t> qweight;  // [K * bits / 32, N]
  std::vector<int32_t> qzeros;   // [G, N * bits / 32]
  std::vector<float> scales;     // [G, N]
  std::vector<int32_t> g_idx;    // [K] or empty
  std::vector<float> bias;       // [N] or empty
  int64_t groups() const { return int64_t(scales.size()) / (out_features ? out_features : 1); }
};

bool gptq_present(const io::WeightStore& store, const std::string& prefix);
// bits: 2, 4 or 8; group_size: from quantization_config (-1: one group over K; 0: infer the
// smallest power of two that covers K with the stored groups).
GptqMatrix gptq_read(const io::WeightStore& store, const std::string& prefix, int bits, int64_t group_size,
                     bool v2_zeros);
// w: [N, K] float (rows = output features).
void gptq_dequantize(const GptqMatrix& m, float* w);

// Packs codes into the layout above (for tests and conversion). q: [K, N] codes < 2^bits; zeros:
// [G, N] true zero points (stored minus 1 unless v2_zeros); scales: [G, N].
GptqMatrix gptq_pack(int bits, int64_t in_features, int64_t out_features, int64_t group_size, bool v2_zeros,
                     const uint8_t* q, const uint8_t* zeros, const float* scales, const std::vector<int32_t>& g_idx);
std::vector<io::NamedTensor> gptq_tensors(const GptqMatrix& m, const std::string& prefix,
                                          std::vector<uint16_t>* scale_storage);

}  // namespace lathe::quant
