#include "support/exl2_case.h"

#include <algorithm>
#include <numeric>

#include "quant/exl2_tiled.h"

namespace lathe::testing {

ops::Exl2View Exl2Case::host_view() const { return quant::exl2_view(m, tables, m.out_features); }

Exl2Case random_exl2(std::mt19937& rng, int64_t N, const std::vector<quant::Exl2Group>& groups, bool bias) {
  Exl2Case c;
  c.N = N;
  c.groups = groups;
  for (const auto& g : groups) c.K += g.rows;
  c.perm.resize(size_t(c.K));
  std::iota(c.perm.begin(), c.perm.end(), 0);
  std::shuffle(c.perm.begin(), c.perm.end(), rng);
  c.q.resize(size_t(c.K * N));
  int64_t row = 0;
  for (const auto& g : groups) {
    std::uniform_int_distribution<int> d(0, (1 << g.bits) - 1);
    for (int64_t i = row * N; i < (row + g.rows) * N; ++i) c.q[size_t(i)] = uint8_t(d(rng));
    row += g.rows;
  }
  std::uniform_int_distribution<int> code(1, 16);
  c.codes.resize(groups.size() * size_t(N));
  for (auto& v : c.codes) v = uint8_t(code(rng));
  std::uniform_real_distribution<float> mx(0.001f, 0.1f);
  for (size_t g = 0; g < groups.size(); ++g) c.max.push_back(mx(rng));
  if (bias)
    for (int64_t n = 0; n < N; ++n) c.bias.push_back(mx(rng) - 0.05f);
  c.m = quant::exl2_pack(c.K, N, groups, c.perm, c.q.data(), c.codes.data(), c.max.data(),
                         bias ? c.bias.data() : nullptr);
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
  if (ops.wants_exl2_tiled()) {  // the layout such a backend reads (as the model loader uploads it)
    const quant::Exl2Tiled t = quant::exl2_tile(c.host_view());
    quant::exl2_attach_tiled(v, t);  // then the host pointers become backend copies
    v.tiled = put(ops, t.weight, keep);
    v.tiled_scale = put(ops, t.scale, keep);
    v.tiled_groups = put(ops, t.groups, keep);
    v.tiled_perm = put(ops, t.perm, keep);
  }
  return v;
}

}  // namespace lathe::testing
