// Helpers shared by the model-level tests against shared/fixtures/models/*/golden.json (CPU and CUDA).
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/tensor.h"

namespace lathe::testing {

// The fixture architectures, as folder names under shared/fixtures/models.
inline constexpr const char* kFixtureArchs[] = {"llama", "llama3-rope", "mistral", "qwen2",
                                                "qwen3", "gemma2",      "phi3",    "mixtral"};

nlohmann::json read_json(const std::filesystem::path& path);
// -log softmax(logits[j])[ids[j + 1]] for every row but the last, in double.
std::vector<double> nll_of(const Tensor& logits, const std::vector<int32_t>& ids);
// A prefill's logits (one row per id of `golden_case["ids"]`) against the case's `nll` and
// `last_logits`: the worst absolute errors. Fails the test (ASSERT-style) on size mismatches.
struct PrefillErrors {
  double worst_nll = 0;
  double worst_logit = 0;
};
PrefillErrors compare_prefill(const Tensor& logits, const nlohmann::json& golden_case);

// First index of the maximum (torch.argmax's tie rule).
int32_t argmax(const float* row, int64_t n);

}  // namespace lathe::testing
