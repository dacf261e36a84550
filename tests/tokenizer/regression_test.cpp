// One test per bug the differential test (differential_test.cpp) found, with the input that
// exposed it and the reference library's output (HF tokenizers 0.23.2) as the expectation.
#include "tok_test_util.h"
#include "tokenizer/regex.h"

namespace lathe::tok {
namespace {

using Matches = std::vector<std::pair<size_t, size_t>>;

// Bug: PCRE2 10.42 has Unicode 14 tables, HF's Oniguruma Unicode 16, so chars assigned since
// (here U+31350, CJK Ext. H, a letter) fell outside \p{L} and split differently.
TEST(UnicodeDeltaTest, RegexClassesKnowCharsAfterUnicode14) {
  const std::string ext_h = "\xF0\xB1\x8D\x90";            // U+31350, Lo since Unicode 15
  const std::string shaking_face = "\xF0\x9F\xAB\xA8";     // U+1FAE8, So since Unicode 15
  const std::string garay_zero = "\xF0\x90\xB5\x80";       // U+10D40, Nd since Unicode 16
  using detail::Regex;
  EXPECT_EQ(Regex(R"(\p{L}+)").find_all("a" + ext_h + "b"), (Matches{{0, 6}}));
  EXPECT_EQ(Regex(R"(\pL+)").find_all(ext_h), (Matches{{0, 4}}));
  EXPECT_EQ(Regex(R"(\p{Lo})").find_all(ext_h), (Matches{{0, 4}}));
  EXPECT_EQ(Regex(R"([^\s\p{L}\p{N}]+)").find_all("<" + ext_h + ">"), (Matches{{0, 1}, {5, 6}}));
  EXPECT_EQ(Regex(R"(\P{L}+)").find_all("<" + ext_h + ">"), (Matches{{0, 1}, {5, 6}}));
  EXPECT_EQ(Regex(R"(\p{S}+)").find_all("a" + shaking_face), (Matches{{1, 5}}));
  EXPECT_EQ(Regex(R"([\p{P}\p{S}]+)").find_all(shaking_face + "!"), (Matches{{0, 5}}));
  EXPECT_EQ(Regex(R"(\d+)").find_all(garay_zero + garay_zero + "1"), (Matches{{0, 9}}));
  EXPECT_EQ(Regex(R"(\p{N}{1,3})").find_all(garay_zero + garay_zero + garay_zero + garay_zero),
            (Matches{{0, 12}, {12, 16}}));
  EXPECT_EQ(Regex(R"(\w+)").find_all("x" + ext_h), (Matches{{0, 5}}));
  EXPECT_EQ(Regex(R"(\W+)").find_all("x" + ext_h + "!"), (Matches{{5, 6}}));
  // Escapes and literal brackets around the rewritten items keep their meaning.
  EXPECT_EQ(Regex(R"([\]\p{L}]+|\\p)").find_all("]" + ext_h + "\\p"), (Matches{{0, 5}, {5, 7}}));
  EXPECT_EQ(Regex(R"(\Q\p{L}\E)").find_all("\\p{L}" + ext_h), (Matches{{0, 5}}));
  // Text without such chars takes the original pattern: same matches as before.
  EXPECT_EQ(Regex(R"( ?\p{L}+| ?\p{N}+)").find_all("ab 12"), (Matches{{0, 2}, {2, 5}}));
}

TEST(UnicodeDeltaTest, TokenizersMatchReference) {
  // U+3154E (Ext. H) "<s> ok" U+1FAE8 "!! " U+10D40..U+10D43 (four Garay digits).
  const std::string text =
      "\xF0\xB1\x95\x8E<s> ok\xF0\x9F\xAB\xA8!! \xF0\x90\xB5\x80\xF0\x90\xB5\x81\xF0\x90\xB5\x82\xF0\x90\xB5\x83";
  {
    LATHE_REQUIRE_TOKENIZER(dir, "deepseek_v3");
    EXPECT_EQ(Tokenizer::load(dir).encode(text),
              (std::vector<int32_t>{175, 112, 246, 239, 114355, 32, 9109, 3574, 107, 104, 6909, 223, 120577, 116,
                                    225, 120577, 116, 226, 120577, 116, 227, 120577, 116, 228}));
  }
  {
    LATHE_REQUIRE_TOKENIZER(dir, "gptoss");
    EXPECT_EQ(Tokenizer::load(dir).encode(text),
              (std::vector<int32_t>{172, 109, 243, 236, 101950, 29, 4763, 4103, 104, 101, 2618, 220, 172, 238,
                                    113, 222, 172, 238, 113, 223, 172, 238, 113, 224, 172, 238, 113, 225}));
  }
}

}  // namespace
}  // namespace lathe::tok
