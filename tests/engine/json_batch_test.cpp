// response_format through the BatchEngine on a fixture model: its weights are random, so free
// sampling is garbage, yet every constrained request (greedy and at temperature > 0, batched beside
// unconstrained ones) streams text that parses and fits the schema, and ends with kStop or kEos.
#include <gtest/gtest.h>

#include <map>

#include "engine/batch_engine.h"
#include "engine/fixture_model.h"
#include "engine/schema_check.h"
#include "test_paths.h"

namespace lathe::engine {
namespace {

using nlohmann::json;

const char* kPerson = R"({"type":"object","properties":{
  "name":{"type":"string","maxLength":10},
  "age":{"type":"integer"},
  "tags":{"type":"array","items":{"enum":["x","y"]},"maxItems":3},
  "ok":{"type":"boolean"}},
  "required":["name","age","ok"]})";

struct Outcome {
  std::string text;
  FinishReason reason = FinishReason::kLength;
};

std::map<RequestId, Outcome> run(BatchEngine& e) {
  std::map<RequestId, Outcome> out;
  for (int s = 0; s < 5000 && !e.idle(); ++s)
    for (const BatchEvent& ev : e.step()) {
      out[ev.id].text += ev.text;
      if (ev.finished) out[ev.id].reason = ev.reason;
    }
  EXPECT_TRUE(e.idle());
  EXPECT_EQ(e.blocks().num_free(), e.blocks().num_blocks());
  return out;
}

TEST(JsonBatch, SchemaAndJsonObjectGiveValidDocuments) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  testing::FixtureModel f(dir);
  const json schema = json::parse(kPerson);
  const auto person = make_response_format(json{{"type", "json_schema"}, {"json_schema", {{"name", "p"}, {"schema", schema}}}},
                                           f.tokenizer);
  const auto object = make_response_format(json{{"type", "json_object"}}, f.tokenizer);
  BatchEngine e(f.runner, {.num_blocks = 1024, .scheduler = {.block_size = 4, .token_budget = 256}}, &f.tokenizer);
  const std::vector<int32_t> prompt = f.tokenizer.encode("Reply in JSON:", true);
  std::vector<std::pair<RequestId, json>> constrained;
  auto add = [&](const std::shared_ptr<const ResponseFormat>& fmt, const json& sch, float temperature, uint64_t seed) {
    BatchRequest r;
    r.prompt = prompt;
    r.max_new_tokens = 400;
    r.sampler.temperature = temperature;
    r.sampler.seed = seed;
    r.sampler.frequency_penalty = temperature > 0 ? 0.5f : 0.f;  // keeps a random model from repeating one token forever
    r.response_format = fmt;
    constrained.emplace_back(e.add(r), sch);
  };
  add(person, schema, 0.f, 0);
  for (uint64_t seed = 1; seed <= 6; ++seed) add(person, schema, 0.9f, seed);
  for (uint64_t seed = 1; seed <= 6; ++seed) add(object, json::parse(R"({"type":"object"})"), 1.0f, seed);
  BatchRequest free_text;  // an unconstrained neighbour in the same steps
  free_text.prompt = prompt;
  free_text.max_new_tokens = 30;
  free_text.ignore_eos = true;
  const RequestId free_id = e.add(free_text);
  auto runs = run(e);
  EXPECT_EQ(runs[free_id].reason, FinishReason::kLength);
  int complete = 0;
  for (const auto& [id, sch] : constrained) {
    const Outcome& r = runs[id];
    if (r.reason == FinishReason::kLength) continue;  // a document cut by the token limit
    ++complete;
    EXPECT_TRUE(r.reason == FinishReason::kStop || r.reason == FinishReason::kEos);
    json doc;
    ASSERT_NO_THROW(doc = json::parse(r.text)) << r.text;
    EXPECT_TRUE(testing::conforms(doc, sch)) << r.text;
  }
  EXPECT_GE(complete, int(constrained.size()) - 2);
  EXPECT_EQ(runs[constrained[0].first].reason, FinishReason::kStop) << runs[constrained[0].first].text;  // greedy: the schema bounds it
}

// n > 1 completions each get their own grammar state; logprobs come from the raw logits.
TEST(JsonBatch, NCompletionsAndLogprobs) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  testing::FixtureModel f(dir);
  const json schema = json::parse(R"({"type":"object","properties":{"v":{"enum":["left","right",7]}},"required":["v"]})");
  BatchEngine e(f.runner, {.num_blocks = 512, .scheduler = {.block_size = 4}}, &f.tokenizer);
  BatchRequest r;
  r.prompt = f.tokenizer.encode("Pick:", true);
  r.max_new_tokens = 100;
  r.sampler.temperature = 1.0f;
  r.logprobs = 2;
  r.response_format = make_response_format(json{{"type", "json_schema"}, {"json_schema", {{"schema", schema}}}}, f.tokenizer);
  const auto ids = e.add(r, 4);
  auto runs = run(e);
  for (RequestId id : ids) {
    ASSERT_EQ(runs[id].reason, FinishReason::kStop) << runs[id].text;
    const json doc = json::parse(runs[id].text);
    EXPECT_TRUE(testing::conforms(doc, schema)) << runs[id].text;
  }
}

}  // namespace
}  // namespace lathe::engine
