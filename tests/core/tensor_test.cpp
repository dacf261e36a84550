#include "core/tensor.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace lathe {
namespace {

TEST(Tensor, ZeroFilledAndAligned) {
  Tensor t(DType::kF32, {3, 5});
  EXPECT_EQ(t.numel(), 15);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 64, 0u);
  for (int i = 0; i < 15; ++i) EXPECT_EQ(t.as<float>()[i], 0.f);
}

TEST(Tensor, CopyIsDeep) {
  Tensor t = Tensor::f32({4});
  t.as<float>()[2] = 3.f;
  Tensor c = t.copy();
  t.as<float>()[2] = 1.f;
  EXPECT_EQ(c.as<float>()[2], 3.f);
}

TEST(Tensor, ReshapeChecksCount) {
  Tensor t = Tensor::f32({4, 6});
  t.reshape({2, 12});
  EXPECT_EQ(t.dim(1), 12);
  EXPECT_THROW(t.reshape({5, 5}), Error);
}

}  // namespace
}  // namespace lathe
