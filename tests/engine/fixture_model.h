// A fixture model (shared/fixtures/models/NAME) on the CPU backend with its tokenizer and golden
// Hugging Face outputs: what the engine tests run against.
#pragma once

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

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

}  // namespace lathe::engine::testing
