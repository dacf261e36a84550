// The quantized K/V cache on the host backends: the group formats (ops/kv_quant.h: error bounds,
// nibble order, scales), rope_store_kv writing codes into the right slots, and attention_batch
// reading a quantized paged pool (against the reference's attention over the dequantized values).
#include "ops/kv_quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "support/batch_attention.h"
#include "support/parity.h"

namespace lathe::ops {
namespace {

using lathe::testing::random_floats;

// Groups of every kind of spread: uniform, one outlier, all equal, signs mixed, tiny and large.
std::vector<float> varied_groups(std::mt19937& rng, int groups) {
  std::vector<float> x;
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int g = 0; g < groups; ++g) {
    const float mag = std::pow(10.f, float(g % 9) - 4.f);  // 1e-4 .. 1e4
    for (int i = 0; i < kKvQuantGroup; ++i) {
      float v = normal(rng) * mag;
      if (g % 5 == 1 && i == g % 32) v = 40.f * mag;  // an outlier
      if (g % 7 == 3) v = -mag;                       // all equal
      x.push_back(v);
    }
  }
  return x;
}

TEST(KvQuant, CodesStayWithinHalfAStepOfTheValues) {
  std::mt19937 rng(7);
  const std::vector<float> x = varied_groups(rng, 90);
  const int64_t n = int64_t(x.size());
  for (KvQuant q : {KvQuant::kQ8, KvQuant::kQ4}) {
    std::vector<uint8_t> codes(kv_code_bytes(q, n));
    std::vector<uint16_t> scales(kv_scale_bytes(n) / 2);
    kv_quantize(q, x.data(), n, codes.data(), scales.data());
    std::vector<float> back(x.size());
    kv_dequantize(q, codes.data(), scales.data(), n, back.data());
    for (int64_t g = 0; g < n / kKvQuantGroup; ++g) {
      const float s = std::fabs(f16_to_f32(scales[size_t(g)]));
      float amax = 0.f;
      for (int i = 0; i < kKvQuantGroup; ++i) amax = std::max(amax, std::fabs(x[size_t(g * 32 + i)]));
      // The ideal scale rounded up to float16 (one ulp: 2^-11 relative, or 2^-24 as a subnormal).
      const float ideal = amax / (q == KvQuant::kQ8 ? 127.f : 8.f);
      EXPECT_GE(s, ideal) << "group " << g;
      EXPECT_LE(s, ideal * (1.f + 1.f / 1024.f) + 6e-8f) << "group " << g;
      for (int i = 0; i < kKvQuantGroup; ++i) {
        const size_t e = size_t(g * 32 + i);
        // Half a step, plus the float16 rounding of the scale; q4's +8 end holds only +7 steps
        // (a value opposite in sign to the group's largest), one step off at most.
        const float step = q == KvQuant::kQ4 && std::fabs(x[e]) > 7.5f * s ? 1.0f : 0.5f;
        EXPECT_LE(std::fabs(back[e] - x[e]), step * s * (1.f + 1e-5f)) << kv_quant_name(q) << " group " << g << " i " << i;
      }
    }
  }
}

TEST(KvQuant, Q4PacksElementPairsLowNibbleFirst) {
  std::vector<float> x(kKvQuantGroup);
  for (int i = 0; i < kKvQuantGroup; ++i) x[size_t(i)] = 0.5f * float(i % 16 - 8);  // -4 .. 3.5: scale 0.5
  std::vector<uint8_t> codes(16);
  uint16_t scale = 0;
  kv_quantize(KvQuant::kQ4, x.data(), kKvQuantGroup, codes.data(), &scale);
  EXPECT_EQ(f16_to_f32(scale), 0.5f);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(codes[size_t(j)], uint8_t((2 * j) % 16 | ((2 * j + 1) % 16) << 4)) << j;
  std::vector<float> back(x.size());
  kv_dequantize(KvQuant::kQ4, codes.data(), &scale, kKvQuantGroup, back.data());
  EXPECT_EQ(back, x);  // every value sits on a level
}

TEST(KvQuant, ZeroGroupsStoreZeroScaleAndZeroCodes) {
  const std::vector<float> x(kKvQuantGroup, 0.f);
  for (KvQuant q : {KvQuant::kQ8, KvQuant::kQ4}) {
    std::vector<uint8_t> codes(kv_code_bytes(q, kKvQuantGroup), 0xff);
    uint16_t scale = 0xffff;
    kv_quantize(q, x.data(), kKvQuantGroup, codes.data(), &scale);
    EXPECT_EQ(scale, 0);
    for (uint8_t c : codes) EXPECT_EQ(c, q == KvQuant::kQ8 ? 0 : 0x88);
  }
}

// A NaN (a broken activation) neither becomes the group's scale nor an undefined code: code 0,
// and the rest of the group keeps its scale.
TEST(KvQuant, NanStoresCodeZero) {
  std::vector<float> x(kKvQuantGroup, 1.f);
  x[3] = std::nanf("");
  x[5] = -2.f;
  for (KvQuant q : {KvQuant::kQ8, KvQuant::kQ4}) {
    std::vector<uint8_t> codes(kv_code_bytes(q, kKvQuantGroup));
    uint16_t scale = 0;
    kv_quantize(q, x.data(), kKvQuantGroup, codes.data(), &scale);
    std::vector<float> back(x.size());
    kv_dequantize(q, codes.data(), &scale, kKvQuantGroup, back.data());
    EXPECT_EQ(back[3], 0.f) << kv_quant_name(q);
    EXPECT_NEAR(back[5], -2.f, 5e-3f) << kv_quant_name(q);  // q8: scale rounded up, 1 float16 ulp
    EXPECT_NEAR(back[0], 1.f, q == KvQuant::kQ8 ? 1e-2f : 0.13f) << kv_quant_name(q);
  }
}

TEST(KvQuant, ElementCountMustBeWholeGroups) {
  const std::vector<float> x(40, 1.f);
  std::vector<uint8_t> codes(64);
  std::vector<uint16_t> scales(2);
  EXPECT_THROW(kv_quantize(KvQuant::kQ8, x.data(), 40, codes.data(), scales.data()), Error);
}

// rope_store_kv into a quantized pool writes, at each token's slot, exactly the codes of its
// rotated k and its v (the same rows an fp32 pool receives, quantized), and leaves other slots alone.
TEST(KvQuant, RopeStoreKvWritesCodesIntoTheSlots) {
  std::mt19937 rng(11);
  auto cpu = make_cpu_ops();
  for (KvQuant q : {KvQuant::kQ8, KvQuant::kQ4})
    for (int64_t hd : {32, 64, 128}) {
      const int64_t n = 5, nh = 4, nkv = 2, row = nkv * hd, rows = 12, half = hd / 4;  // partial rotary
      const auto q_in = random_floats(rng, size_t(n * nh * hd)), k_in = random_floats(rng, size_t(n * row));
      const auto v_in = random_floats(rng, size_t(n * row));
      const auto cos = random_floats(rng, size_t(n * half)), sin = random_floats(rng, size_t(n * half));
      const std::vector<int32_t> slots = {7, 0, 11, 3, 4};
      RopeStoreParams p;
      p.cos = cos.data();
      p.sin = sin.data();
      p.slots = slots.data();
      p.n = n;
      p.n_heads = nh;
      p.n_kv_heads = nkv;
      p.head_dim = hd;
      p.rot_dim = 2 * half;
      // fp32 pool: the rows to expect.
      std::vector<float> qa = q_in, ka = k_in, kc(size_t(rows * row), 0.f), vc(kc.size(), 0.f);
      p.q = qa.data();
      p.k = ka.data();
      p.v = v_in.data();
      p.k_cache = kc.data();
      p.v_cache = vc.data();
      cpu->rope_store_kv(p);
      // Quantized pool, prefilled with a marker pattern.
      std::vector<float> qb = q_in, kb = k_in;
      std::vector<uint8_t> kq(kv_code_bytes(q, rows * row), 0x5a), vq(kq.size(), 0x5a);
      std::vector<uint16_t> ks(size_t(rows * row / kKvQuantGroup), 0x1234), vs(ks.size(), 0x1234);
      p.q = qb.data();
      p.k = kb.data();
      p.k_cache = kq.data();
      p.v_cache = vq.data();
      p.kv_quant = q;
      p.k_scale = ks.data();
      p.v_scale = vs.data();
      cpu->rope_store_kv(p);
      EXPECT_EQ(qb, qa);
      std::vector<bool> used(size_t(rows), false);
      for (int32_t s : slots) used[size_t(s)] = true;
      const size_t row_bytes = kv_code_bytes(q, row), row_scales = size_t(row / kKvQuantGroup);
      for (int64_t r = 0; r < rows; ++r) {
        std::vector<uint8_t> want_kq(row_bytes, 0x5a), want_vq(row_bytes, 0x5a);
        std::vector<uint16_t> want_ks(row_scales, 0x1234), want_vs(row_scales, 0x1234);
        if (used[size_t(r)]) {
          kv_quantize(q, kc.data() + r * row, row, want_kq.data(), want_ks.data());
          kv_quantize(q, vc.data() + r * row, row, want_vq.data(), want_vs.data());
        }
        const auto at = [&](const std::vector<uint8_t>& v) {
          return std::vector<uint8_t>(v.begin() + int64_t(r * row_bytes), v.begin() + int64_t((r + 1) * row_bytes));
        };
        const auto sat = [&](const std::vector<uint16_t>& v) {
          return std::vector<uint16_t>(v.begin() + int64_t(r * row_scales), v.begin() + int64_t((r + 1) * row_scales));
        };
        EXPECT_EQ(at(kq), want_kq) << kv_quant_name(q) << " hd " << hd << " slot " << r;
        EXPECT_EQ(at(vq), want_vq) << kv_quant_name(q) << " hd " << hd << " slot " << r;
        EXPECT_EQ(sat(ks), want_ks) << kv_quant_name(q) << " hd " << hd << " slot " << r;
        EXPECT_EQ(sat(vs), want_vs) << kv_quant_name(q) << " hd " << hd << " slot " << r;
      }
    }
}

// The CPU backend reads the codes through the block table a tile at a time (AttentionParams' paged
// source); the reference widens each sequence's rows first. Both must agree.
TEST(KvQuant, AttentionBatchReadsAQuantizedPagedPool) {
  using lathe::testing::check_batch_attention;
  std::mt19937 rng(5);
  auto cpu = make_cpu_ops();
  auto ref = make_ref_ops();
  lathe::testing::Worst worst("attention batch (quantized pool)");
  for (KvQuant q : {KvQuant::kQ8, KvQuant::kQ4}) {
    lathe::testing::BatchAttnCase c{{1, 1, 7}, {5, 40, 17}, 4, 2, 32, 0, 0.f, 4};
    c.kv_quant = q;
    check_batch_attention(*cpu, *ref, rng, worst, c, 2e-5);
    c = {{7, 1, 20}, {7, 90, 60}, 4, 1, 64, 9, 5.f, 8};
    c.kv_quant = q;
    check_batch_attention(*cpu, *ref, rng, worst, c, 2e-5);
    c = {{3, 1}, {300, 64}, 8, 2, 128, 0, 0.f, 16, 2};
    c.kv_quant = q;
    check_batch_attention(*cpu, *ref, rng, worst, c, 2e-5);
    // Long decodes over one kv head: the CPU splits the keys (partial states merged), each split
    // reading its own tiles of the table.
    c = {{1, 2}, {1500, 700}, 4, 1, 64, 0, 0.f, 16};
    c.kv_quant = q;
    check_batch_attention(*cpu, *ref, rng, worst, c, 2e-5);
  }
}

TEST(KvQuant, UnsupportedHeadDimIsAClearError) {
  auto cpu = make_cpu_ops();
  EXPECT_FALSE(cpu->supports_kv_quant(48));
  EXPECT_TRUE(cpu->supports_kv_quant(96));
  std::vector<float> q(48), k(48), v(48), cs(24);
  std::vector<uint8_t> kc(64), vc(64);
  std::vector<uint16_t> s(4);
  std::vector<int32_t> slot = {0};
  RopeStoreParams p;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.cos = p.sin = cs.data();
  p.k_cache = kc.data();
  p.v_cache = vc.data();
  p.kv_quant = KvQuant::kQ8;
  p.k_scale = p.v_scale = s.data();
  p.slots = slot.data();
  p.n = 1;
  p.n_heads = p.n_kv_heads = 1;
  p.head_dim = p.rot_dim = 48;
  try {
    cpu->rope_store_kv(p);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("multiple of 32"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lathe::ops
