// Token masks: the vocabulary walk allows exactly the tokens whose bytes the matcher accepts (checked
// token by token), and random sampling restricted to the mask, many seeds, always ends in a document
// that nlohmann::json parses and the schema validator passes. On the fixture models' byte-level
// tokenizer (vocab 512) and, when fetched, Llama 3.1's (128k).
#include <gtest/gtest.h>

#include <limits>
#include <random>

#include "engine/grammar/response_format.h"
#include "engine/schema_check.h"
#include "test_paths.h"
#include "tokenizer/tok_test_util.h"

namespace lathe::engine {
namespace {

using nlohmann::json;

// The mask, recomputed the slow way: every token's bytes fed to a copy of the matcher.
std::vector<uint8_t> brute_mask(const JsonMatcher& m, const TokenVocab& v) {
  std::vector<uint8_t> mask(size_t(v.size()), 0);
  for (int32_t id = 0; id < v.size(); ++id) {
    if (v.bytes(id).empty()) continue;
    JsonMatcher probe = m;
    mask[size_t(id)] = probe.feed(v.bytes(id));
  }
  return mask;
}

// Walks `prefix` byte by byte and compares the fast mask with the slow one after each byte.
void masks_match(const std::shared_ptr<const JsonGrammar>& g, const TokenVocab& v, const std::string& prefix, size_t stride = 1) {
  JsonMatcher m(g);
  std::vector<uint8_t> mask(size_t(v.size()));
  for (size_t i = 0; i <= prefix.size(); ++i) {
    if (i % stride == 0 || i == prefix.size()) {
      m.allowed_tokens(v, mask);
      ASSERT_EQ(mask, brute_mask(m, v)) << "after " << prefix.substr(0, i);
    }
    if (i < prefix.size()) {
      ASSERT_TRUE(m.feed(uint8_t(prefix[i]))) << prefix.substr(0, i + 1);
    }
  }
}

const char* kSchema = R"({"type":"object","properties":{
  "name":{"type":"string","maxLength":12},
  "age":{"type":"integer"},
  "score":{"type":["number","null"]},
  "tags":{"type":"array","items":{"enum":["a","b","cc"]},"maxItems":4},
  "kind":{"anyOf":[{"const":"x"},{"type":"object","properties":{"deep":{"type":"boolean"}},"required":["deep"]}]},
  "pet":{"$ref":"#/$defs/pet"}},
  "required":["name","age","kind"],
  "$defs":{"pet":{"type":"object","properties":{"species":{"enum":["cat","dog"]},"legs":{"type":"integer"}},
                  "required":["species"]}}})";

TEST(JsonMask, FixtureTokenizerMaskEqualsTokenByToken) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  const tok::Tokenizer t = tok::Tokenizer::load(dir);
  const auto v = TokenVocab::of(t);
  EXPECT_EQ(TokenVocab::of(t).get(), v.get());  // built once per tokenizer
  EXPECT_GT(v->sorted_count(), 256u);
  masks_match(JsonGrammar::any_object(), *v, "{\"a\\u00e9\": [1.5e3, true, null, \"x\xC3\xA9y\", {\"b\": -0}], \"c\": 12}");
  masks_match(JsonGrammar::from_schema(json::parse(kSchema)), *v,
              R"({"age": 31, "kind": {"deep": true}, "name": "Ada", "pet": {"legs": 4, "species": "cat"}, "score": null, "tags": ["cc", "a"]})");
}

// Random draws from the allowed tokens, leaning toward tokens that close strings and containers so
// documents end; an allowed EOS is taken half the time.
std::string sample_document(const std::shared_ptr<const JsonGrammar>& g, const TokenVocab& v, uint32_t seed, bool* done) {
  std::mt19937 rng(seed);
  JsonMatcher m(g);
  std::vector<uint8_t> mask(size_t(v.size()));
  std::string text;
  for (int step = 0; step < 3000; ++step) {
    if (m.terminated() || (m.accepting() && rng() % 2)) {
      *done = true;
      return text;
    }
    m.allowed_tokens(v, mask);
    std::vector<int32_t> all, closing;
    for (int32_t id = 0; id < v.size(); ++id) {
      if (!mask[size_t(id)]) continue;
      all.push_back(id);
      if (v.bytes(id).find_first_of("\"}],") != std::string_view::npos) closing.push_back(id);
    }
    EXPECT_FALSE(all.empty()) << "no token continues " << text;
    if (all.empty()) break;
    const auto& pool = !closing.empty() && rng() % 3 == 0 ? closing : all;
    const int32_t id = pool[rng() % pool.size()];
    EXPECT_TRUE(m.feed(v.bytes(id)));
    text += v.bytes(id);
  }
  *done = false;
  return text;
}

