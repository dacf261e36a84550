// Unit tests of normalizers, pre-tokenizers, decoders and post-processors built from small
// hand-written JSON configs. Expected values come from the HF tokenizers sources' own unit tests
// (file named per case) or are derived by hand from the documented semantics (said so).
#include <nlohmann/json.hpp>

#include "tok_test_util.h"
#include "tokenizer/components.h"

namespace lathe::tok::detail {
namespace {

std::string norm(const char* config, std::string s) {
  auto n = make_normalizer(json::parse(config));
  n->normalize(s);
  return s;
}

std::vector<std::string> pre(const char* config, const std::string& s, bool at_start = true) {
  auto p = make_pre_tokenizer(json::parse(config));
  std::vector<Piece> pieces{{s, at_start}};
  p->pre_tokenize(pieces);
  std::vector<std::string> out;
  for (auto& q : pieces) out.push_back(q.text);
  return out;
}

std::string dec(const char* config, std::vector<std::string> tokens) {
  auto d = make_decoder(json::parse(config));
  d->decode_chain(tokens);
  std::string out;
  for (auto& t : tokens) out += t;
  return out;
}

using V = std::vector<std::string>;

// Base64 of a SentencePiece charsmap blob: u32 trie size, the darts-clone units, the strings.
std::string charsmap_base64(const std::vector<uint32_t>& units, const std::string& strings) {
  std::string blob;
  auto put = [&](uint32_t v) {
    for (int k = 0; k < 4; ++k) blob += char((v >> (8 * k)) & 0xFF);
  };
  put(uint32_t(units.size() * 4));
  for (uint32_t u : units) put(u);
  blob += strings;
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < blob.size(); i += 3) {
    uint32_t v = uint32_t(uint8_t(blob[i])) << 16;
    if (i + 1 < blob.size()) v |= uint32_t(uint8_t(blob[i + 1])) << 8;
    if (i + 2 < blob.size()) v |= uint32_t(uint8_t(blob[i + 2]));
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < blob.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += i + 2 < blob.size() ? kAlphabet[v & 63] : '=';
  }
  return out;
}

TEST(NormalizerTest, PrependAndReplace) {
  // prepend.rs: prepends to non-empty strings only.
  EXPECT_EQ(norm(R"({"type":"Prepend","prepend":"▁"})", "hey"), "▁hey");
  EXPECT_EQ(norm(R"({"type":"Prepend","prepend":"▁"})", ""), "");
  EXPECT_EQ(norm(R"({"type":"Replace","pattern":{"String":" "},"content":"▁"})", "a b  c"), "a▁b▁▁c");
  // replace.rs test: Regex "\s+" -> " " collapses runs.
  EXPECT_EQ(norm(R"({"type":"Replace","pattern":{"Regex":"\\s+"},"content":" "})", "a   b\t\tc"), "a b c");
  // The llama2 / ref-llama normalizer.
  EXPECT_EQ(norm(R"({"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},
                  {"type":"Replace","pattern":{"String":" "},"content":"▁"}]})", "Hello world"),
            "▁Hello▁world");
}

TEST(NormalizerTest, UnicodeForms) {
  // Unicode standard decompositions / compositions.
  EXPECT_EQ(norm(R"({"type":"NFC"})", "e\xCC\x81"), "\xC3\xA9");
  EXPECT_EQ(norm(R"({"type":"NFD"})", "\xC3\xA9"), "e\xCC\x81");
  EXPECT_EQ(norm(R"({"type":"NFKC"})", "\xEF\xAC\x81"), "fi");      // U+FB01 ligature
  EXPECT_EQ(norm(R"({"type":"NFKD"})", "\xE2\x91\xA0"), "1");       // circled one
  EXPECT_EQ(norm(R"({"type":"NFC"})", std::string("a\0b", 3)), std::string("a\0b", 3));
}

