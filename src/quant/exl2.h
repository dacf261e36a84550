// EXL2 quantized linear layers (ExLlamaV2's on-disk format, ../shared/docs/prior-art/exllamav2.md §1):
// per layer `<prefix>.q_weight` int32 [qrows, N_pad], `.q_scale` int32 [G, N_pad / 8], `.q_scale_max`
// float16 [G], `.q_groups` int16 [2G] = (bits, first q_weight row) per group, `.q_invperm` int32 [K],
// optional `.bias` float16 [N]. K = in_features, N = out_features, N_pad = N rounded up to 32.
//
// Input rows are in act-order: position p holds input channel perm[p] (invperm[perm[p]] = p), cut
// into consecutive groups of 32/64/128 (2-bit: 16) rows whose bit widths descend (8, 6, 5, 4, 3, 2).
// Weight at act-order row p, column n of group g: (q - 2^(bits - 1)) * scale, with
// scale = (code + 1)^2 * scale_max[g] / 256 and code the stored 4-bit value (0..15).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "ops/ops.h"

namespace lathe::quant {

struct Exl2Group {
  int bits = 4;
  int64_t rows = 0;
};

struct Exl2Matrix {
  int64_t in_features = 0;   // K
  int64_t out_features = 0;  // N
  std::vector<Exl2Group> groups;
  std::vector<uint32_t> q_weight;     // [qrows, padded_out]
  std::vector<uint32_t> q_scale;      // [groups, padded_out / 8]
  std::vector<uint16_t> q_scale_max;  // [groups] float16 bits
  std::vector<int16_t> q_groups;      // [2 * groups]: (bits, first q_weight row)
  std::vector<int32_t> q_invperm;     // [K]
  std::vector<uint16_t> bias;         // [N] float16 bits, or empty

  int64_t padded_out() const { return (out_features + 31) / 32 * 32; }
  int64_t qrows() const;  // rows of q_weight: sum of rows * bits / 32
};

// Packs codes into the format. q: [K, N] codes in act-order rows (row p: input channel perm[p]),
// each < 2^bits of its group; scale_codes: [G, N] in 1..16 (the stored value is code - 1);
// scale_max: [G] (rounded to float16); bias: [N] or null. Padding columns get the zero code.
Exl2Matrix exl2_pack(int64_t in_features, int64_t out_features, const std::vector<Exl2Group>& groups,
                     const std::vector<int32_t>& perm, const uint8_t* q, const uint8_t* scale_codes,
                     const float* scale_max, const float* bias);

bool exl2_present(const io::WeightStore& store, const std::string& prefix);
// Reads and validates one layer (shapes, dtypes, group table, permutation); errors name the tensor.
Exl2Matrix exl2_read(const io::WeightStore& store, const std::string& prefix);
// The layer's tensors under `prefix` (views into m, which must outlive them).
std::vector<io::NamedTensor> exl2_tensors(const Exl2Matrix& m, const std::string& prefix);

// What the kernels read beside the packed tensors (ops::Exl2View): perm (act-order row -> input
// channel, the inverse of q_invperm) and the group table [G, 4] = bits, rows, first q_weight row,
// first act-order row.
struct Exl2Tables {
  std::vector<int32_t> perm;
  std::vector<int32_t> groups;
};
Exl2Tables exl2_tables(const Exl2Matrix& m);
// The kernels' view of m over host memory (pointers into m and t), computing out_features outputs
// (<= m.out_features; stored padding columns beyond them are skipped).
ops::Exl2View exl2_view(const Exl2Matrix& m, const Exl2Tables& t, int64_t out_features);

// w: [N, K] float, rows = output features, columns = input channels in their original order.
void exl2_dequantize(const Exl2Matrix& m, float* w);

// The format's storage per weight, as ExLlamaV2 counts it: packed weights + per group 16 (max) +
// 32 (group table) + 4 N (scales) bits + 32 K (permutation) + 16 N (bias) bits, over K * N.
double exl2_bits_per_weight(const Exl2Matrix& m);
double exl2_bits_per_weight(int64_t in_features, int64_t out_features, const std::vector<Exl2Group>& groups,
                            bool bias);

}  // namespace lathe::quant
