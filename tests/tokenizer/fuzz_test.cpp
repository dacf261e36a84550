// Seeded differential fuzzing: random mixed-script strings (whitespace runs, digits, emoji,
// special-token text) must round-trip decode(encode(s)) == s through every byte-level tokenizer,
// and through the SentencePiece-style ones (llama2, ref-llama-14m) with special-token text
// parsed as plain text (their decoder would otherwise add a space after a special token).
#include <random>

#include "tok_test_util.h"

namespace lathe::tok {
namespace {

std::string random_text(std::mt19937& rng) {
  static const std::vector<std::string> kPieces = {
      "hello", "World", "the", " ", "  ", "     ", "\t", "\n", "\n\n", "\r\n", " \n ", "1", "123",
      "4567890", "3.14", "'s", "'LL", "don't", "!", "?!", "...", ",", "\xE2\x80\x94", "\xC2\xAB", "_x_",
      "\xE4\xBD\xA0\xE5\xA5\xBD", "\xE4\xB8\x96\xE7\x95\x8C", "\xE3\x81\x93\xE3\x82\x93\xE3\x81\xAB\xE3\x81\xA1\xE3\x81\xAF",
      "\xEC\x95\x88\xEB\x85\x95", "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82", "\xCE\x93\xCE\xB5\xCE\xB9\xCE\xAC",
      "\xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7", "\xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D",
      "\xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8\xE0\xA5\x8D\xE0\xA4\xA4\xE0\xA5\x87", "\xE0\xB8\xAA\xE0\xB8\xA7\xE0\xB8\xB1\xE0\xB8\xAA",
      "\xF0\x9F\xA4\x96", "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD", "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7",
      "\xF0\x9F\x87\xBA\xF0\x9F\x87\xB8", "\xC3\xA9", "\xC3\xB1", "\xC3\x9F", "\xEF\xAC\x81", "\xC2\xA0", "\xE2\x80\x8B",
      "\xE2\x88\x91\xE2\x88\xAB", "<s>", "</s>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|eot_id|>",
      "<|begin_of_text|>", "x", "$", "\x01", "\x7f", "~~~", "ABCdef", "  leading"};
  std::string s;
  int n = int(rng() % 14);
  for (int k = 0; k < n; ++k) s += kPieces[rng() % kPieces.size()];
  return s;
}

void round_trip(const Tokenizer& tok, const std::string& name, bool parse_special, int iters, unsigned seed) {
  std::mt19937 rng(seed);
  int failures = 0;
  for (int i = 0; i < iters && failures < 5; ++i) {
    std::string s = random_text(rng);
    auto ids = tok.encode(s, false, parse_special);
    std::string back = tok.decode(ids);
    if (back != s) {
      ++failures;
      ADD_FAILURE() << name << " seed " << seed << " iter " << i << ": decode(encode(s)) != s\n  s    = "
                    << ::testing::PrintToString(s) << "\n  back = " << ::testing::PrintToString(back);
    }
  }
}

class RoundTripTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RoundTripTest, DecodeEncodeIsIdentity) {
  const std::string name = GetParam();
  LATHE_REQUIRE_TOKENIZER(dir, name);
  Tokenizer tok = Tokenizer::load(dir);
  bool sentencepiece_style = name == "llama2";
  round_trip(tok, name, !sentencepiece_style, 400, 1234);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, RoundTripTest,
                         ::testing::Values("llama2", "llama3_1", "qwen3", "deepseek_v3", "gemma3", "gptoss"));

TEST(RoundTripTest, SharedModels) {
  LATHE_REQUIRE_SHARED(fixture, "fixtures/models/llama");
  round_trip(Tokenizer::load(fixture), "fixture llama", true, 400, 99);
  LATHE_REQUIRE_SHARED(ref, "models/ref-llama-14m");
  round_trip(Tokenizer::load(ref), "ref-llama-14m", false, 400, 7);
}

TEST(RoundTripTest, InvalidUtf8InputIsReplaced) {
  LATHE_REQUIRE_SHARED(fixture, "fixtures/models/llama");
  Tokenizer tok = Tokenizer::load(fixture);
  EXPECT_EQ(tok.decode(tok.encode("a\xFF" "b")), "a\xEF\xBF\xBD" "b");
}

}  // namespace
}  // namespace lathe::tok
