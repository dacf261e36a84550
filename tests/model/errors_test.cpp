// Bad model folders fail with one clear error naming the problem, never a crash.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "test_paths.h"

namespace lathe::model {
namespace {

namespace fs = std::filesystem;

// A writable copy of a fixture model folder.
fs::path copy_fixture(const fs::path& src, const std::string& tag) {
  const auto dst = fs::temp_directory_path() / ("lathe_err_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(dst);
  fs::create_directories(dst);
  for (auto& e : fs::directory_iterator(src)) fs::copy_file(e.path(), dst / e.path().filename());
  return dst;
}

std::string error_of(const fs::path& dir) {
  try {
    Model::load(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelErrors, MissingFolderAndConfig) {
  EXPECT_NE(error_of("/nonexistent/model").find("not found"), std::string::npos);
  const auto d = fs::temp_directory_path() / "lathe_err_noconfig";
  fs::create_directories(d);
  EXPECT_NE(error_of(d).find("config.json"), std::string::npos);
}

TEST(ModelErrors, MissingAndTruncatedSafetensors) {
  LATHE_REQUIRE_SHARED(src, "fixtures/models/llama");
  auto d = copy_fixture(src, "trunc");
  fs::resize_file(d / "model.safetensors", fs::file_size(d / "model.safetensors") / 2);
  EXPECT_NE(error_of(d).find("truncated"), std::string::npos) << error_of(d);
  fs::remove(d / "model.safetensors");
  EXPECT_NE(error_of(d).find("model.safetensors"), std::string::npos) << error_of(d);
}

TEST(ModelErrors, WrongShapeNamesTensorAndBothShapes) {
  LATHE_REQUIRE_SHARED(src, "fixtures/models/llama");
  auto d = copy_fixture(src, "shape");
  auto cfg = io::read_json_file(d / "config.json");
  cfg["intermediate_size"] = 96;  // weights are [160, 64]
  std::ofstream(d / "config.json") << cfg.dump();
  const std::string m = error_of(d);
  EXPECT_NE(m.find("mlp.gate_proj.weight"), std::string::npos) << m;
  EXPECT_NE(m.find("[160, 64]"), std::string::npos) << m;
  EXPECT_NE(m.find("[96, 64]"), std::string::npos) << m;
}

TEST(ModelErrors, MissingTensorIsNamed) {
  LATHE_REQUIRE_SHARED(src, "fixtures/models/llama");
  auto d = copy_fixture(src, "missing");
  auto cfg = io::read_json_file(d / "config.json");
  cfg["num_hidden_layers"] = 3;  // the file has 2 layers
  std::ofstream(d / "config.json") << cfg.dump();
  const std::string m = error_of(d);
  EXPECT_NE(m.find("model.layers.2."), std::string::npos) << m;
}

TEST(ModelErrors, MissingLmHeadTiesToEmbedding) {
  // qwen2's fixture has no lm_head.weight; a config that forgot tie_word_embeddings still loads, tied.
  LATHE_REQUIRE_SHARED(src, "fixtures/models/qwen2");
  auto d = copy_fixture(src, "tie");
  auto cfg = io::read_json_file(d / "config.json");
  cfg.erase("tie_word_embeddings");
  std::ofstream(d / "config.json") << cfg.dump();
  auto model = Model::load(d);
  const auto& w = model->loader().weights();
  EXPECT_EQ(w.lm_head.data, w.embed.data);
}

TEST(ModelErrors, UnsupportedArchitecture) {
  LATHE_REQUIRE_SHARED(src, "fixtures/models/llama");
  auto d = copy_fixture(src, "arch");
  auto cfg = io::read_json_file(d / "config.json");
  cfg["architectures"] = {"BertModel"};
  std::ofstream(d / "config.json") << cfg.dump();
  const std::string m = error_of(d);
  EXPECT_NE(m.find("BertModel"), std::string::npos) << m;
  EXPECT_NE(m.find("LlamaForCausalLM"), std::string::npos) << m;
}

TEST(ModelErrors, TokenIdOutOfRange) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto model = Model::load(dir);
  auto ops = ops::make_cpu_ops();
  KvCache cache(model->config(), 8, *ops);
  Workspace ws(*ops);
  Runner runner(*model, *ops);
  Tensor logits;
  const int32_t bad[] = {0, 512};
  try {
    runner.forward(bad, cache, ws, LogitsFor::kLast, &logits);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("512"), std::string::npos);
  }
  const int32_t neg[] = {-1};
  EXPECT_THROW(runner.forward(neg, cache, ws, LogitsFor::kLast, &logits), Error);
  // Over capacity.
  const int32_t many[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  EXPECT_THROW(runner.forward(many, cache, ws, LogitsFor::kLast, &logits), Error);
}

}  // namespace
}  // namespace lathe::model

namespace lathe::model {
namespace {

// The KV cache sizing helper on a host backend: no device limit, and a bad fraction is refused.
TEST(KvCacheSizing, HostBackendHasNoDeviceLimit) {
  LATHE_REQUIRE_SHARED(src, "fixtures/models/llama");
  auto model = Model::load(src);
  auto cpu = ops::make_cpu_ops();
  EXPECT_EQ(KvPool::positions_that_fit(model->config(), *cpu, 0.5), INT64_MAX);
  EXPECT_THROW(KvPool::positions_that_fit(model->config(), *cpu, 0.0), Error);
  EXPECT_THROW(KvPool::positions_that_fit(model->config(), *cpu, 1.5), Error);
  EXPECT_EQ(cpu->kv_dtype(model->config().head_dim), DType::kF32);
}

// More positions than the cache can index is refused before anything is allocated, on any backend,
// saying what to change.
TEST(KvCacheSizing, TooManyPositionsSaysWhatToLower) {
  LATHE_REQUIRE_SHARED(src, "fixtures/models/llama");
  auto model = Model::load(src);
  auto cpu = ops::make_cpu_ops();
  try {
    KvCache cache(model->config(), (int64_t(1) << 31) - 1, *cpu);
    ADD_FAILURE() << "a " << cache.bytes() << "-byte KV cache was allocated";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kOutOfRange);
    EXPECT_NE(std::string(e.what()).find("KV cache"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--ctx"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lathe::model
