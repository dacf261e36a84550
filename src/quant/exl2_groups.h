// EXL2 bit layouts: which bit width each act-order group of a layer gets for a target bits per
// weight (the format's whole accounting, overhead included). The quantizer's GPTQ solves live in the
// backends (ops::Ops::gptq_exl2).
#pragma once

#include <cstdint>
#include <vector>

#include "quant/exl2.h"

namespace lathe::quant {

// Groups for a target of about `bits` per weight: the top rows (act-order: the most important
// channels) at ceil, the rest at floor, in groups of `group_size` (16 or 32 rows for 2-bit and
// 3/5-bit units permitting), so that the format's total bpw (with its overhead) is close to `bits`.
std::vector<Exl2Group> exl2_groups_for_bpw(double bits, int64_t in_features, int64_t out_features,
                                           int64_t group_size);

}  // namespace lathe::quant
