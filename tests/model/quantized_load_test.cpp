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
#include "support/golden.h"
#include "test_paths.h"

namespace lathe::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

bool is_linear(const std::string& name) {
  for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    if (name.find(std::string(p) + ".weight") != std::string::npos) return true;
  return false;
}

TEST(QuantizedLoad, GptqEqualsItsDequantizedWeights) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  const fs::path gptq_dir = fs::temp_directory_path() / "lathe_quantized_load_gptq";
  const fs::path plain_dir = fs::temp_directory_path() / "lathe_quantized_load_f16";
  for (const auto& d : {gptq_dir, plain_dir}) {
    fs::remove_all(d);
    fs::create_directories(d);
  }
  json config = lathe::testing::read_json(dir / "config.json");
  std::ofstream(plain_dir / "config.json") << config.dump(2);
  config["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 32}, {"desc_act", true}};
  std::ofstream(gptq_dir / "config.json") << config.dump(2);

  io::WeightStore store(dir);
  std::mt19937 rng(17);
  std::vector<io::NamedTensor> gptq_tensors, plain_tensors;
  std::vector<std::unique_ptr<quant::GptqMatrix>> keep;
  std::vector<std::vector<uint16_t>> storage;
  storage.reserve(64);
  int quantized = 0;
  for (const std::string& name : store.names()) {
    const TensorView v = *store.find(name);
    if (!is_linear(name) || v.dim(1) % 32 != 0 || v.dim(0) % 8 != 0) {
      gptq_tensors.push_back({name, v});
      plain_tensors.push_back({name, v});
      continue;
    }
    // RTN to 4 bits per 32-row group (asymmetric), groups in a shuffled (act-order) assignment.
    const int64_t N = v.dim(0), K = v.dim(1), G = K / 32;
    std::vector<float> w(size_t(N * K));
    convert_to_f32(v.data, v.dtype, w.data(), w.size());
    std::vector<int32_t> g_idx(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) g_idx[size_t(k)] = int32_t(k / 32);
    std::shuffle(g_idx.begin(), g_idx.end(), rng);
    std::vector<float> lo(size_t(G * N), INFINITY), hi(size_t(G * N), -INFINITY);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n) {
        const size_t at = size_t(g_idx[size_t(k)] * N + n);
        lo[at] = std::min(lo[at], w[size_t(n * K + k)]);
        hi[at] = std::max(hi[at], w[size_t(n * K + k)]);
      }
    std::vector<float> scales(size_t(G * N));
    std::vector<uint8_t> zeros(size_t(G * N)), q(size_t(K * N));
    for (size_t i = 0; i < scales.size(); ++i) {
      scales[i] = f16_to_f32(f32_to_f16(std::max((hi[i] - lo[i]) / 15.f, 1e-6f)));
      zeros[i] = uint8_t(std::clamp(int(std::lround(-lo[i] / scales[i])), 1, 15));
    }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n) {
        const size_t g = size_t(g_idx[size_t(k)] * N + n);
        q[size_t(k * N + n)] = uint8_t(std::clamp(int(std::lround(w[size_t(n * K + k)] / scales[g])) + zeros[g], 0, 15));
      }
    keep.push_back(std::make_unique<quant::GptqMatrix>(
        quant::gptq_pack(4, K, N, 32, false, q.data(), zeros.data(), scales.data(), g_idx)));
    const std::string prefix = name.substr(0, name.size() - std::string(".weight").size());
    storage.emplace_back();
    for (auto& t : quant::gptq_tensors(*keep.back(), prefix, &storage.back())) gptq_tensors.push_back(t);
    std::vector<float> deq(size_t(N * K));
    quant::gptq_dequantize(*keep.back(), deq.data());
    storage.emplace_back(deq.size());
    for (size_t i = 0; i < deq.size(); ++i) storage.back()[i] = f32_to_f16(deq[i]);
    plain_tensors.push_back({name, TensorView{storage.back().data(), DType::kF16, {N, K}}});
    ++quantized;
  }
  ASSERT_GT(quantized, 0);
  io::write_safetensors(gptq_dir / "model.safetensors", gptq_tensors);
  io::write_safetensors(plain_dir / "model.safetensors", plain_tensors);

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