TEST(NormalizerTest, LowercaseStripAccents) {
  // Rust char::to_lowercase, per char: U+0130 becomes "i" + U+0307.
  EXPECT_EQ(norm(R"({"type":"Lowercase"})", "HeLLo \xC3\x80 \xC4\xB0"), "hello \xC3\xA0 i\xCC\x87");
  // strip.rs: Strip left/right of Unicode whitespace.
  EXPECT_EQ(norm(R"({"type":"Strip","strip_left":true,"strip_right":true})", "  hi \t"), "hi");
  EXPECT_EQ(norm(R"({"type":"Strip","strip_left":true,"strip_right":false})", "  hi \t"), "hi \t");
  EXPECT_EQ(norm(R"({"type":"Strip","strip_left":false,"strip_right":true})", "\xC2\xA0hi\xE3\x80\x80"), "\xC2\xA0hi");
  // strip.rs/unicode.rs: NFD then StripAccents removes the combining marks.
  EXPECT_EQ(norm(R"({"type":"Sequence","normalizers":[{"type":"NFD"},{"type":"StripAccents"}]})", "caf\xC3\xA9"),
            "cafe");
}

TEST(NormalizerTest, BertNormalizer) {
  // bert.rs semantics, by hand: clean_text drops \0 and maps \t to ' '; CJK chars get padded
  // with spaces; strip_accents follows lowercase.
  EXPECT_EQ(norm(R"({"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,
                  "strip_accents":null,"lowercase":true})",
                 std::string("H\xC3\xA9llo\tWORLD\0 \xE4\xBD\xA0\xE5\xA5\xBD", 20)),
            "hello world  \xE4\xBD\xA0  \xE5\xA5\xBD ");
  EXPECT_EQ(norm(R"({"type":"BertNormalizer","lowercase":false})", "H\xC3\xA9llo"), "H\xC3\xA9llo");
}

TEST(NormalizerTest, PrecompiledCharsmap) {
  // A hand-built SentencePiece charsmap (darts-clone double array) with one rule, "A" -> "a":
  // units[0] = offset 1; units[1 ^ 'A'] = label 'A' | has_leaf | offset 1; units[64 ^ 1] = leaf
  // value 0 (the index of "a\0" in the replacement blob). Other chars pass through.
  std::vector<uint32_t> units(68, 0);
  units[0] = 1u << 10;                          // offset 1
  units[1 ^ 'A'] = (1u << 10) | (1u << 8) | 'A';  // label 'A', has_leaf, offset 1
  units[64 ^ 1] = 1u << 31;                     // leaf: value 0
  std::string cfg = R"({"type":"Precompiled","precompiled_charsmap":")" +
                    charsmap_base64(units, std::string("a\0", 2)) + "\"}";
  EXPECT_EQ(norm(cfg.c_str(), "ABA cab"), "aBa cab");
  EXPECT_EQ(norm(R"({"type":"Precompiled","precompiled_charsmap":""})", "ABA"), "ABA");
}

