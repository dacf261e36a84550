// Quantizing one linear layer to EXL2 with GPTQ (Frantar et al.; ExLlamaV2's AdaptiveGPTQ):
// input rows (channels) in act-order (descending Hessian diagonal), damped Hessian, its inverse's
// upper Cholesky factor, then row by row: quantize with the row's group scales, spread the error
// over the group's remaining rows, and after each group over all later rows (one GEMM).
// Scales per group and column: EXL2's sqrt-domain 4-bit codes under a per-group fp16 maximum, the
// group maximum scaled by the best of 97 multipliers in [0.70, 1.20] (least sum |err|^3.5).
#pragma once

#include <cstdint>
#include <vector>

#include "quant/exl2.h"

namespace lathe::quant {

struct GptqOptions {
  double damp = 0.12;  // fraction of the mean Hessian diagonal added to it
};

// Scale codes (1..16 per column) and the fp16-representable group maximum for `rows` rows of `w`
// (row-major, `n` columns) at `bits`.
void exl2_find_scales(const float* w, int64_t rows, int64_t n, int bits, uint8_t* codes, float* scale_max);
inline float exl2_scale(int code, float scale_max) { return float(code * code) * scale_max / 256.f; }

// w: [N, K] (rows = output features); h: [K, K] Hessian (sum of x^T x over calibration inputs,
// any positive scale), or null for round-to-nearest in act-order of... the identity (plain RTN).
// groups: act-order rows, descending bits. Returns the packed layer; *rel_err (optional) gets
// ||W - Wq||_F / ||W||_F.
Exl2Matrix gptq_quantize_exl2(const float* w, int64_t out_features, int64_t in_features, const double* h,
                              const std::vector<Exl2Group>& groups, const float* bias, const GptqOptions& options,
                              double* rel_err = nullptr);

// Groups for a target of about `bits` per weight: the top rows (act-order: the most important
// channels) at ceil, the rest at floor, in groups of `group_size` (16 or 32 rows for 2-bit and
// 3/5-bit units permitting), so that the format's total bpw (with its overhead) is close to `bits`.
std::vector<Exl2Group> exl2_groups_for_bpw(double bits, int64_t in_features, int64_t out_features,
                                           int64_t group_size);

}  // namespace lathe::quant
