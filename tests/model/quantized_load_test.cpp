// Quantized checkpoints load through model::WeightLoader: a GPTQ checkpoint written here from a
// fixture model (4-bit, asymmetric, group 32, v1 zeros and act-order g_idx) gives exactly the logits
// of the same model written with the dequantized weights as plain float16 tensors. (The EXL2 path is
// checked end to end against ExLlamaV2's own perplexity in tests/tools/cli_test.cpp.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "model/model.h"
#include "quant/gptq.h"
#include "support/gptq_twin.h"
#include "support/golden.h"
#include "test_paths.h"

namespace lathe::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

TEST(QuantizedLoad, GptqEqualsItsDequantizedWeights) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  const fs::path gptq_dir = fs::temp_directory_path() / "lathe_quantized_load_gptq";
  const fs::path plain_dir = fs::temp_directory_path() / "lathe_quantized_load_f16";
  const int quantized = lathe::testing::write_gptq_twin(dir, gptq_dir, plain_dir, 17);
  ASSERT_GT(quantized, 0);

  auto ops = ops::make_ref_ops();
  auto a = Model::load(gptq_dir), b = Model::load(plain_dir);
  EXPECT_EQ(a->config().quant.method, "gptq");
  Runner ra(*a, *ops), rb(*b, *ops);
  const auto ids = lathe::testing::read_json(dir / "golden.json")["cases"][1]["ids"].get<std::vector<int32_t>>();
  Tensor la, lb;
  KvCache ca(a->config(), int64_t(ids.size()), *ops), cb(b->config(), int64_t(ids.size()), *ops);
  Workspace wa(*ops), wb(*ops);
  ra.forward(ids, ca, wa, LogitsFor::kAll, &la);
  rb.forward(ids, cb, wb, LogitsFor::kAll, &lb);
  ASSERT_EQ(la.numel(), lb.numel());
  EXPECT_TRUE(std::equal(la.as<float>(), la.as<float>() + la.numel(), lb.as<float>()))
      << "the GPTQ checkpoint and its dequantized float16 twin give different logits";
  std::printf("[ gptq ] %d linear layers quantized, logits identical to the float16 twin\n", quantized);
  fs::remove_all(gptq_dir);
  fs::remove_all(plain_dir);
}

TEST(QuantizedLoad, UnknownQuantMethodIsAnError) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  json config = lathe::testing::read_json(dir / "config.json");
  config["quantization_config"] = {{"quant_method", "awq"}, {"bits", 4}};
  try {
    parse_model_config(config, json::object());
    ADD_FAILURE() << "awq was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("awq"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lathe::model
