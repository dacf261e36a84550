// The host reference EXL2 matmul (ops::Ops::matmul_exl2's default, which every EXL2 kernel is
// checked against) equals a double-precision matmul with the layer dequantized by quant/exl2, for
// every width, mixed widths, odd output counts (padded columns), bias, 1..9 tokens.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "ops/ops.h"
#include "quant/exl2.h"
#include "support/exl2_case.h"
#include "support/parity.h"

namespace lathe::ops {
namespace {

using quant::Exl2Group;

TEST(Exl2Matmul, ReferenceEqualsDequantizedMatmul) {
  std::mt19937 rng(41);
  auto ref = make_ref_ops();
  const std::vector<std::vector<Exl2Group>> layouts = {
      {{2, 64}}, {{3, 64}}, {{4, 64}}, {{5, 64}}, {{6, 64}}, {{8, 64}},
      {{8, 32}, {6, 32}, {5, 64}, {4, 128}, {3, 32}, {2, 32}},
  };
  for (const auto& groups : layouts)
    for (int64_t N : {1, 33, 100})
      for (int64_t n : {1, 3, 9})
        for (bool bias : {false, true}) {
          const auto c = lathe::testing::random_exl2(rng, N, groups, bias);
          const int64_t K = c.m.in_features;
          std::vector<float> w(size_t(N * K));
          quant::exl2_dequantize(c.m, w.data());
          const auto x = lathe::testing::random_floats(rng, size_t(n * K));
          std::vector<float> want(size_t(n * N));
          for (int64_t t = 0; t < n; ++t)
            for (int64_t o = 0; o < N; ++o) {
              double s = bias ? double(f16_to_f32(c.m.bias[size_t(o)])) : 0.0;
              for (int64_t k = 0; k < K; ++k) s += double(w[size_t(o * K + k)]) * double(x[size_t(t * K + k)]);
              want[size_t(t * N + o)] = float(s);
            }
          std::vector<float> got(want.size(), NAN);
          Exl2MatmulParams p;
          p.x = x.data();
          p.w = c.host_view();
          p.y = got.data();
          p.n = n;
          ref->matmul_exl2(p);
          EXPECT_LT(lathe::testing::rel_error(got, want), 1e-6)
              << groups.size() << " groups, first " << groups[0].bits << " bits, N=" << N << " n=" << n;
        }
}

// Several layers on one input (the q|k|v and gate|up call): each equals its own matmul_exl2, on
// every host backend.
TEST(Exl2Matmul, MultiEqualsEachLayer) {
  std::mt19937 rng(43);
  for (auto make : {make_ref_ops, make_cpu_ops}) {
    auto ops = make();
    const std::vector<lathe::testing::Exl2Case> layers = {
        lathe::testing::random_exl2(rng, 40, {{4, 64}, {3, 64}}, true), lathe::testing::random_exl2(rng, 17, {{6, 128}}, false),
        lathe::testing::random_exl2(rng, 64, {{2, 32}, {2, 96}}, false)};
    const int64_t n = 3, K = 128;
    const auto x = lathe::testing::random_floats(rng, size_t(n * K));
    std::vector<std::vector<float>> got(3), want(3);
    Exl2MultiParams p;
    p.x = x.data();
    p.n = n;
    p.count = 3;
    for (int i = 0; i < 3; ++i) {
      got[size_t(i)].assign(size_t(n * layers[size_t(i)].N), NAN);
      want[size_t(i)] = got[size_t(i)];
      p.w[i] = layers[size_t(i)].host_view();
      p.y[i] = got[size_t(i)].data();
    }
    ops->matmul_exl2_multi(p);
    for (int i = 0; i < 3; ++i) {
      Exl2MatmulParams one = p.layer(i);
      one.y = want[size_t(i)].data();
      ops->matmul_exl2(one);
      EXPECT_EQ(got[size_t(i)], want[size_t(i)]) << ops->name() << " layer " << i;
    }
  }
}

// A GLU input fused into the call (glu_up: the down projection of a feed-forward) equals glu into
// a buffer, then the plain call, on each host backend, for every activation.
TEST(Exl2Matmul, FusedGluEqualsGluThenMatmul) {
  std::mt19937 rng(44);
  for (auto make : {make_ref_ops, make_cpu_ops}) {
    auto ops = make();
    for (Activation act : {Activation::kSilu, Activation::kGeluTanh, Activation::kGelu, Activation::kRelu}) {
      const auto c = lathe::testing::random_exl2(rng, 33, {{4, 64}, {3, 64}}, true);
      const int64_t n = 3, K = c.m.in_features;
      const auto gate = lathe::testing::random_floats(rng, size_t(n * K));
      const auto up = lathe::testing::random_floats(rng, size_t(n * K));
      std::vector<float> mid(gate.size()), want(size_t(n * c.N), NAN), got(want.size(), NAN);
      GluParams g;
      g.gate = gate.data();
      g.up = up.data();
      g.out = mid.data();
      g.n = n;
      g.dim = K;
      g.act = act;
      ops->glu(g);
      Exl2MatmulParams p;
      p.x = mid.data();
      p.w = c.host_view();
      p.y = want.data();
      p.n = n;
      ops->matmul_exl2(p);
      p.x = gate.data();
      p.glu_up = up.data();
      p.glu_act = act;
      p.y = got.data();
      ops->matmul_exl2(p);
      EXPECT_EQ(got, want) << ops->name() << " activation " << int(act);
    }
  }
}

}  // namespace
}  // namespace lathe::ops

namespace lathe::ops {
namespace {

// The CPU backend's SIMD kernel (ops/cpu/exl2.cpp) against the reference on the same packed bits:
// every width and mixes, padded columns, bias, token counts across its 4-token batches.
TEST(Exl2Matmul, CpuEqualsReference) {
  std::mt19937 rng(43);
  auto ref = make_ref_ops();
  auto cpu = make_cpu_ops();
  std::vector<quant::Exl2Group> big(16, quant::Exl2Group{4, 128});
  big[0] = {8, 128};
  big[15] = {2, 128};
  const std::vector<std::vector<quant::Exl2Group>> layouts = {
      {{2, 64}}, {{3, 64}}, {{4, 64}}, {{5, 64}}, {{6, 64}}, {{8, 64}},
      {{8, 32}, {6, 32}, {5, 64}, {4, 128}, {3, 32}, {2, 32}}, big,
  };
  for (const auto& groups : layouts)
    for (int64_t N : {33, 300})
      for (int64_t n : {1, 2, 4, 5, 9})
        for (bool bias : {false, true}) {
          const auto c = lathe::testing::random_exl2(rng, N, groups, bias);
          const auto x = lathe::testing::random_floats(rng, size_t(n * c.m.in_features));
          std::vector<float> want(size_t(n * N), NAN), got(size_t(n * N), NAN);
          Exl2MatmulParams p;
          p.x = x.data();
          p.w = c.host_view();
          p.n = n;
          p.y = want.data();
          ref->matmul_exl2(p);
          p.y = got.data();
          cpu->matmul_exl2(p);
          EXPECT_LT(lathe::testing::rel_error(got, want), 1e-5)
              << groups.size() << " groups, first " << groups[0].bits << " bits, N=" << N << " n=" << n;
        }
}

}  // namespace
}  // namespace lathe::ops