TEST(PreTokenizerTest, SplitBehaviors) {
  // normalizer.rs split tests on "the-final--countdown" with pattern '-'.
  const std::string s = "the-final--countdown";
  auto split = [&](const char* beh) {
    std::string cfg = std::string(R"({"type":"Split","pattern":{"String":"-"},"invert":false,"behavior":")") + beh + "\"}";
    return pre(cfg.c_str(), s);
  };
  EXPECT_EQ(split("Removed"), (V{"the", "final", "countdown"}));
  EXPECT_EQ(split("Isolated"), (V{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(split("MergedWithPrevious"), (V{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(split("MergedWithNext"), (V{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(split("Contiguous"), (V{"the", "-", "final", "--", "countdown"}));
  // split.rs: invert keeps the matches and turns the gaps into delimiters.
  EXPECT_EQ(pre(R"({"type":"Split","pattern":{"Regex":"\\w+"},"behavior":"Removed","invert":true})", "Hey, friend!"),
            (V{"Hey", "friend"}));
}

TEST(PreTokenizerTest, ByteLevel) {
  // byte_level.rs pre_tokenization test.
  EXPECT_EQ(pre(R"({"type":"ByteLevel","add_prefix_space":true,"use_regex":true})",
                "Hello my friend, how is your day going?"),
            (V{"ĠHello", "Ġmy", "Ġfriend", ",", "Ġhow", "Ġis", "Ġyour", "Ġday", "Ġgoing", "?"}));
  // Bytes outside the printable table map to U+0100+ (newline -> Ċ, space -> Ġ).
  EXPECT_EQ(pre(R"({"type":"ByteLevel","add_prefix_space":false,"use_regex":false})", "a \n"), (V{"aĠĊ"}));
}

TEST(PreTokenizerTest, Metaspace) {
  // metaspace.rs tests.
  const char* cfg = R"({"type":"Metaspace","replacement":"▁","prepend_scheme":"always","split":true})";
  EXPECT_EQ(pre(cfg, "Hey friend!"), (V{"▁Hey", "▁friend!"}));
  EXPECT_EQ(pre(cfg, "Hey   friend!"), (V{"▁Hey", "▁", "▁", "▁friend!"}));
  // prepend_scheme "first" only prefixes the piece at the start of the input.
  const char* first = R"({"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":false})";
  EXPECT_EQ(pre(first, "Hey friend", true), (V{"▁Hey▁friend"}));
  EXPECT_EQ(pre(first, "Hey friend", false), (V{"Hey▁friend"}));
  EXPECT_EQ(pre(R"({"type":"Metaspace","replacement":"▁","prepend_scheme":"never"})", "a b"), (V{"a", "▁b"}));
}

TEST(PreTokenizerTest, DigitsWhitespacePunctuationBert) {
  // digits.rs tests.
  EXPECT_EQ(pre(R"({"type":"Digits","individual_digits":true})", "Hey 123 friend!"),
            (V{"Hey ", "1", "2", "3", " friend!"}));
  EXPECT_EQ(pre(R"({"type":"Digits","individual_digits":false})", "Hey 123 friend!"), (V{"Hey ", "123", " friend!"}));
  // whitespace.rs tests.
  EXPECT_EQ(pre(R"({"type":"Whitespace"})", "How are you doing?"), (V{"How", "are", "you", "doing", "?"}));
  EXPECT_EQ(pre(R"({"type":"WhitespaceSplit"})", "Hey man!"), (V{"Hey", "man!"}));
  // punctuation.rs test.
  EXPECT_EQ(pre(R"({"type":"Punctuation"})", "Hey friend!     How are you?!?"),
            (V{"Hey friend", "!", "     How are you", "?", "!", "?"}));
  // bert.rs test.
  EXPECT_EQ(pre(R"({"type":"BertPreTokenizer"})", "Hey friend!     How are you?!?"),
            (V{"Hey", "friend", "!", "How", "are", "you", "?", "!", "?"}));
  EXPECT_EQ(pre(R"({"type":"Sequence","pretokenizers":[{"type":"WhitespaceSplit"},
                 {"type":"Digits","individual_digits":true}]})", "ab 12"),
            (V{"ab", "1", "2"}));
}

TEST(DecoderTest, ByteLevelAndMetaspace) {
  // byte_level.rs decoding test.
  EXPECT_EQ(dec(R"({"type":"ByteLevel"})", {"Hello", "Ġmy", "Ġfriend", ",", "Ġhow", "Ġis", "Ġyour", "Ġday", "Ġgoing", "?"}),
            "Hello my friend, how is your day going?");
  // Broken UTF-8 decodes lossily: one U+FFFD per maximal ill-formed part (Rust from_utf8_lossy).
  EXPECT_EQ(dec(R"({"type":"ByteLevel"})", {"ä", "a"}), "\xEF\xBF\xBD" "a");  // ä = byte 0xE4
  // A token with chars outside the byte table passes through as its own UTF-8.
  EXPECT_EQ(dec(R"({"type":"ByteLevel"})", {"<｜end｜>"}), "<｜end｜>");
  // metaspace.rs decode test; "never" keeps the first token's space.
  EXPECT_EQ(dec(R"({"type":"Metaspace","replacement":"▁","prepend_scheme":"always"})", {"▁Hey", "▁friend!"}), "Hey friend!");
  EXPECT_EQ(dec(R"({"type":"Metaspace","replacement":"▁","prepend_scheme":"never"})", {"▁Hey", "▁friend!"}), " Hey friend!");
}

TEST(DecoderTest, ByteFallbackFuseStripReplace) {
  // byte_fallback.rs tests.
  const char* bf = R"({"type":"ByteFallback"})";
  EXPECT_EQ(dec(bf, {"<0x61>"}), "a");
  EXPECT_EQ(dec(bf, {"<0xE5>", "<0x8f>", "<0xab>", "a"}), "叫a");
  EXPECT_EQ(dec(bf, {"<0xE5>", "<0x8f>", "a"}), "\xEF\xBF\xBD\xEF\xBF\xBD" "a");  // one U+FFFD per byte
  // fuse.rs / strip.rs tests.
  EXPECT_EQ(dec(R"({"type":"Fuse"})", {"Hey", " friend!"}), "Hey friend!");
  auto d = make_decoder(json::parse(R"({"type":"Strip","content":"H","start":1,"stop":0})"));
  std::vector<std::string> toks{"Hey", " friend!", "HHH"};
  d->decode_chain(toks);
  EXPECT_EQ(toks, (V{"ey", " friend!", "HH"}));
  EXPECT_EQ(dec(R"({"type":"Replace","pattern":{"String":"▁"},"content":" "})", {"▁a", "▁▁b"}), " a  b");
  // The llama2 decoder chain, by hand: replace, bytes, fuse, then one leading space stripped.
  EXPECT_EQ(dec(R"({"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"▁"},"content":" "},
                 {"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]})",
                {"▁Hey", "<0x21>", "▁▁x"}),
            "Hey!  x");
}

TEST(DecoderTest, WordPieceBpeCtc) {
  // wordpiece.rs test (the first token keeps its prefix).
  EXPECT_EQ(dec(R"({"type":"WordPiece","prefix":"##","cleanup":false})", {"##uelo", "Ara", "##új", "##o", "No", "##guera"}),
            "##uelo Araújo Noguera");
  EXPECT_EQ(dec(R"({"type":"WordPiece","prefix":"##","cleanup":true})", {"hello", "world", "!"}), "hello world!");
  // bpe.rs decoder test.
  EXPECT_EQ(dec(R"({"type":"BPEDecoder","suffix":"</w>"})", {"My</w>", "na", "me</w>", "is</w>", "Jo", "hn</w>"}),
            "My name is John");
  // ctc.rs test.
  EXPECT_EQ(dec(R"({"type":"CTC","pad_token":"<pad>","word_delimiter_token":"|","cleanup":true})",
                {"<pad>", "<pad>", "h", "e", "e", "l", "l", "<pad>", "l", "o", "o", "o", "<pad>"}),
            "hello");
}

TEST(PostProcessorTest, TemplateBertRobertaSequence) {
  auto run = [](const char* cfg, std::vector<int32_t> ids) {
    make_post_processor(json::parse(cfg))->process(ids);
    return ids;
  };
  using I = std::vector<int32_t>;
  // template.rs: "[CLS] $A [SEP]".
  const char* tpl = R"({"type":"TemplateProcessing",
    "single":[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"[SEP]","type_id":0}}],
    "pair":[], "special_tokens":{"[CLS]":{"id":"[CLS]","ids":[101],"tokens":["[CLS]"]},"[SEP]":{"id":"[SEP]","ids":[102],"tokens":["[SEP]"]}}})";
  EXPECT_EQ(run(tpl, {7, 8}), (I{101, 7, 8, 102}));
  EXPECT_EQ(run(R"({"type":"BertProcessing","sep":["[SEP]",102],"cls":["[CLS]",101]})", {5}), (I{101, 5, 102}));
  EXPECT_EQ(run(R"({"type":"RobertaProcessing","sep":["</s>",2],"cls":["<s>",0],"trim_offsets":true,"add_prefix_space":true})", {5}),
            (I{0, 5, 2}));
  EXPECT_EQ(run(R"({"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true})", {5}), (I{5}));
  auto seq = make_post_processor(json::parse(std::string(R"({"type":"Sequence","processors":[{"type":"ByteLevel"},)") + tpl + "]}"));
  EXPECT_EQ(seq->prefix_ids(), (I{101}));
}

TEST(ComponentErrorTest, UnsupportedTypesAreNamed) {
  EXPECT_THROW(make_pre_tokenizer(json::parse(R"({"type":"UnicodeScriptsX"})")), Error);
  EXPECT_THROW(make_decoder(json::parse(R"({"type":"Nope"})")), Error);
  try {
    make_normalizer(json::parse(R"({"type":"Replace","pattern":{"Regex":"(unclosed"},"content":""})"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(unclosed"), std::string::npos);
  }
}

}  // namespace
}  // namespace lathe::tok::detail
