// The EXL2 GPTQ quantizer: with correlated inputs it beats round-to-nearest on the layer's output
// error; with an identity Hessian it is round-to-nearest exactly; group layouts meet their bpw.
#include "quant/gptq_solver.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"

namespace lathe::quant {
namespace {

// ||X (W - Wq)^T||_F / ||X W^T||_F for inputs X [rows, K].
double output_error(const std::vector<float>& x, int64_t rows, const std::vector<float>& w, const Exl2Matrix& m) {
  const int64_t N = m.out_features, K = m.in_features;
  std::vector<float> dq(size_t(N * K));
  exl2_dequantize(m, dq.data());
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

TEST(GptqSolver, BeatsRoundToNearestOnCorrelatedInputs) {
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int64_t N = 48, K = 256, rows = 1024;
  std::vector<float> w(size_t(N * K)), mix(size_t(K * K)), z(size_t(rows * K)), x(size_t(rows * K));
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
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = 0; j < K; ++j) h[size_t(i * K + j)] += double(x[size_t(r * K + i)]) * x[size_t(r * K + j)];
  for (int bits : {3, 4}) {
    const std::vector<Exl2Group> groups(2, Exl2Group{bits, 128});
    const Exl2Matrix rtn = gptq_quantize_exl2(w.data(), N, K, nullptr, groups, nullptr, {});
    const Exl2Matrix gptq = gptq_quantize_exl2(w.data(), N, K, h.data(), groups, nullptr, {});
    const double e_rtn = output_error(x, rows, w, rtn), e_gptq = output_error(x, rows, w, gptq);
    std::printf("[ gptq ] %d-bit output error: RTN %.4f, GPTQ %.4f\n", bits, e_rtn, e_gptq);
    EXPECT_LT(e_gptq, 0.85 * e_rtn) << bits << " bits";
  }
}

TEST(GptqSolver, IdentityHessianIsRoundToNearest) {
  std::mt19937 rng(8);
  std::normal_distribution<float> nd(0.f, 0.1f);
  const int64_t N = 32, K = 128;
  std::vector<float> w(size_t(N * K));
  for (auto& v : w) v = nd(rng);
  std::vector<double> h(size_t(K * K), 0.0);
  for (int64_t i = 0; i < K; ++i) h[size_t(i * K + i)] = 3.0;
  const std::vector<Exl2Group> groups{{6, 32}, {4, 64}, {2, 32}};
  double err = 0;
  const Exl2Matrix a = gptq_quantize_exl2(w.data(), N, K, nullptr, groups, nullptr, {});
  const Exl2Matrix b = gptq_quantize_exl2(w.data(), N, K, h.data(), groups, nullptr, {}, &err);
  EXPECT_EQ(a.q_weight, b.q_weight);
  EXPECT_EQ(a.q_scale, b.q_scale);
  EXPECT_EQ(a.q_scale_max, b.q_scale_max);
  EXPECT_GT(err, 0.0);
  EXPECT_LT(err, 0.3);  // a quarter of the rows are 2-bit
}

TEST(GptqSolver, ScalesCoverTheGroup) {
  std::vector<float> w{0.5f, -1.f, 0.25f, 2.f, -0.125f, 0.f, 1.f, -2.f};  // 2 rows x 4 columns
  uint8_t codes[4];
  float max = 0;
  exl2_find_scales(w.data(), 2, 4, 4, codes, &max);
  EXPECT_GT(max, 0.f);
  for (uint8_t c : codes) {
    EXPECT_GE(c, 1);
    EXPECT_LE(c, 16);
  }
  EXPECT_GE(codes[3], codes[2]);  // the largest column gets the largest code
}

TEST(GptqSolver, GroupsForBpwMeetTheTarget) {
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
