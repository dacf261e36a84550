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

namespace lathe::model {
namespace {

// ExLlamaV2's own EXL2 file runs from its packed bits on the CPU (ops::Ops::matmul_exl2): the
// logits equal the dequantized path's for a prefill and decode steps, to the float16 rounding of the
// dequantized copy (q * code^2 * max / 256 has up to ~27 significant bits; float16 keeps 11, the
// packed path all of them): ~1e-3 relative, measured 7.8e-4.
TEST(QuantizedLoad, Exl2PackedPathEqualsDequantized) {
  LATHE_REQUIRE_SHARED(dir, "models/ref-llama-14m-exl2-4.0bpw");
  auto model = Model::load(dir);
  const LayerWeights& L0 = model->loader().weights().layers[0];
  ASSERT_NE(L0.q.exl2, nullptr);
  ASSERT_NE(L0.down.exl2, nullptr);
  auto cpu = ops::make_cpu_ops();
  Runner packed(*model, *cpu), plain(*model, *cpu);
  packed.set_packed_quantized(true);
  plain.set_packed_quantized(false);
  std::vector<int32_t> ids(48);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(100 + 37 * i % 5000);
  double worst = 0;
  KvCache ca(model->config(), 64, *cpu), cb(model->config(), 64, *cpu);
  Workspace wa(*cpu), wb(*cpu);
  Tensor la, lb;
  packed.forward(ids, ca, wa, LogitsFor::kAll, &la);
  plain.forward(ids, cb, wb, LogitsFor::kAll, &lb);
  auto compare = [&](const Tensor& a, const Tensor& b) {
    ASSERT_EQ(a.numel(), b.numel());
    double num = 0, den = 0;
    for (int64_t i = 0; i < a.numel(); ++i) {
      num = std::max(num, double(std::fabs(a.as<float>()[i] - b.as<float>()[i])));
      den = std::max(den, double(std::fabs(b.as<float>()[i])));
    }
    worst = std::max(worst, num / den);
  };
  compare(la, lb);
  for (int step = 0; step < 4; ++step) {
    const int32_t next = 200 + step;
    packed.forward(std::span<const int32_t>(&next, 1), ca, wa, LogitsFor::kLast, &la);
    plain.forward(std::span<const int32_t>(&next, 1), cb, wb, LogitsFor::kLast, &lb);
    compare(la, lb);
  }
  std::printf("[ exl2 ] packed vs dequantized logits: worst relative difference %.2e\n", worst);
  EXPECT_LT(worst, 2e-3);
}

}  // namespace
}  // namespace lathe::model
