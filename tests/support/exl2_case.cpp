#include "support/exl2_case.h"

#include <algorithm>
#include <numeric>

namespace lathe::testing {

ops::Exl2View Exl2Case::host_view() const {
  ops::Exl2View v;
  v.q_weight = m.q_weight.data();
  v.q_scale = m.q_scale.data();
  v.q_scale_max = m.q_scale_max.data();
  v.perm = tables.perm.data();
  v.groups = tables.groups.data();
  v.bias = m.bias.empty() ? nullptr : m.bias.data();
  v.in_features = m.in_features;
  v.out_features = m.out_features;
  v.num_groups = int64_t(m.groups.size());
  v.max_group_rows = tables.max_group_rows;
  return v;
}

Exl2Case random_exl2(std::mt19937& rng, int64_t N, const std::vector<quant::Exl2Group>& groups, bool bias) {
  int64_t K = 0;
  for (const auto& g : groups) K += g.rows;
  std::vector<int32_t> perm(static_cast<size_t>(K));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<uint8_t> q(static_cast<size_t>(K * N));
  int64_t row = 0;
  for (const auto& g : groups) {
    std::uniform_int_distribution<int> d(0, (1 << g.bits) - 1);
    for (int64_t i = row * N; i < (row + g.rows) * N; ++i) q[size_t(i)] = uint8_t(d(rng));
    row += g.rows;
  }
  std::uniform_int_distribution<int> code(1, 16);
  std::vector<uint8_t> codes(groups.size() * size_t(N));
  for (auto& c : codes) c = uint8_t(code(rng));
  std::uniform_real_distribution<float> mx(0.001f, 0.1f);
  std::vector<float> maxes, b;
  for (size_t g = 0; g < groups.size(); ++g) maxes.push_back(mx(rng));
  if (bias)
    for (int64_t n = 0; n < N; ++n) b.push_back(mx(rng) - 0.05f);
  Exl2Case c;
  c.m = quant::exl2_pack(K, N, groups, perm, q.data(), codes.data(), maxes.data(), bias ? b.data() : nullptr);
  c.tables = quant::exl2_tables(c.m);
  return c;
}

namespace {
template <typename T>
const T* put(ops::Ops& ops, const std::vector<T>& v, std::vector<ops::Buffer>& keep) {
  if (v.empty()) return nullptr;
  keep.emplace_back(ops, v.size() * sizeof(T));
  ops.copy_to_backend(keep.back().data(), v.data(), v.size() * sizeof(T));
  return static_cast<const T*>(keep.back().data());
}
}  // namespace

ops::Exl2View upload_exl2(ops::Ops& ops, const Exl2Case& c, std::vector<ops::Buffer>& keep) {
  ops::Exl2View v = c.host_view();
  v.q_weight = put(ops, c.m.q_weight, keep);
  v.q_scale = put(ops, c.m.q_scale, keep);
  v.q_scale_max = put(ops, c.m.q_scale_max, keep);
  v.perm = put(ops, c.tables.perm, keep);
  v.groups = put(ops, c.tables.groups, keep);
  v.bias = put(ops, c.m.bias, keep);
  return v;
}

}  // namespace lathe::testing
