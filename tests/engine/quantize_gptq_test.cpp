// GPTQ for EXL2 through the backend ops (here the CPU backend, whose gptq ops are the reference the
// CUDA ones are tested against in ops_cuda_test): with correlated inputs it beats round-to-nearest
// on the layer's output error; with an identity Hessian it is round-to-nearest exactly; the
// dequantized weight it writes equals the packed layer's; scales cover their group.
#include "engine/quantize_gptq.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace lathe::engine::qz {
namespace {

using quant::Exl2Group;
using quant::Exl2Matrix;

// ||X (W - Wq)^T||_F / ||X W^T||_F for inputs X [rows, K].
double output_error(const std::vector<float>& x, int64_t rows, const std::vector<float>& w, const Exl2Matrix& m) {
  const int64_t N = m.out_features, K = m.in_features;
  std::vector<float> dq(static_cast<size_t>(N * K));
  quant::exl2_dequantize(m, dq.data());
  double num = 0, den = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t n = 0; n < N; ++n) {
      double a = 0, b = 0;
      for (int64_t k = 0; k < K; ++k) {
        a += double(x[size_t(r * K + k)]) * w[size_t(n * K + k)];
        b += double(x[size_t(r * K + k)]) * dq[size_t(n * K + k)];
      }
      num += (a - b) * (a - b);
      den += a * a;
    }
  return std::sqrt(num / den);
}

struct Solved {
  Exl2Matrix m;
  std::vector<uint16_t> wq;
};

// w [N, K] host fp32; h [K, K] or null (round to nearest).
Solved solve(ops::Ops& ops, const std::vector<float>& w, int64_t N, int64_t K, const std::vector<double>* h,
             const std::vector<Exl2Group>& groups) {
  const ops::Weight weight{w.data(), DType::kF32, N, K};
  const GptqFactor f = h ? GptqFactor(ops, h->data(), K, GptqOptions{}.damp) : GptqFactor(ops, K);
  Solved s;
  s.wq.resize(size_t(N * K));
  const GptqResult r = gptq_solve(ops, f, weight, groups, s.wq.data());
  s.m = gptq_pack(ops, f, r, nullptr);
  return s;
}

TEST(QuantizeGptq, BeatsRoundToNearestOnCorrelatedInputs) {
  auto ops = ops::make_cpu_ops();
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int64_t N = 48, K = 256, rows = 1024;
  std::vector<float> w(static_cast<size_t>(N * K)), mix(static_cast<size_t>(K * K)), z(static_cast<size_t>(rows * K)), x(static_cast<size_t>(rows * K));
  for (auto& v : w) v = nd(rng) * 0.05f;
  for (auto& v : mix) v = nd(rng) / 16.f;
  for (auto& v : z) v = nd(rng);
  // Correlated, unevenly scaled channels: x = z M, a few channels much louder.
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < K; ++k) {
      double s = 0;
      for (int64_t j = 0; j < K; ++j) s += double(z[size_t(r * K + j)]) * mix[size_t(j * K + k)];
      x[size_t(r * K + k)] = float(s) * (k % 17 == 0 ? 6.f : 1.f);
    }
  std::vector<double> h(size_t(K * K), 0.0);
  ops->accumulate_gram({h.data(), x.data(), rows, K});
  for (int bits : {3, 4}) {
    const std::vector<Exl2Group> groups(2, Exl2Group{bits, 128});
    const Solved rtn = solve(*ops, w, N, K, nullptr, groups), gptq = solve(*ops, w, N, K, &h, groups);
    const double e_rtn = output_error(x, rows, w, rtn.m), e_gptq = output_error(x, rows, w, gptq.m);
    std::printf("[ gptq ] %d-bit output error: RTN %.4f, GPTQ %.4f\n", bits, e_rtn, e_gptq);
    EXPECT_LT(e_gptq, 0.85 * e_rtn) << bits << " bits";
    // The float16 weight the solve writes for the stand-in is the packed layer's dequantization.
    std::vector<float> dq(static_cast<size_t>(N * K));
    quant::exl2_dequantize(gptq.m, dq.data());
    for (size_t i = 0; i < dq.size(); ++i) ASSERT_EQ(gptq.wq[i], f32_to_f16(dq[i])) << i;
  }
}

TEST(QuantizeGptq, IdentityHessianIsRoundToNearest) {
  auto ops = ops::make_cpu_ops();
  std::mt19937 rng(8);
  std::normal_distribution<float> nd(0.f, 0.1f);
  const int64_t N = 32, K = 128;
  std::vector<float> w(static_cast<size_t>(N * K));
  for (auto& v : w) v = nd(rng);
  std::vector<double> h(size_t(K * K), 0.0);
  for (int64_t i = 0; i < K; ++i) h[size_t(i * K + i)] = 3.0;
  const std::vector<Exl2Group> groups{{6, 32}, {4, 64}, {2, 32}};
  const Solved a = solve(*ops, w, N, K, nullptr, groups), b = solve(*ops, w, N, K, &h, groups);
  EXPECT_EQ(a.m.q_weight, b.m.q_weight);
  EXPECT_EQ(a.m.q_scale, b.m.q_scale);
  EXPECT_EQ(a.m.q_scale_max, b.m.q_scale_max);
  const ops::Weight weight{w.data(), DType::kF32, N, K};
  const double err = relative_error(*ops, weight, b.wq.data(), N, K);
  EXPECT_GT(err, 0.0);
  EXPECT_LT(err, 0.3);  // a quarter of the rows are 2-bit
}

TEST(QuantizeGptq, DeadChannelsQuantizeAsZero) {
  auto ops = ops::make_cpu_ops();
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 0.1f);
  const int64_t N = 16, K = 64, rows = 256;
  std::vector<float> w(static_cast<size_t>(N * K)), x(static_cast<size_t>(rows * K));
  for (auto& v : w) v = nd(rng);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < K; ++k) x[size_t(r * K + k)] = k % 5 == 0 ? 0.f : nd(rng);  // every 5th never fires
  std::vector<double> h(size_t(K * K), 0.0);
  ops->accumulate_gram({h.data(), x.data(), rows, K});
  const Solved s = solve(*ops, w, N, K, &h, {{4, 64}});
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; k += 5) EXPECT_EQ(f16_to_f32(s.wq[size_t(n * K + k)]), 0.f) << n << "," << k;
}

TEST(QuantizeGptq, ScalesCoverTheGroup) {
  std::vector<float> w{0.5f, -1.f, 0.25f, 2.f, -0.125f, 0.f, 1.f, -2.f};  // 2 rows x 4 columns
  uint8_t codes[4];
  float max = 0;
  ops::gptq_find_scales(w.data(), 2, 4, 4, codes, &max);
  EXPECT_GT(max, 0.f);
  for (uint8_t c : codes) {
    EXPECT_GE(c, 1);
    EXPECT_LE(c, 16);
  }
  EXPECT_GE(codes[3], codes[2]);  // the largest column gets the largest code
}

TEST(QuantizeGptq, BadGroupsAreRefused) {
  auto ops = ops::make_cpu_ops();
  std::vector<float> w(size_t(8 * 64), 0.1f);
  EXPECT_THROW(solve(*ops, w, 8, 64, nullptr, {{4, 32}}), Error);   // rows not covered
  EXPECT_THROW(solve(*ops, w, 8, 64, nullptr, {{7, 64}}), Error);   // no such width
}

}  // namespace
}  // namespace lathe::engine::qz
