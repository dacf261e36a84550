// Tokenizer::token_bytes: the bytes of encode(text)'s tokens, concatenated, are the text itself
// (SentencePiece-style tokenizers: with the space their normalizer put in front), byte-fallback and
// byte-level tokens included, even where one token holds part of a UTF-8 character.
#include <gtest/gtest.h>

#include "tok_test_util.h"

namespace lathe::tok {
namespace {

const char* kTexts[] = {
    "Hello, world! {\"key\": [1, 2.5, null]}\n\ttabs and\nnewlines",
    "caf\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD emoji \xE2\x82\xAC",
    "   leading spaces and trailing   ",
};

std::string concat(const Tokenizer& t, const std::vector<int32_t>& ids) {
  std::string out;
  for (int32_t id : ids) out += t.token_bytes(id).value();
  return out;
}

void check_roundtrip(const Tokenizer& t, bool sentencepiece) {
  for (const char* text : kTexts) {
    const std::string got = concat(t, t.encode(text));
    if (sentencepiece) EXPECT_EQ(got, std::string(" ") + text);
    else EXPECT_EQ(got, text);
  }
}

TEST(TokenBytes, ByteLevelBpe) {
  LATHE_REQUIRE_TOKENIZER(dir, "llama3_1");
  const Tokenizer t = Tokenizer::load(dir);
  check_roundtrip(t, false);
  // A token holding one byte of a multi-byte character keeps that raw byte (decode() would show U+FFFD).
  const auto ids = t.encode("\xF0\x9F\x98\x80");
  ASSERT_GT(ids.size(), 1u);
  EXPECT_LT(t.token_bytes(ids[0])->size(), 4u);
  EXPECT_FALSE(t.token_bytes(t.vocab_size() + 5).has_value());
  EXPECT_EQ(*t.token_bytes(*t.token_to_id("<|eot_id|>")), "<|eot_id|>");
}

TEST(TokenBytes, SentencePieceWithByteFallback) {
  LATHE_REQUIRE_TOKENIZER(dir, "llama2");
  const Tokenizer t = Tokenizer::load(dir);
  check_roundtrip(t, true);
  EXPECT_EQ(*t.token_bytes(*t.token_to_id("<0x0A>")), "\n");
  EXPECT_EQ(*t.token_bytes(*t.token_to_id("<0xE2>")), "\xE2");
  EXPECT_EQ(*t.token_bytes(*t.token_to_id("\xE2\x96\x81the")), " the");  // the space a first token loses
}

TEST(TokenBytes, FixtureModelTokenizer) {
  const auto dir = ::lathe::testing::shared_path("fixtures/models/llama");
  if (dir.empty()) GTEST_SKIP() << "shared fixture missing: fixtures/models/llama";
  const Tokenizer t = Tokenizer::load(dir);
  for (const char* text : kTexts) EXPECT_EQ(concat(t, t.encode(text)), text);
}

}  // namespace
}  // namespace lathe::tok
