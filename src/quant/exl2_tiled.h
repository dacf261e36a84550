// The layout the CUDA EXL2 kernels read, made from a stored EXL2 layer when it is uploaded (the
// issue allows kernels to repack at load). The stored format keeps every output column as its own
// bitstream down the rows, so a tensor-core kernel spends several instructions per weight finding
// and widening values; here each lane of a warp finds its mma.sync B fragments ready-made:
//
//  * Act-order rows stay in groups; a group's rows are padded to a multiple of 32 with the zero code
//    (weight 0; the kernels also feed those rows zero activations). Columns are cut into strips of
//    32 (the stored padding makes the count whole), a group's strip into units of 32 rows.
//  * A unit (32 rows x 32 columns, 32 * bits words) holds, for each lane l = 4 g + q of a warp, the
//    32 values it feeds to 2 k steps x 4 n-tiles of m16n8k16: pair i = 8 s + 2 j + h is rows
//    16 s + 8 h + 2 q and + 1 of column 8 j + g (h = 0: the b0 register, 1: b1).
//  * A value's bits are split into planes of 1, 2, 4 or 8 bits (3 = 2 + 1, 5 = 4 + 1, 6 = 4 + 2, the
//    low bits in the first plane). In a plane of p bits, a lane owns p consecutive words (its 16-byte
//    load for p = 4); pair i sits in word i / (16 / p) at bit p * (i % (16 / p)), its first row in the
//    low half-word and its second at +16, so one shift and one mask place both in bf16 mantissas.
//    Planes follow each other inside the unit: 32 * p words each.
//  * Scales: per group and strip, 4 words; word q holds the 8 codes of lane q's columns (those of its
//    accumulators, 8 j + 2 q + e) at nibble 2 j + e, stored code as in the format (scale = (code + 1)^2
//    * max / 256).
//  * Stored groups of more than 128 rows (a GPTQ layer without groups becomes one group of K rows)
//    are cut into tiled groups of at most 128, each with the stored group's scales, so a kernel's
//    shared-memory stage of one group stays small.
//  * Group table [tiled groups, 8]: bits, rows, first tiled packed row (the group starts at word
//    row * padded_out), first padded row, first act-order row, padded rows, stored group (its
//    q_scale_max entry), 0.
//  * perm [padded rows]: the input channel each padded row reads, -1 for padding (activation 0).
#pragma once

#include <cstdint>
#include <vector>

#include "ops/ops.h"

namespace lathe::quant {

inline constexpr int kTiledUnitRows = ops::kExl2TiledUnitRows;
inline constexpr int kTiledStripCols = ops::kExl2TiledStripCols;
inline constexpr int kTiledMaxGroupRows = ops::kExl2TiledMaxGroupRows;

struct Exl2Tiled {
  std::vector<uint32_t> weight;
  std::vector<uint32_t> scale;   // [groups, strips, 4]
  std::vector<int32_t> groups;   // [groups, 8]
  std::vector<int32_t> perm;     // [padded_rows]: input channel, or -1
  int64_t padded_rows = 0;       // all groups' padded rows
  int64_t max_group_rows = 0;    // largest padded rows
  int64_t max_group_qrows = 0;   // largest padded rows * bits / 32
  int64_t qrows = 0;             // all groups' padded rows * bits / 32
  int64_t num_groups() const { return int64_t(groups.size() / 8); }
};

// The tiled layout of a stored layer (a view over host memory, quant::exl2_view).
Exl2Tiled exl2_tile(const ops::Exl2View& stored);

// The code of act-order row `row` (within tiled group g), column `col`, read back from the tiled
// layout, and the group's scale code there: the reference the kernels and tests decode against.
int exl2_tiled_code(const Exl2Tiled& t, int64_t padded_out, int64_t g, int64_t row, int64_t col);
int exl2_tiled_scale_code(const Exl2Tiled& t, int64_t padded_out, int64_t g, int64_t col);

// Fills the tiled fields of `v`: pointers into t (which must outlive it; an upload replaces them
// with its copies) and the sizes kernels plan with.
void exl2_attach_tiled(ops::Exl2View& v, const Exl2Tiled& t);

}  // namespace lathe::quant
