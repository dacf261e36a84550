// EXL2 bit layouts for a target bpw: descending widths, every row covered, the target met.
#include "quant/exl2_groups.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace lathe::quant {
namespace {

TEST(Exl2Groups, GroupsForBpwMeetTheTarget) {
  for (double bpw : {2.5, 3.0, 4.0, 5.0, 6.0})
    for (int64_t K : {256, 768}) {
      const auto groups = exl2_groups_for_bpw(bpw, K, 256, 32);
      int64_t rows = 0;
      for (size_t i = 0; i < groups.size(); ++i) {
        rows += groups[i].rows;
        if (i) {
          EXPECT_LE(groups[i].bits, groups[i - 1].bits);
        }
      }
      EXPECT_EQ(rows, K);
      EXPECT_NEAR(exl2_bits_per_weight(K, 256, groups, false), bpw, 0.1) << bpw << " bpw, K " << K;
    }
  EXPECT_THROW(exl2_groups_for_bpw(1.5, 256, 256, 32), Error);
  EXPECT_THROW(exl2_groups_for_bpw(9.0, 256, 256, 32), Error);
}

}  // namespace
}  // namespace lathe::quant
