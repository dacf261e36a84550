// Models (BPE, WordPiece, Unigram, WordLevel) and added-token matching on tiny inline
// tokenizer.json files. Expected ids are derived by hand from HF's documented algorithms (each
// case says which rule it exercises).
#include <nlohmann/json.hpp>

#include "tok_test_util.h"

namespace lathe::tok {
namespace {

using I = std::vector<int32_t>;
using nlohmann::json;

Tokenizer from_model(json model, json extra = json::object()) {
  json j = extra;
  j["model"] = std::move(model);
  return Tokenizer::from_json(j.dump());
}

TEST(BpeTest, LowestRankFirstLeftmostOnTies) {
  json vocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}, {"aa", 6}};
  // "b c" ranks before "a b": bc forms first, then "a bc".
  auto t1 = from_model({{"type", "BPE"}, {"vocab", vocab}, {"merges", {"b c", "a b", "a bc", "a a"}}});
  EXPECT_EQ(t1.encode("abc"), (I{5}));
  // "a b" first: ab, then "ab c" (array-form merges).
  auto t2 = from_model({{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({json::array({"a", "b"}), json::array({"b", "c"}), json::array({"ab", "c"}), json::array({"a", "a"})})}});
  EXPECT_EQ(t2.encode("abc"), (I{5}));
  // Equal ranks everywhere ("a a" thrice): the leftmost pair merges first.
  EXPECT_EQ(t2.encode("aaa"), (I{6, 0}));
  EXPECT_EQ(t2.encode("aaaa"), (I{6, 6}));
  // A missing merge leaves symbols apart; without unk_token an unknown char is dropped.
  EXPECT_EQ(t2.encode("cxa"), (I{2, 0}));
}

TEST(BpeTest, ByteFallbackUnkFuse) {
  json vocab = {{"<unk>", 0}, {"a", 1}, {"<0xC3>", 2}, {"<0xA9>", 3}};
  json m = {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}, {"unk_token", "<unk>"}};
  m["byte_fallback"] = true;
  EXPECT_EQ(from_model(m).encode("a\xC3\xA9"), (I{1, 2, 3}));  // é -> its two byte tokens
  // A char whose bytes are not all in the vocab falls to <unk>; fuse_unk joins a run of them.
  m["fuse_unk"] = true;
  EXPECT_EQ(from_model(m).encode("a\xE2\x82\xAC\xE2\x82\xAC" "a"), (I{1, 0, 1}));
  m["fuse_unk"] = false;
  EXPECT_EQ(from_model(m).encode("a\xE2\x82\xAC\xE2\x82\xAC" "a"), (I{1, 0, 0, 1}));
}

TEST(BpeTest, ContinuingPrefixSuffixAndIgnoreMerges) {
  // continuing_subword_prefix: non-first chars carry "##", and "a ##b" merges into "ab".
  json vocab = {{"a", 0}, {"##b", 1}, {"ab", 2}, {"##c", 3}, {"abc", 4}};
  auto t = from_model({{"type", "BPE"}, {"vocab", vocab}, {"merges", {"a ##b", "ab ##c"}},
                       {"continuing_subword_prefix", "##"}});
  EXPECT_EQ(t.encode("abc"), (I{4}));
  EXPECT_EQ(t.encode("ab"), (I{2}));
  // end_of_word_suffix: the last char carries "</w>".
  json v2 = {{"a", 0}, {"b</w>", 1}, {"ab</w>", 2}};
  auto t2 = from_model({{"type", "BPE"}, {"vocab", v2}, {"merges", {"a b</w>"}}, {"end_of_word_suffix", "</w>"}});
  EXPECT_EQ(t2.encode("ab"), (I{2}));
  // ignore_merges: a whole word found in the vocab wins even with no merge path to it.
  json v3 = {{"a", 0}, {"b", 1}, {"c", 2}, {"abc", 3}};
  EXPECT_EQ(from_model({{"type", "BPE"}, {"vocab", v3}, {"merges", json::array()}, {"ignore_merges", true}}).encode("abc"),
            (I{3}));
  EXPECT_EQ(from_model({{"type", "BPE"}, {"vocab", v3}, {"merges", json::array()}}).encode("abc"), (I{0, 1, 2}));
}

TEST(BpeTest, BadMergeIsAFormatError) {
  json vocab = {{"a", 0}, {"b", 1}};
  EXPECT_THROW(from_model({{"type", "BPE"}, {"vocab", vocab}, {"merges", {"a b"}}}), Error);  // "ab" missing
  EXPECT_THROW(from_model({{"type", "BPE"}, {"vocab", vocab}, {"merges", {"a b c"}}}), Error);
}

TEST(WordPieceTest, GreedyLongestMatch) {
  // wordpiece: longest prefix, then "##"-prefixed continuations; any gap -> the whole word is [UNK].
  json vocab = {{"[UNK]", 0}, {"un", 1}, {"##aff", 2}, {"##able", 3}, {"a", 4}, {"##a", 5}};
  auto t = from_model({{"type", "WordPiece"}, {"vocab", vocab}, {"unk_token", "[UNK]"},
                       {"continuing_subword_prefix", "##"}, {"max_input_chars_per_word", 5}},
                      {{"pre_tokenizer", {{"type", "WhitespaceSplit"}}},
                       {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}}});
  EXPECT_EQ(t.encode("un aa"), (I{1, 4, 5}));
  EXPECT_EQ(t.encode("unaffable"), (I{0}));  // 9 chars > max_input_chars_per_word 5
  EXPECT_EQ(t.encode("unx"), (I{0}));
  EXPECT_EQ(t.decode(I{1, 4, 5}), "un aa");
}

