#include "support/golden.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>

namespace lathe::testing {

nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

std::vector<double> nll_of(const Tensor& logits, const std::vector<int32_t>& ids) {
  const int64_t V = logits.dim(1);
  std::vector<double> out;
  for (size_t j = 0; j + 1 < ids.size(); ++j) {
    const float* row = logits.as<float>() + int64_t(j) * V;
    double mx = row[0];
    for (int64_t i = 1; i < V; ++i) mx = std::max(mx, double(row[i]));
    double s = 0;
    for (int64_t i = 0; i < V; ++i) s += std::exp(double(row[i]) - mx);
    out.push_back(std::log(s) + mx - row[ids[j + 1]]);
  }
  return out;
}

PrefillErrors compare_prefill(const Tensor& logits, const nlohmann::json& golden_case) {
  PrefillErrors e;
  const auto ids = golden_case["ids"].get<std::vector<int32_t>>();
  const auto nll = nll_of(logits, ids);
  const auto want_nll = golden_case["nll"].get<std::vector<double>>();
  EXPECT_EQ(nll.size(), want_nll.size());
  for (size_t j = 0; j < std::min(nll.size(), want_nll.size()); ++j)
    e.worst_nll = std::max(e.worst_nll, std::fabs(nll[j] - want_nll[j]));
  const int64_t V = logits.dim(1);
  const auto want_logits = golden_case["last_logits"].get<std::vector<double>>();
  EXPECT_EQ(int64_t(want_logits.size()), V);
  const float* last = logits.as<float>() + (int64_t(ids.size()) - 1) * V;
  for (int64_t i = 0; i < std::min<int64_t>(V, int64_t(want_logits.size())); ++i)
    e.worst_logit = std::max(e.worst_logit, std::fabs(double(last[i]) - want_logits[size_t(i)]));
  return e;
}

int32_t argmax(const float* row, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (row[i] > row[best]) best = i;
  return int32_t(best);
}

}  // namespace lathe::testing
