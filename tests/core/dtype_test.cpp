#include "core/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace lathe {
namespace {

TEST(DType, Bf16RoundTripIsExactOnRepresentableValues) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = bf16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_bf16(f), h);
  }
}

TEST(DType, F16RoundTripIsExactOnRepresentableValues) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), h) << "half bits " << h;
  }
}

TEST(DType, F16RoundsToNearestEven) {
  EXPECT_EQ(f16_to_f32(f32_to_f16(1.0f + 1.0f / 2048)), 1.0f);             // tie -> even
  EXPECT_EQ(f16_to_f32(f32_to_f16(1.0f + 3.0f / 2048)), 1.0f + 2.0f / 1024);  // tie -> even (up)
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(65520.f))));
  EXPECT_EQ(f16_to_f32(f32_to_f16(65519.f)), 65504.f);
  EXPECT_EQ(f16_to_f32(f32_to_f16(5.9604645e-08f)), 5.9604645e-08f);  // smallest subnormal
}

TEST(DType, F16MatchesNearestOnRandomFloats) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-70000.f, 70000.f);
  for (int i = 0; i < 100000; ++i) {
    const float f = dist(rng) * (i % 3 == 0 ? 1e-6f : 1.f);
    const float r = f16_to_f32(f32_to_f16(f));
    if (std::isinf(r)) continue;
    // No other half value is closer.
    const uint16_t h = f32_to_f16(f);
    const float up = f16_to_f32(uint16_t(h + 1)), down = f16_to_f32(uint16_t(h - 1));
    EXPECT_LE(std::fabs(r - f), std::fabs(up - f));
    EXPECT_LE(std::fabs(r - f), std::fabs(down - f));
  }
}

TEST(DType, NamesParse) {
  DType t;
  ASSERT_TRUE(dtype_from_name("BF16", &t));
  EXPECT_EQ(t, DType::kBF16);
  EXPECT_EQ(dtype_size(t), 2u);
  EXPECT_FALSE(dtype_from_name("F8_E4M3X", &t));
}

}  // namespace
}  // namespace lathe
