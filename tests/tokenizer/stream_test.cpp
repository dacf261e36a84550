// StreamDecoder: for random id sequences (broken UTF-8 included: lone byte tokens, cut
// multi-byte chars, specials, unknown ids) the concatenation of push() results plus flush()
// equals decode(all ids), and every piece is valid UTF-8.
#include <nlohmann/json.hpp>

#include <random>

#include "tok_test_util.h"
#include "tokenizer/unicode.h"

namespace lathe::tok {
namespace {

using nlohmann::json;

void check_stream(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special,
                  size_t* nonempty_pushes = nullptr) {
  StreamDecoder sd(tok, skip_special);
  std::string all;
  for (int32_t id : ids) {
    std::string piece = sd.push(id);
    ASSERT_TRUE(detail::is_valid_utf8(piece));
    if (nonempty_pushes && !piece.empty()) ++*nonempty_pushes;
    all += piece;
  }
  all += sd.flush();
  ASSERT_EQ(all, tok.decode(ids, skip_special)) << "ids " << ::testing::PrintToString(ids);
}

void fuzz_stream(const Tokenizer& tok, unsigned seed, int iters, std::vector<int32_t> favourites) {
  std::mt19937 rng(seed);
  for (int i = 0; i < iters; ++i) {
    std::vector<int32_t> ids(rng() % 24);
    for (auto& id : ids) {
      unsigned pick = rng() % 10;
      if (pick < 4 && !favourites.empty()) id = favourites[rng() % favourites.size()];
      else if (pick == 9) id = tok.vocab_size() + int32_t(rng() % 3);  // unknown: skipped like decode
      else id = int32_t(rng() % uint32_t(tok.vocab_size()));
    }
    check_stream(tok, ids, true);
    check_stream(tok, ids, false);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// A llama2-shaped tokenizer small enough to write inline: byte fallback, Prepend/Replace
// normalizer, and the Replace/ByteFallback/Fuse/Strip decoder chain.
Tokenizer tiny_llama() {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) vocab[fmt::format("<0x{:02X}>", b)] = 3 + b;
  vocab["▁"] = 259;
  vocab["a"] = 260;
  vocab["▁a"] = 261;
  json j = {
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"▁ a"}}, {"unk_token", "<unk>"},
                 {"byte_fallback", true}, {"fuse_unk", true}}},
      {"normalizer", json::parse(R"({"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},
                                  {"type":"Replace","pattern":{"String":" "},"content":"▁"}]})")},
      {"decoder", json::parse(R"({"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"▁"},"content":" "},
                               {"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]})")},
      {"added_tokens", {{{"id", 1}, {"content", "<s>"}, {"special", true}, {"normalized", false}},
                        {{"id", 2}, {"content", "</s>"}, {"special", true}, {"normalized", false}}}}};
  return Tokenizer::from_json(j.dump());
}

TEST(StreamDecoderTest, TinyLlamaBrokenBytes) {
  Tokenizer tok = tiny_llama();
  // 0xE5 0x8F 0xAB is one CJK char: nothing until the run is closed by a non-byte token.
  StreamDecoder sd(tok);
  EXPECT_EQ(sd.push(261), "a");  // "▁a" at the start: its space is stripped, as decode does
  EXPECT_EQ(sd.push(3 + 0xE5), "");
  EXPECT_EQ(sd.push(3 + 0x8F), "");
  EXPECT_EQ(sd.push(3 + 0xAB), "");
  EXPECT_EQ(sd.push(261), "\xE5\x8F\xAB a");
  EXPECT_EQ(sd.flush(), "");
  // A run that turns invalid replaces every byte with U+FFFD, exactly as decode does.
  check_stream(tok, {3 + 'A', 3 + 0xFF, 260}, true);
  check_stream(tok, {259, 259, 260, 1, 261, 3 + 0xE5, 2}, false);
  std::vector<int32_t> fav;
  for (int b = 0x80; b < 0x100; b += 7) fav.push_back(3 + b);
  fav.push_back(259);
  fuzz_stream(tok, 5, 3000, fav);
}

class StreamFixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(StreamFixtureTest, RandomIdsMatchDecode) {
  const std::string name = GetParam();
  LATHE_REQUIRE_TOKENIZER(dir, name);
  Tokenizer tok = Tokenizer::load(dir);
  // Favour ids of byte tokens and short pieces, where UTF-8 gets cut.
  std::vector<int32_t> fav;
  for (int32_t id = 0; id < 600 && id < tok.vocab_size(); ++id) fav.push_back(id);
  if (auto e = tok.eos_id()) fav.push_back(*e);
  fuzz_stream(tok, 42, 600, fav);
}

TEST_P(StreamFixtureTest, RealTextStreamsIncrementally) {
  const std::string name = GetParam();
  LATHE_REQUIRE_TOKENIZER(dir, name);
  Tokenizer tok = Tokenizer::load(dir);
  const std::string text =
      "  Hello, world! \xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\xA4\x96\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD "
      "caf\xC3\xA9  na\xC3\xAFve\n\n\tdef f(x):\n    return x ** 2\n";
  auto ids = tok.encode(text, true);
  size_t nonempty = 0;
  check_stream(tok, ids, true, &nonempty);
  check_stream(tok, ids, false);
  EXPECT_GT(nonempty, ids.size() / 3) << "stream output is held back too much";
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, StreamFixtureTest,
                         ::testing::Values("llama2", "llama3_1", "qwen3", "deepseek_v3", "gemma3", "gptoss"));

TEST(StreamDecoderTest, SharedModelText) {
  LATHE_REQUIRE_SHARED(ref, "models/ref-llama-14m");
  Tokenizer tok = Tokenizer::load(ref);
  auto ids = tok.encode("And God said, Let there be light: and there was light. \xE2\x82\xAC\xF0\x9F\x98\x80", true);
  check_stream(tok, ids, true);
  std::vector<int32_t> fav;
  for (int32_t id = 0; id < 300; ++id) fav.push_back(id);
  fuzz_stream(tok, 11, 500, fav);
}

}  // namespace
}  // namespace lathe::tok
