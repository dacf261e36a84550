#include "support/parity.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace lathe::testing {

std::vector<float> random_floats(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

HostWeight random_weight(std::mt19937& rng, int64_t rows, int64_t cols, DType dtype, float lo, float hi) {
  HostWeight hw;
  hw.f32 = random_floats(rng, size_t(rows * cols), lo, hi);
  hw.w.rows = rows;
  hw.w.cols = cols;
  hw.w.dtype = dtype;
  if (dtype == DType::kF32) {
    hw.w.data = hw.f32.data();
  } else {
    hw.half.resize(hw.f32.size());
    for (size_t i = 0; i < hw.f32.size(); ++i)
      hw.half[i] = dtype == DType::kBF16 ? f32_to_bf16(hw.f32[i]) : f32_to_f16(hw.f32[i]);
    hw.w.data = hw.half.data();
  }
  return hw;
}

double rel_error(const std::vector<float>& got, const std::vector<float>& ref) {
  double max_err = 0, max_ref = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::isnan(got[i]) != std::isnan(ref[i])) return INFINITY;
    max_err = std::max(max_err, std::abs(double(got[i]) - double(ref[i])));
    max_ref = std::max(max_ref, std::abs(double(ref[i])));
  }
  return max_err / std::max(max_ref, 1e-3);
}

void Worst::check(double e, double tol, const std::string& what) {
  ++cases;
  EXPECT_LE(e, tol) << what;
  if (e > err || where.empty()) {
    err = std::max(err, e);
    where = what;
  }
}

Worst::~Worst() {
  if (err == 0)
    std::printf("[ worst ] %s: exact everywhere (%d cases)\n", test.c_str(), cases);
  else
    std::printf("[ worst ] %s: %.3g at %s (%d cases)\n", test.c_str(), err, where.c_str(), cases);
}

}  // namespace lathe::testing
