// The CUDA kernels' tiled EXL2 layout (quant/exl2_tiled.h): every code and scale code of a stored
// layer reads back from the tiled copy at its row and column, for every width, mixed widths, groups
// that need padding (16-row 2-bit groups), odd column counts; padding rows hold the zero code; the
// group table's offsets add up.
#include "quant/exl2_tiled.h"
#include "support/exl2_case.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

namespace lathe::quant {
namespace {

TEST(Exl2Tiled, EveryCodeReadsBack) {
  std::mt19937 rng(11);
  const std::vector<std::vector<Exl2Group>> layouts = {
      {{2, 64}}, {{3, 64}}, {{4, 128}}, {{5, 32}}, {{6, 64}}, {{8, 32}},
      {{8, 32}, {6, 64}, {5, 32}, {4, 128}, {3, 64}, {2, 16}, {2, 48}},
      {{4, 512}, {3, 160}},  // cut into tiled groups of at most 128 rows
  };
  for (const auto& groups : layouts)
    for (int64_t N : {8, 33, 96, 300}) {
      const auto c = lathe::testing::random_exl2(rng, N, groups, false);
      const ops::Exl2View v = c.host_view();
      const Exl2Tiled t = exl2_tile(v);
      const int64_t Np = v.padded_out();
      // Tiled groups follow the stored ones in order, each stored group's rows cut at 128.
      std::vector<int64_t> stored_first(groups.size() + 1, 0);
      for (size_t g = 0; g < groups.size(); ++g) stored_first[g + 1] = stored_first[g] + groups[g].rows;
      int64_t act = 0, padded = 0, tq = 0;
      for (int64_t g = 0; g < t.num_groups(); ++g) {
        const int32_t* row = &t.groups[size_t(g * 8)];
        const size_t sg = size_t(row[6]);
        ASSERT_LT(sg, groups.size());
        const int bits = groups[sg].bits;
        const int64_t rows = row[1], pr = (rows + 31) / 32 * 32;
        ASSERT_EQ(row[0], bits);
        ASSERT_EQ(rows, std::min<int64_t>(kTiledMaxGroupRows, stored_first[sg + 1] - act));
        ASSERT_EQ(row[2], tq);
        ASSERT_EQ(row[3], padded);
        ASSERT_EQ(row[4], act);
        ASSERT_EQ(row[5], pr);
        for (int64_t r = 0; r < pr; ++r)
          for (int64_t n = 0; n < Np; ++n) {
            const int want = r < rows && n < N ? c.q[size_t((act + r) * N + n)] : 1 << (bits - 1);
            ASSERT_EQ(exl2_tiled_code(t, Np, g, r, n), want)
                << bits << " bits, tiled group " << g << " row " << r << " col " << n << " N " << N;
          }
        for (int64_t r = 0; r < pr; ++r)
          ASSERT_EQ(t.perm[size_t(padded + r)], r < rows ? c.perm[size_t(act + r)] : -1);
        for (int64_t n = 0; n < N; ++n) ASSERT_EQ(exl2_tiled_scale_code(t, Np, g, n) + 1, c.codes[sg * size_t(N) + size_t(n)]);
        act += rows;
        padded += pr;
        tq += pr * bits / 32;
      }
      EXPECT_EQ(act, c.K);
      EXPECT_EQ(t.padded_rows, padded);
      EXPECT_EQ(t.weight.size(), size_t(tq * Np));
      EXPECT_EQ(t.qrows, tq);
    }
}

TEST(Exl2Tiled, AttachFillsTheView) {
  std::mt19937 rng(3);
  const auto c = lathe::testing::random_exl2(rng, 64, {{4, 64}, {2, 16}}, true);
  ops::Exl2View v = c.host_view();
  const Exl2Tiled t = exl2_tile(v);
  exl2_attach_tiled(v, t);
  EXPECT_EQ(v.tiled, t.weight.data());
  EXPECT_EQ(v.tiled_scale, t.scale.data());
  EXPECT_EQ(v.tiled_groups, t.groups.data());
  EXPECT_EQ(v.tiled_perm, t.perm.data());
  EXPECT_EQ(v.tiled_rows, 96);
  EXPECT_EQ(v.tiled_num_groups, 2);
  EXPECT_EQ(v.max_tiled_rows, 64);
  EXPECT_EQ(v.max_tiled_qrows, 8);
  EXPECT_EQ(v.tiled_qrows, 8 + 2);  // 64 rows of 4 bits, then 16 rows of 2 bits padded to 32
}

}  // namespace
}  // namespace lathe::quant