void sample_many(const TokenVocab& v, const std::shared_ptr<const JsonGrammar>& g, const json& schema, int seeds) {
  int finished = 0;
  for (int s = 0; s < seeds; ++s) {
    bool done = false;
    const std::string text = sample_document(g, v, uint32_t(s), &done);
    if (!done) continue;
    ++finished;
    json doc;
    ASSERT_NO_THROW(doc = json::parse(text)) << text;
    EXPECT_TRUE(testing::conforms(doc, schema)) << text;
  }
  EXPECT_GE(finished, seeds * 9 / 10);
}

TEST(JsonMask, RandomSamplingUnderTheMaskGivesValidDocuments) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/qwen2");
  const tok::Tokenizer t = tok::Tokenizer::load(dir);
  const auto v = TokenVocab::of(t);
  sample_many(*v, JsonGrammar::any_object(), json::parse(R"({"type":"object"})"), 200);
  const json schema = json::parse(kSchema);
  sample_many(*v, JsonGrammar::from_schema(schema), schema, 200);
}

TEST(JsonMask, Llama31VocabularyMasks) {
  LATHE_REQUIRE_TOKENIZER(dir, "llama3_1");
  const tok::Tokenizer t = tok::Tokenizer::load(dir);
  const auto v = TokenVocab::of(t);
  EXPECT_GT(v->sorted_count(), 127000u);
  // Every special token is out; "<|eot_id|>" never counts as JSON text.
  EXPECT_TRUE(v->bytes(*t.token_to_id("<|eot_id|>")).empty());
  masks_match(JsonGrammar::from_schema(json::parse(kSchema)), *v,
              R"({"age": 31, "kind": "x", "name": "Ad\u00e9 \"A\"", "tags": ["cc"]})", 7);
  const json schema = json::parse(kSchema);
  sample_many(*v, JsonGrammar::from_schema(schema), schema, 20);
}

// TokenConstraint draws from the k best candidates (Sampler::choose) instead of sorting the row:
// the same tokens as Sampler::sample on the masked row, under every sampler setting.
TEST(JsonMask, ConstrainedDrawEqualsFullRowSampling) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  const tok::Tokenizer t = tok::Tokenizer::load(dir);
  const auto f = make_response_format(json{{"type", "json_object"}}, t);
  const std::vector<SamplerConfig> configs = {
      {.temperature = 0.f}, {.temperature = 1.f}, {.temperature = 0.7f, .top_k = 40}, {.temperature = 1.3f, .top_p = 0.8f},
      {.temperature = 1.f, .min_p = 0.1f}, {.temperature = 0.9f, .top_k = 1000, .top_p = 0.95f, .repetition_penalty = 1.3f,
                                            .presence_penalty = 0.5f, .frequency_penalty = 0.2f}};
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.f, 3.f);
  std::vector<float> logits(size_t(t.vocab_size()) + 7);  // the model's row may be wider than the tokenizer
  for (size_t ci = 0; ci < configs.size(); ++ci) {
    for (uint64_t seed = 0; seed < 5; ++seed) {
      SamplerConfig sc = configs[ci];
      sc.seed = seed;
      Sampler fast(sc), slow(sc);
      TokenConstraint c(f);
      JsonMatcher m(f->grammar);
      std::vector<uint8_t> mask(logits.size());
      std::vector<int32_t> history = {1, 2, 3};
      for (int step = 0; step < 60 && !c.done(); ++step) {
        for (float& x : logits) x = normal(rng);
        m.allowed_tokens(*f->vocab, mask);
        std::vector<float> masked = logits;
        for (size_t i = 0; i < masked.size(); ++i)
          if (!mask[i]) masked[i] = -std::numeric_limits<float>::infinity();
        const int32_t want = slow.sample(masked, history);
        const int32_t got = c.sample(fast, logits, history, {});
        ASSERT_EQ(got, want) << "config " << ci << " seed " << seed << " step " << step;
        ASSERT_TRUE(m.feed(f->vocab->bytes(got)));
        history.push_back(got);
      }
    }
  }
}

TEST(JsonMask, ResponseFormatEntryPoint) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  const tok::Tokenizer t = tok::Tokenizer::load(dir);
  EXPECT_EQ(make_response_format(json{{"type", "text"}}, t), nullptr);
  EXPECT_NE(make_response_format(json{{"type", "json_object"}}, t), nullptr);
  const auto f = make_response_format(
      json::parse(R"({"type":"json_schema","json_schema":{"name":"x","strict":true,"schema":{"type":"object"}}})"), t);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->vocab.get(), TokenVocab::of(t).get());
  for (const char* bad : {R"({"type":"yaml"})", R"({"type":"json_schema"})", R"({"type":"json_schema","json_schema":{}})",
                          R"([1])", R"({"type":"json_schema","json_schema":{"schema":{"type":"string","pattern":"a"}}})"}) {
    try {
      make_response_format(json::parse(bad), t);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << bad;
    }
  }
}

}  // namespace
}  // namespace lathe::engine
