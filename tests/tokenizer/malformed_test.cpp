// Malformed tokenizer.json files: every one must give a lathe::Error whose message names what is
// wrong (the field, the type, the token), never a crash or a stray exception of another type.
// Hand-picked cases first, then truncations and seeded random mutations of a small valid file.
#include <nlohmann/json.hpp>

#include <random>

#include "tok_test_util.h"

namespace lathe::tok {
namespace {

using nlohmann::json;

// A small valid tokenizer using one stage of each kind, so mutations reach every parser.
json base_tokenizer() {
  json vocab = {{"<unk>", 0}, {"a", 1}, {"b", 2}, {"ab", 3}, {"\xC4\xA0", 4}, {"\xC4\xA0" "a", 5}, {"c", 6}};
  return {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 7}, {"content", "<s>"}, {"special", true}, {"normalized", false}, {"lstrip", false},
         {"rstrip", false}, {"single_word", false}},
        {{"id", 8}, {"content", "tok"}, {"special", false}, {"normalized", true}, {"lstrip", true},
         {"rstrip", true}, {"single_word", true}}}},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "Replace"}, {"pattern", {{"String", "x"}}}, {"content", "c"}}}}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", R"( ?\p{L}+|\s+)"}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {7}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder", {{"type", "Sequence"}, {"decoders", {{{"type", "ByteLevel"}}, {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"a b", "\xC4\xA0 a"}}, {"unk_token", "<unk>"}, {"byte_fallback", false}}}};
}

// The error from_json(text) throws: fails the test when it throws nothing or something else.
std::optional<Error> load_error(const std::string& text) {
  try {
    Tokenizer::from_json(text);
  } catch (const Error& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "non-lathe exception " << typeid(e).name() << ": " << e.what();
    return std::nullopt;
  }
  ADD_FAILURE() << "no error for " << text.substr(0, 300);
  return std::nullopt;
}

// Expects a lathe::Error of `kind` whose message holds every one of `words`.
void expect_error(const json& j, ErrorKind kind, std::initializer_list<const char*> words) {
  SCOPED_TRACE(j.dump().substr(0, 400));
  auto e = load_error(j.dump());
  if (!e) return;
  EXPECT_EQ(to_string(e->kind()), std::string(to_string(kind))) << e->what();
  for (const char* w : words) EXPECT_NE(std::string(e->what()).find(w), std::string::npos) << "'" << w << "' not in: " << e->what();
}

TEST(MalformedTest, BaseIsValid) {
  auto t = Tokenizer::from_json(base_tokenizer().dump());
  EXPECT_EQ(t.encode("ab a", true), (std::vector<int32_t>{7, 3, 5}));
  EXPECT_EQ(t.decode(t.encode("ab a")), "ab a");
}

TEST(MalformedTest, TruncatedJson) {
  const std::string text = base_tokenizer().dump(2);
  // Every cut of the small file, then a spread of cuts of the real ones when present.
  for (size_t n = 0; n < text.size(); n += 7) {
    auto e = load_error(text.substr(0, n));
    if (!e) continue;
    EXPECT_EQ(e->kind(), ErrorKind::kFormat) << "cut at " << n << ": " << e->what();
    EXPECT_NE(std::string(e->what()).find("tokenizer.json is not valid JSON"), std::string::npos) << e->what();
  }
  const auto dir = testing::tokenizers_dir() / "llama3_1";
  if (!std::filesystem::exists(dir / "tokenizer.json")) GTEST_SKIP() << "tokenizer files missing: " << dir;
  const std::string real = testing::read_text(dir / "tokenizer.json");
  for (size_t n : {size_t(1), size_t(100), real.size() / 3, real.size() - 2}) {
    auto e = load_error(real.substr(0, n));
    if (e) {
      EXPECT_EQ(e->kind(), ErrorKind::kFormat) << e->what();
    }
  }
}

