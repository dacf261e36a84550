// Test helper: n consecutive token ids from `start` (distinct runs make distinct prefixes).
#pragma once

#include <cstdint>
#include <numeric>
#include <vector>

namespace lathe::testing {

inline std::vector<int32_t> token_run(int n, int start = 0) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), start);
  return t;
}

}  // namespace lathe::testing
