// Helpers shared by the op parity tests of every backend (tests/ops, tests/ops_cuda): seeded random
// inputs, weights in any float dtype, the error measure, and a tracker that prints a test's worst case.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "ops/ops.h"

namespace lathe::testing {

std::vector<float> random_floats(std::mt19937& rng, size_t n, float lo = -1.f, float hi = 1.f);

// A random weight in any float dtype plus its host storage (w.data points into it).
struct HostWeight {
  std::vector<float> f32;        // the values before rounding to the dtype
  std::vector<uint16_t> half;    // bf16/f16 storage
  ops::Weight w;
  size_t bytes() const { return w.dtype == DType::kF32 ? f32.size() * 4 : half.size() * 2; }
};
HostWeight random_weight(std::mt19937& rng, int64_t rows, int64_t cols, DType dtype, float lo = -1.f,
                         float hi = 1.f);

// max|got - ref| / max(max|ref|, 1e-3); infinity when NaNs disagree. The floor only matters for
// outputs that are all ~0 (gelu of a very negative input: the double ref cancels to exactly 0).
double rel_error(const std::vector<float>& got, const std::vector<float>& ref);

// Tracks the worst error of a test (EXPECTs each case against its tolerance) and prints it at the end:
// "[ worst ] <name>: <err> at <case> (<n> cases)".
struct Worst {
  std::string test, where;
  double err = 0;
  int cases = 0;
  explicit Worst(std::string name) : test(std::move(name)) {}
  void check(double e, double tol, const std::string& what);
  ~Worst();
};

}  // namespace lathe::testing