TEST(MalformedTest, UnknownTypesAreNamed) {
  json j = base_tokenizer();
  j["model"]["type"] = "Magic";
  expect_error(j, ErrorKind::kUnsupported, {"model type 'Magic'", "BPE"});
  j = base_tokenizer();
  j["normalizer"]["normalizers"][1]["type"] = "Frobnicate";
  expect_error(j, ErrorKind::kUnsupported, {"normalizer type 'Frobnicate'"});
  j = base_tokenizer();
  j["pre_tokenizer"]["pretokenizers"][0]["type"] = "UnicodeScriptz";
  expect_error(j, ErrorKind::kUnsupported, {"pre_tokenizer type 'UnicodeScriptz'"});
  j = base_tokenizer();
  j["decoder"]["type"] = "Nope";
  expect_error(j, ErrorKind::kUnsupported, {"decoder type 'Nope'"});
  j = base_tokenizer();
  j["post_processor"]["type"] = "Wrapper";
  expect_error(j, ErrorKind::kUnsupported, {"post_processor type 'Wrapper'"});
  j = base_tokenizer();
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  expect_error(j, ErrorKind::kUnsupported, {"Sideways"});
  j = base_tokenizer();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(unclosed"}};
  expect_error(j, ErrorKind::kUnsupported, {"(unclosed"});
  j = base_tokenizer();
  j["normalizer"]["normalizers"][0].erase("type");
  expect_error(j, ErrorKind::kFormat, {"normalizer", "\"type\""});
}

TEST(MalformedTest, MergesReferencingUnknownTokens) {
  json j = base_tokenizer();
  j["model"]["merges"].push_back("a zz");
  expect_error(j, ErrorKind::kFormat, {"merge token", "'zz'"});
  j = base_tokenizer();
  j["model"]["merges"].push_back("b a");  // both known, but "ba" is not in the vocab
  expect_error(j, ErrorKind::kFormat, {"merged token", "'ba'"});
  j = base_tokenizer();
  j["model"]["merges"].push_back("a b c");
  expect_error(j, ErrorKind::kFormat, {"'a b c'", "two tokens"});
  j = base_tokenizer();
  j["model"]["merges"].push_back(json::array({"a"}));
  expect_error(j, ErrorKind::kFormat, {"merge [\"a\"]"});
  j = base_tokenizer();
  j["model"]["merges"].push_back(json::array({"a", 5}));
  expect_error(j, ErrorKind::kFormat, {"merge [\"a\",5]"});
  j = base_tokenizer();
  j["post_processor"]["single"][0]["SpecialToken"]["id"] = "<missing>";
  expect_error(j, ErrorKind::kFormat, {"'<missing>'"});
}

TEST(MalformedTest, WrongFieldTypesAreNamed) {
  json j = base_tokenizer();
  j["model"]["vocab"] = json::array({"a", "b"});
  expect_error(j, ErrorKind::kFormat, {"BPE model vocab must be an object"});
  j = base_tokenizer();
  j["model"]["vocab"]["a"] = "one";
  expect_error(j, ErrorKind::kFormat, {"vocab", "'a'", "\"one\""});
  j = base_tokenizer();
  j["model"]["vocab"]["a"] = -3;
  expect_error(j, ErrorKind::kFormat, {"'a'", "-3"});
  j = base_tokenizer();
  j["model"]["vocab"]["a"] = 2000000000;  // a sparse id would make the id table huge
  expect_error(j, ErrorKind::kFormat, {"'a'", "2000000000"});
  j = base_tokenizer();
  j["model"]["merges"] = "a b";
  expect_error(j, ErrorKind::kFormat, {"merges must be an array"});
  j = base_tokenizer();
  j["model"] = "BPE";
  expect_error(j, ErrorKind::kFormat, {"\"model\" must be an object"});
  j = base_tokenizer();
  j.erase("model");
  expect_error(j, ErrorKind::kFormat, {"lacks the \"model\" field"});
  j = base_tokenizer();
  j["added_tokens"] = {{"<s>", 7}};
  expect_error(j, ErrorKind::kFormat, {"added_tokens must be an array"});
  j = base_tokenizer();
  j["added_tokens"][0]["content"] = 7;
  expect_error(j, ErrorKind::kFormat, {"added_tokens", "content", "string"});
  j = base_tokenizer();
  j["added_tokens"][0]["id"] = "7";
  expect_error(j, ErrorKind::kFormat, {"added_tokens", "id", "\"7\""});
  j = base_tokenizer();
  j["added_tokens"][0]["id"] = 2147483647;  // vocab_size() would overflow
  expect_error(j, ErrorKind::kFormat, {"added_tokens", "2147483647"});
  j = base_tokenizer();
  j["added_tokens"][1]["lstrip"] = "yes";
  expect_error(j, ErrorKind::kFormat, {"added_tokens", "lstrip"});
  j = base_tokenizer();
  j["normalizer"]["normalizers"][1]["content"] = 3;
  expect_error(j, ErrorKind::kFormat, {"\"normalizer\"", "string"});
  j = base_tokenizer();
  j["pre_tokenizer"]["pretokenizers"] = {{"type", "Split"}};
  expect_error(j, ErrorKind::kFormat, {"pre_tokenizer", "\"type\""});
  j = base_tokenizer();
  j["post_processor"]["special_tokens"]["<s>"]["ids"] = {"seven"};
  expect_error(j, ErrorKind::kFormat, {"\"post_processor\"", "number"});
  j = base_tokenizer();
  j["decoder"]["decoders"][1]["start"] = "one";
  expect_error(j, ErrorKind::kFormat, {"\"decoder\"", "number"});
  j = base_tokenizer();
  j["model"] = {{"type", "Unigram"}, {"vocab", json::array({json::array({"a", "likely"})})}};
  expect_error(j, ErrorKind::kFormat, {"\"model\"", "number"});
  j = base_tokenizer();
  j["model"] = {{"type", "WordPiece"}, {"vocab", {{"[UNK]", 0}}}, {"unk_token", "[UNK]"}, {"max_input_chars_per_word", -1}};
  expect_error(j, ErrorKind::kFormat, {"WordPiece", "max_input_chars_per_word", "-1"});
  expect_error(json::array({1, 2}), ErrorKind::kFormat, {"must hold a JSON object"});
}

// Replaces the value at a random node of `j` by a random value of another shape.
void mutate(json& j, std::mt19937& rng) {
  std::vector<json*> nodes;
  std::vector<json*> stack{&j};
  while (!stack.empty()) {
    json* n = stack.back();
    stack.pop_back();
    nodes.push_back(n);
    if (n->is_structured())
      for (auto& c : *n) stack.push_back(&c);
  }
  json& target = *nodes[rng() % nodes.size()];
  switch (rng() % 9) {
    case 0: target = nullptr; break;
    case 1: target = int(rng() % 2000) - 1000; break;
    case 2: target = "x"; break;
    case 3: target = json::array(); break;
    case 4: target = json::object(); break;
    case 5: target = true; break;
    case 6: target = 1e300; break;
    case 7: target = json::array({1, "a", nullptr}); break;
    default:
      if (target.is_object() && !target.empty()) target.erase(target.begin());
      else if (target.is_array() && !target.empty()) target.erase(target.begin());
      else target = "\xE2\x96\x81";
  }
}

TEST(MalformedTest, RandomMutationsNeverCrash) {
  std::mt19937 rng(4242);
  int loaded = 0, rejected = 0;
  for (int i = 0; i < 1500; ++i) {
    json j = base_tokenizer();
    for (int m = 1 + int(rng() % 3); m > 0; --m) mutate(j, rng);
    const std::string text = j.dump();
    try {
      Tokenizer t = Tokenizer::from_json(text);
      ++loaded;
      // A file that loads must also encode and decode without trouble.
      auto ids = t.encode(" ab tok <s> x\xC3\xA9\n", true);
      t.decode(ids);
      t.decode(ids, true);
    } catch (const Error& e) {
      ++rejected;
      EXPECT_GT(std::string(e.what()).size(), 20u) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "mutation " << i << ": non-lathe exception " << e.what() << "\n" << text;
    }
  }
  std::printf("[malformed] 1500 mutations: %d loaded, %d rejected with a lathe::Error\n", loaded, rejected);
  EXPECT_GT(rejected, 100);
}

}  // namespace
}  // namespace lathe::tok
