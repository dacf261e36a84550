// Byte-exactness against the Hugging Face tokenizers library: the shared fixture cases
// (tokenizers 0.23.2 output), the ref model's 1 MB single-word encode, and the fixture model's
// golden prompt ids.
#include <nlohmann/json.hpp>

#include <chrono>

#include "tok_test_util.h"

namespace lathe::tok {
namespace {

using nlohmann::json;
using testing::read_text;

class FixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureTest, MatchesHuggingFaceExactly) {
  const std::string name = GetParam();
  LATHE_REQUIRE_TOKENIZER(dir, name);
  LATHE_REQUIRE_SHARED(cases_path, "fixtures/tokenizers/" + name + ".jsonl");
  Tokenizer tok = Tokenizer::load(dir);
  std::istringstream lines(read_text(cases_path));
  std::string line;
  int n = 0;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    json c = json::parse(line);
    const std::string text = c["text"];
    SCOPED_TRACE(name + " case " + std::to_string(n) + ": " + c["text"].dump());
    auto ids = tok.encode(text, false);
    auto with_special = tok.encode(text, true);
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(with_special, c["ids_with_special"].get<std::vector<int32_t>>());
    EXPECT_EQ(tok.decode(c["ids"].get<std::vector<int32_t>>()), c["decode"].get<std::string>());
    EXPECT_EQ(tok.decode(c["ids_with_special"].get<std::vector<int32_t>>(), true),
              c["decode_skip_special"].get<std::string>());
    ++n;
  }
  EXPECT_GT(n, 0) << "no cases in " << cases_path;
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, FixtureTest,
                         ::testing::Values("llama2", "llama3_1", "qwen3", "deepseek_v3"));

TEST(FixtureTest, SpecialTokenIdsFromConfig) {
  LATHE_REQUIRE_TOKENIZER(dir, "llama3_1");
  Tokenizer tok = Tokenizer::load(dir);
  EXPECT_EQ(tok.bos_id(), 128000);
  EXPECT_EQ(tok.eos_id(), 128009);  // tokenizer_config eos_token <|eot_id|>
  EXPECT_EQ(tok.bos_token(), "<|begin_of_text|>");
  EXPECT_TRUE(tok.is_special(128009));
  EXPECT_FALSE(tok.is_special(1000));
  EXPECT_EQ(tok.vocab_size(), 128256);
  EXPECT_EQ(tok.token_to_id("<|eot_id|>"), 128009);
  EXPECT_EQ(tok.id_to_token(128009), "<|eot_id|>");
  // parse_special=false leaves special-token text to the model.
  auto plain = tok.encode("<|eot_id|>", false, false);
  EXPECT_GT(plain.size(), 1u);
  EXPECT_EQ(tok.decode(plain), "<|eot_id|>");
}

TEST(RefModelTest, WholeValTextIsOneWordOf339072Tokens) {
  LATHE_REQUIRE_SHARED(model_dir, "models/ref-llama-14m");
  LATHE_REQUIRE_SHARED(val, "data/text/val.txt");
  Tokenizer tok = Tokenizer::load(model_dir);
  const std::string text = read_text(val);
  auto t0 = std::chrono::steady_clock::now();
  auto ids = tok.encode(text, false);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[bench] ref-llama-14m: val.txt %.2f MB as one word -> %zu tokens in %.3f s (%.2f MB/s)\n",
              text.size() / 1e6, ids.size(), s, text.size() / 1e6 / s);
  EXPECT_EQ(ids.size(), 339072u);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
}

TEST(FixtureModelTest, GoldenPromptIds) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  Tokenizer tok = Tokenizer::load(dir);
  json golden = json::parse(read_text(dir / "golden.json"));
  int n = 0;
  for (const auto& c : golden["cases"]) {
    SCOPED_TRACE(c["text"].dump());
    EXPECT_EQ(tok.encode(c["text"].get<std::string>(), true), c["ids"].get<std::vector<int32_t>>());
    ++n;
  }
  EXPECT_GT(n, 0);
  EXPECT_EQ(tok.vocab_size(), 512);
  EXPECT_EQ(tok.bos_id(), 0);
  EXPECT_EQ(tok.eos_id(), 1);
}

TEST(LoadTest, ErrorsSayWhatIsWrong) {
  try {
    Tokenizer::load("/nonexistent/dir");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos);
  }
  try {
    Tokenizer::from_json("{not json", "");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
  }
  try {
    Tokenizer::from_json(R"({"model": {"type": "Magic", "vocab": {}}})", "");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("Magic"), std::string::npos);
  }
  try {
    Tokenizer::from_json(R"({"normalizer": {"type": "Frobnicate"}, "model": {"type": "BPE", "vocab": {}, "merges": []}})", "");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("Frobnicate"), std::string::npos);
  }
}

}  // namespace
}  // namespace lathe::tok
