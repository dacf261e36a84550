// A fixture model (shared/fixtures/models/NAME) on the CPU backend with its tokenizer and golden
// Hugging Face outputs: what the engine tests run against.
#pragma once

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "engine/batch_engine.h"
#include "model/model.h"
#include "ops/ops.h"
#include "support/golden.h"
#include "tokenizer/tokenizer.h"

namespace lathe::engine::testing {

struct FixtureModel {
  explicit FixtureModel(const std::filesystem::path& dir)
      : model(model::Model::load(dir)),
        ops(ops::make_cpu_ops()),
        runner(*model, *ops),
        tokenizer(tok::Tokenizer::load(dir)),
        golden(lathe::testing::read_json(dir / "golden.json")) {}
  std::unique_ptr<model::Model> model;
  std::unique_ptr<ops::Ops> ops;
  model::Runner runner;
  tok::Tokenizer tokenizer;
  nlohmann::json golden;
};

// A greedy request for n tokens that ignores EOS (so its length is known).
inline BatchRequest greedy(const std::vector<int32_t>& prompt, int64_t n) {
  BatchRequest r;
  r.prompt = prompt;
  r.max_new_tokens = n;
  r.sampler.temperature = 0;
  r.ignore_eos = true;
  return r;
}

}  // namespace lathe::engine::testing