TEST(UnigramTest, ViterbiUnkAndByteFallback) {
  json vocab = json::array({{"<unk>", 0.0}, {"a", -1.0}, {"b", -2.0}, {"ab", -1.5}, {"c", -3.0}, {"<0x78>", -5.0}});
  json m = {{"type", "Unigram"}, {"unk_id", 0}, {"vocab", vocab}};
  auto t = from_model(m);
  EXPECT_EQ(t.encode("ab"), (I{3}));        // ab (-1.5) beats a + b (-3)
  EXPECT_EQ(t.encode("abc"), (I{3, 4}));
  EXPECT_EQ(t.encode("ayyb"), (I{1, 0, 2}));  // unknown chars fuse into one <unk>
  m["byte_fallback"] = true;
  EXPECT_EQ(from_model(m).encode("axa"), (I{1, 5, 1}));  // unknown 'x' -> <0x78>
  EXPECT_EQ(from_model(m).encode("aya"), (I{1, 0, 1}));  // no <0x79>: stays <unk>
}

TEST(WordLevelTest, Lookup) {
  json vocab = {{"[UNK]", 0}, {"hello", 1}, {"world", 2}};
  auto t = from_model({{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", "[UNK]"}},
                      {{"pre_tokenizer", {{"type", "Whitespace"}}}});
  EXPECT_EQ(t.encode("hello there world"), (I{1, 0, 2}));
  EXPECT_EQ(t.decode(I{1, 0, 2}), "hello [UNK] world");  // no decoder: tokens joined by spaces
}

// added_vocabulary.rs semantics: lstrip/rstrip swallow whitespace, single_word needs word
// boundaries, normalized tokens match the normalized text, special ones can be left as text.
Tokenizer added_tokenizer() {
  json vocab = {{"[UNK]", 0}, {"hello", 1}, {"world", 2}, {"hellotok", 5}};
  json j = {
      {"model", {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", "[UNK]"}}},
      {"normalizer", {{"type", "Lowercase"}}},
      {"pre_tokenizer", {{"type", "WhitespaceSplit"}}},
      {"added_tokens",
       {{{"id", 3}, {"content", "<mask>"}, {"lstrip", true}, {"rstrip", false}, {"single_word", false},
         {"normalized", false}, {"special", true}},
        {{"id", 4}, {"content", "tok"}, {"lstrip", false}, {"rstrip", true}, {"single_word", true},
         {"normalized", false}, {"special", false}},
        {{"id", 6}, {"content", "MyTok"}, {"lstrip", false}, {"rstrip", false}, {"single_word", false},
         {"normalized", true}, {"special", false}}}}};
  return Tokenizer::from_json(j.dump());
}

TEST(AddedTokensTest, StripSingleWordNormalizedSpecial) {
  auto t = added_tokenizer();
  EXPECT_EQ(t.encode("hello <mask> world"), (I{1, 3, 2}));
  EXPECT_EQ(t.encode("hellotok world"), (I{5, 2}));  // "tok" inside a word is not single_word
  EXPECT_EQ(t.encode("hello tok   world"), (I{1, 4, 2}));
  EXPECT_EQ(t.encode("hello MYTOK world"), (I{1, 6, 2}));  // matched after lowercasing
  EXPECT_EQ(t.encode("hello <mask> world", false, false), (I{1, 0, 2}));  // special text as text
  EXPECT_EQ(t.encode("hello tok world", false, false), (I{1, 4, 2}));     // non-special still matched
  EXPECT_EQ(t.decode(I{1, 3, 2}), "hello <mask> world");
  EXPECT_EQ(t.decode(I{1, 3, 2}, true), "hello world");
  EXPECT_TRUE(t.is_special(3));
  EXPECT_FALSE(t.is_special(4));
  EXPECT_EQ(t.vocab_size(), 7);
  EXPECT_EQ(t.token_to_id("<mask>"), 3);
  EXPECT_EQ(t.id_to_token(6), "MyTok");
  EXPECT_THROW(t.id_to_token(99), Error);
  EXPECT_FALSE(t.bos_id().has_value());
  EXPECT_EQ(t.bos_token(), "");
}

TEST(AddedTokensTest, LongestMatchWins) {
  json vocab = {{"[UNK]", 0}};
  json j = {{"model", {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", "[UNK]"}}},
            {"added_tokens",
             {{{"id", 1}, {"content", "<a>"}, {"special", true}, {"normalized", false}},
              {{"id", 2}, {"content", "<a><b>"}, {"special", true}, {"normalized", false}}}}};
  auto t = Tokenizer::from_json(j.dump());
  EXPECT_EQ(t.encode("<a><b><a>"), (I{2, 1}));
}

TEST(ConfigTest, BosEosFromConfig) {
  json vocab = {{"<s>", 0}, {"</s>", 1}, {"x", 2}};
  json j = {{"model", {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", "x"}}}};
  json cfg = {{"bos_token", {{"content", "<s>"}, {"__type", "AddedToken"}}}, {"eos_token", "</s>"},
              {"add_bos_token", true}};
  auto t = Tokenizer::from_json(j.dump(), cfg.dump());
  EXPECT_EQ(t.bos_id(), 0);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_EQ(t.bos_token(), "<s>");
  EXPECT_EQ(t.eos_token(), "</s>");
  EXPECT_TRUE(t.add_bos_token());
  EXPECT_FALSE(t.add_eos_token());
}

}  // namespace
}  // namespace lathe::tok
