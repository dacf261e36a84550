// A random EXL2 layer for kernel tests (any widths, random act-order, padded columns, optional
// bias), with its kernel tables, as an ops::Exl2View over host memory or uploaded to a backend.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "ops/ops.h"
#include "quant/exl2.h"

namespace lathe::testing {

struct Exl2Case {
  // What was packed: act-order codes [K, N], scale codes [G, N] in 1..16, per-group maxima, bias.
  int64_t K = 0, N = 0;
  std::vector<quant::Exl2Group> groups;
  std::vector<int32_t> perm;
  std::vector<uint8_t> q, codes;
  std::vector<float> max, bias;
  quant::Exl2Matrix m;  // the packed layer
  quant::Exl2Tables tables;
  ops::Exl2View host_view() const;  // points into m and tables
};

Exl2Case random_exl2(std::mt19937& rng, int64_t out_features, const std::vector<quant::Exl2Group>& groups, bool bias);

// The layer copied into backend memory (the buffers are appended to `keep`, which must outlive the
// returned view).
ops::Exl2View upload_exl2(ops::Ops& ops, const Exl2Case& c, std::vector<ops::Buffer>& keep);

}  // namespace lathe::testing
