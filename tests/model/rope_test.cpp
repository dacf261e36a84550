// RoPE variants checked against properties that follow from transformers' definitions
// (modeling_rope_utils.py): each variant reduces to the default one where it should and scales
// exactly where it should.
#include "model/rope.h"

#include <gtest/gtest.h>

#include <cmath>

namespace lathe::model {
namespace {

ModelConfig cfg(RopeType t) {
  ModelConfig c;
  c.head_dim = 64;
  c.max_position_embeddings = 4096;
  c.rope.type = t;
  c.rope.theta = 10000.0;
  return c;
}

TEST(Rope, DefaultMatchesFormula) {
  const auto f = rope_frequencies(cfg(RopeType::kDefault), 1);
  ASSERT_EQ(f.inv_freq.size(), 32u);
  EXPECT_FLOAT_EQ(f.inv_freq[0], 1.f);
  EXPECT_NEAR(f.inv_freq[16], 1.0 / std::pow(10000.0, 0.5), 1e-7);
  EXPECT_EQ(f.attention_scaling, 1.f);
}

TEST(Rope, PartialRotaryShrinksTheTable) {
  auto c = cfg(RopeType::kDefault);
  c.rope.partial_rotary_factor = 0.5;
  const auto f = rope_frequencies(c, 1);
  ASSERT_EQ(f.inv_freq.size(), 16u);
  EXPECT_NEAR(f.inv_freq[8], 1.0 / std::pow(10000.0, 0.5), 1e-7);  // dim 32: 2*8/32 = 0.5
}

TEST(Rope, LinearDividesByFactor) {
  auto c = cfg(RopeType::kLinear);
  c.rope.factor = 4;
  const auto d = rope_frequencies(cfg(RopeType::kDefault), 1), l = rope_frequencies(c, 1);
  for (size_t i = 0; i < d.inv_freq.size(); ++i) EXPECT_FLOAT_EQ(l.inv_freq[i], d.inv_freq[i] / 4);
}

TEST(Rope, DynamicOnlyChangesPastTheTrainedContext) {
  auto c = cfg(RopeType::kDynamic);
  c.rope.factor = 2;
  const auto d = rope_frequencies(cfg(RopeType::kDefault), 1);
  const auto inside = rope_frequencies(c, 4096), outside = rope_frequencies(c, 8192);
  for (size_t i = 0; i < d.inv_freq.size(); ++i) EXPECT_FLOAT_EQ(inside.inv_freq[i], d.inv_freq[i]);
  // base' = base * (2 * 8192/4096 - 1)^(64/62) = base * 3^(64/62)
  const double base = 10000.0 * std::pow(3.0, 64.0 / 62.0);
  EXPECT_NEAR(outside.inv_freq[16], 1.0 / std::pow(base, 0.5), 1e-7);
  EXPECT_FLOAT_EQ(outside.inv_freq[0], 1.f);
}

TEST(Rope, Llama3KeepsHighAndScalesLowFrequencies) {
  auto c = cfg(RopeType::kLlama3);
  c.rope.theta = 500000;
  c.rope.factor = 8;
  c.rope.original_max_position_embeddings = 8192;
  auto dc = c;
  dc.rope.type = RopeType::kDefault;
  const auto d = rope_frequencies(dc, 1), l = rope_frequencies(c, 1);
  int high = 0, low = 0, mid = 0;
  for (size_t i = 0; i < d.inv_freq.size(); ++i) {
    const double wavelen = 2 * M_PI / d.inv_freq[i];
    if (wavelen < 8192.0 / 4) {
      EXPECT_FLOAT_EQ(l.inv_freq[i], d.inv_freq[i]);
      ++high;
    } else if (wavelen > 8192.0) {
      EXPECT_FLOAT_EQ(l.inv_freq[i], d.inv_freq[i] / 8);
      ++low;
    } else {
      EXPECT_LE(l.inv_freq[i], d.inv_freq[i]);
      EXPECT_GE(l.inv_freq[i], d.inv_freq[i] / 8);
      ++mid;
    }
  }
  EXPECT_GT(high, 0);
  EXPECT_GT(low, 0);
  EXPECT_GT(mid, 0);
}

TEST(Rope, YarnAttentionFactorAndRamp) {
  auto c = cfg(RopeType::kYarn);
  c.rope.factor = 4;
  c.rope.factor_given = true;
  c.rope.original_max_position_embeddings = 1024;
  const auto y = rope_frequencies(c, 1);
  EXPECT_NEAR(y.attention_scaling, 0.1 * std::log(4.0) + 1.0, 1e-6);
  const auto d = rope_frequencies(cfg(RopeType::kDefault), 1);
  EXPECT_FLOAT_EQ(y.inv_freq[0], d.inv_freq[0]);               // fastest: extrapolated (unchanged)
  EXPECT_NEAR(y.inv_freq[31], d.inv_freq[31] / 4, 1e-12);      // slowest: interpolated (/ factor)
  c.rope.attention_factor = 1.5;
  EXPECT_FLOAT_EQ(rope_frequencies(c, 1).attention_scaling, 1.5f);
}

TEST(Rope, YarnWithoutFactorUsesTheContextRatio) {
  auto c = cfg(RopeType::kYarn);
  c.max_position_embeddings = 8192;
  c.rope.original_max_position_embeddings = 2048;  // factor 4 implied
  c.rope.factor_given = false;
  EXPECT_NEAR(rope_frequencies(c, 1).attention_scaling, 0.1 * std::log(4.0) + 1.0, 1e-6);
}

TEST(Rope, LongRopeExplicitFactorWins) {
  auto c = cfg(RopeType::kLongRope);
  c.max_position_embeddings = 131072;
  c.rope.original_max_position_embeddings = 4096;
  c.rope.short_factor.assign(32, 1.0);
  c.rope.long_factor.assign(32, 2.0);
  c.rope.factor = 8;
  c.rope.factor_given = true;
  EXPECT_NEAR(rope_frequencies(c, 1).attention_scaling, std::sqrt(1 + std::log(8.0) / std::log(4096.0)), 1e-6);
}

TEST(Rope, LongRopeSwitchesFactorsPastOriginalContext) {
  auto c = cfg(RopeType::kLongRope);
  c.max_position_embeddings = 131072;
  c.rope.original_max_position_embeddings = 4096;
  c.rope.short_factor.assign(32, 1.0);
  c.rope.long_factor.assign(32, 2.0);
  const auto s = rope_frequencies(c, 100), l = rope_frequencies(c, 5000);
  const auto d = rope_frequencies(cfg(RopeType::kDefault), 1);
  for (size_t i = 0; i < 32; ++i) {
    EXPECT_FLOAT_EQ(s.inv_freq[i], d.inv_freq[i]);
    EXPECT_FLOAT_EQ(l.inv_freq[i], d.inv_freq[i] / 2);
  }
  EXPECT_NEAR(s.attention_scaling, std::sqrt(1 + std::log(32.0) / std::log(4096.0)), 1e-6);
}

TEST(Rope, TablesFoldScaling) {
  RopeFrequencies f;
  f.inv_freq = {1.f, 0.5f};
  f.attention_scaling = 2.f;
  const int32_t pos[] = {0, 3};
  float cs[4], sn[4];
  rope_tables(f, pos, 2, cs, sn);
  EXPECT_FLOAT_EQ(cs[0], 2.f);
  EXPECT_FLOAT_EQ(sn[0], 0.f);
  EXPECT_NEAR(cs[3], 2 * std::cos(1.5), 1e-6);
  EXPECT_NEAR(sn[2], 2 * std::sin(3.0), 1e-6);
}

}  // namespace
}  // namespace lathe::model
