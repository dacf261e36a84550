// Differential fuzzing against the reference library itself: seeded random strings (mixed
// scripts, emoji sequences, combining marks, whitespace and digit runs, punctuation,
// contractions, code, the tokenizer's own added-token text inside words and alone) go through
// lathe and through Hugging Face tokenizers 0.23.2 (npm `tokenizers`, the Rust library's Node
// binding, driven by scripts/hf-tokenizers/reference.js), and all four fixture fields must agree:
// ids, ids with special tokens, decode, decode skipping special tokens.
//
// Needs node and the npm package: `npm install --prefix BUILD/npm tokenizers@0.23.2` (what
// `make test` does) or LATHE_NPM_DIR naming such a prefix folder. Skips loudly without them.
// LATHE_DIFF_N (strings per tokenizer, default 1200) and LATHE_DIFF_SEED widen a local run;
// LATHE_DIFF_KEEP=1 keeps the request JSONL (feed it to reference.js to reproduce).
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cstdio>
#include <random>

#include "tok_test_util.h"

namespace lathe::tok {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kReferenceVersion = "0.23.2";

fs::path npm_dir() {
  if (const char* env = std::getenv("LATHE_NPM_DIR"); env && *env) return env;
  return ::lathe::testing::binary_dir() / "npm";
}

int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : dflt;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

// Runs `cmd` and returns its stdout, or nullopt when it could not run or exited non-zero.
std::optional<std::string> run_command(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return std::nullopt;
  std::string out;
  char buf[1 << 16];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, n);
  int rc = pclose(p);
  if (rc != 0) return std::nullopt;
  return out;
}

// Why the reference cannot run here, or "" when it can.
std::string reference_missing() {
  if (!run_command("node --version 2>/dev/null"))
    return "node not found on PATH (apt-get install nodejs npm)";
  fs::path pkg = npm_dir() / "node_modules" / "tokenizers" / "package.json";
  if (!fs::exists(pkg))
    return "npm package tokenizers missing: " + pkg.string() + " (run: npm install --prefix " +
           npm_dir().string() + " tokenizers@" + kReferenceVersion + ", or set LATHE_NPM_DIR)";
  std::string version = json::parse(testing::read_text(pkg)).value("version", "");
  if (version != kReferenceVersion)
    return "npm package tokenizers is " + version + " at " + pkg.string() + "; lathe is exact against " +
           kReferenceVersion;
  return "";
}

// ---- random text ------------------------------------------------------------------------------

std::string utf8(char32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else if (cp < 0x800) {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += char(0xE0 | (cp >> 12));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  } else {
    s += char(0xF0 | (cp >> 18));
    s += char(0x80 | ((cp >> 12) & 0x3F));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  }
  return s;
}

class TextGen {
 public:
  TextGen(uint32_t seed, std::vector<std::string> added) : rng_(seed), added_(std::move(added)) {}

  std::string text() {
    std::string s;
    int n = pick(0, 16);
    for (int k = 0; k < n; ++k) {
      if (!s.empty() && chance(0.35)) s += ' ';
      s += piece();
    }
    if (chance(0.08)) s = " " + s;
    if (chance(0.08)) s += ' ';
    return s;
  }

 private:
  int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }
  template <typename T>
  const T& one_of(const std::vector<T>& v) { return v[size_t(pick(0, int(v.size()) - 1))]; }
  char32_t in(char32_t lo, char32_t hi) { return char32_t(pick(int(lo), int(hi))); }

  std::string script_word() {
    // Ranges of assigned letters (and the marks those scripts write with).
    static const std::vector<std::pair<char32_t, char32_t>> kScripts = {
        {'a', 'z'},       {'A', 'Z'},       {0xC0, 0xD6},     {0xD8, 0xF6},     {0xF8, 0x17F},
        {0x410, 0x44F},   {0x391, 0x3A1},   {0x3A3, 0x3C9},   {0x4E00, 0x9FFF}, {0x3041, 0x3096},
        {0x30A1, 0x30FA}, {0x621, 0x64A},   {0x5D0, 0x5EA},   {0x905, 0x939},   {0x93E, 0x94D},
        {0xE01, 0xE2E},   {0xE31, 0xE3A},   {0xAC00, 0xD7A3}, {0x1100, 0x1112}, {0x10D0, 0x10F0}};
    auto [lo, hi] = one_of(kScripts);
    std::string w;
    for (int n = pick(1, 8); n > 0; --n) w += utf8(in(lo, hi));
    return w;
  }

  std::string latin_word() {
    static const std::vector<std::string> kWords = {
        "the", "The", "THE", "hello", "World", "naïve", "café", "Straße", "résumé", "façade", "ÅNGSTRÖM",
        "œuvre", "ǅemal", "İstanbul", "ﬁnance", "Ǆ", "ΣΊΣΥΦΟΣ", "ß", "x", "I", "a", "camelCase",
        "snake_case", "MiXeD", "über", "niño", "Çà", "e\xCC\x81", "n\xCC\x83o", "A\xCC\x8A"};
    std::string w = one_of(kWords);
    if (chance(0.3)) w += one_of(kWords);
    return w;
  }

  std::string emoji() {
    static const std::vector<std::string> kFixed = {
        "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7\xE2\x80\x8D\xF0\x9F\x91\xA6",
        "\xF0\x9F\x8F\xB3\xEF\xB8\x8F\xE2\x80\x8D\xF0\x9F\x8C\x88", "\xE2\x9D\xA4\xEF\xB8\x8F",
        "\xF0\x9F\x87\xBA\xF0\x9F\x87\xB8", "\xF0\x9F\x87\xAF\xF0\x9F\x87\xB5", "1\xEF\xB8\x8F\xE2\x83\xA3",
        "\xE2\x98\xBA", "\xE2\x9C\x85", "\xF0\x9F\xA4\x96", "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD"};
    switch (pick(0, 4)) {
      case 0: return one_of(kFixed);
      case 1: return utf8(in(0x1F600, 0x1F64F));
      case 2: return utf8(in(0x1F466, 0x1F469)) + utf8(in(0x1F3FB, 0x1F3FF));  // skin tone
      case 3: {                                                                // ZWJ sequence
        std::string s = utf8(in(0x1F466, 0x1F469));
        if (chance(0.5)) s += utf8(in(0x1F3FB, 0x1F3FF));
        for (int n = pick(1, 3); n > 0; --n) s += "\xE2\x80\x8D" + utf8(in(0x1F300, 0x1F5FF)) + (chance(0.3) ? "\xEF\xB8\x8F" : "");
        return s;
      }
      default: return utf8(in(0x1F1E6, 0x1F1FF)) + utf8(in(0x1F1E6, 0x1F1FF));  // flag
    }
  }

  std::string combining() {
    std::string s = chance(0.7) ? utf8(in('a', 'z')) : "";
    for (int n = pick(1, 3); n > 0; --n) s += utf8(in(0x300, 0x36F));
    return s;
  }

  std::string whitespace() {
    static const std::vector<std::string> kSpaces = {
        " ", " ", " ", "\t", "\n", "\n", "\r\n", "\r", "\xC2\xA0", "\xE2\x80\x83", "\xE2\x80\x89",
        "\xE3\x80\x80", "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE1\x9A\x80", "\x0B", "\x0C", "\xC2\x85",
        "\xE2\x80\xA8", "\xE2\x80\x8B", "\xEF\xBB\xBF"};
    std::string s;
    for (int n = pick(1, 7); n > 0; --n) s += one_of(kSpaces);
    return s;
  }

  std::string digits() {
    std::string s;
    int n = pick(1, 12);
    for (int k = 0; k < n; ++k) {
      if (k > 0 && chance(0.1)) s += chance(0.5) ? "." : ",";
      s += char('0' + pick(0, 9));
    }
    if (chance(0.2)) {
      static const std::vector<std::pair<char32_t, char32_t>> kOther = {
          {0x660, 0x669}, {0xFF10, 0xFF19}, {0xB2, 0xB3}, {0x2160, 0x216B}, {0xBC, 0xBE}, {0x966, 0x96F}};
      auto [lo, hi] = one_of(kOther);
      for (int k = pick(1, 3); k > 0; --k) s += utf8(in(lo, hi));
    }
    return s;
  }

  std::string punctuation() {
    static const std::vector<std::string> kPunct = {
        ".", ",", "!", "?", ";", ":", "-", "--", "...", "(", ")", "[", "]", "{", "}", "\"", "'",
        "`", "/", "\\", "@", "#", "$", "%", "^", "&", "*", "_", "+", "=", "<", ">", "|", "~",
        "\xE2\x80\x94", "\xE2\x80\x9C", "\xE2\x80\x9D", "\xC2\xAB", "\xC2\xBB", "\xE3\x80\x82",
        "\xE3\x80\x81", "\xEF\xBC\x81", "\xC2\xBF", "\xC2\xA1", "\xE2\x80\xA6", "\xC2\xB7", "\xE2\x82\xAC",
        "\xC2\xA9", "\xE2\x84\xA2", "\xE2\x88\x91", "\xE2\x86\x92"};
    std::string s;
    for (int n = pick(1, 4); n > 0; --n) s += one_of(kPunct);
    return s;
  }

  std::string contraction() {
    static const std::vector<std::string> kForms = {
        "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D",
        "'Ll", "\xE2\x80\x99s", "\xE2\x80\x99ll", "'", "''"};
    static const std::vector<std::string> kStems = {"don", "it", "they", "I", "we", "you", "CAN", "she", ""};
    return one_of(kStems) + one_of(kForms);
  }

  std::string code() {
    static const std::vector<std::string> kCode = {
        "int main() {\n    return 0;\n}\n", "def f(x):\n\treturn x**2\n", "<div class=\"a\">b</div>",
        "a->b", "x += 1;", "#include <stdio.h>", "SELECT * FROM t WHERE id = 1;", "```python\n",
        "// comment", "/* c */", "0x1F", "foo_bar_baz", "std::vector<int> v{1, 2, 3};",
        "https://example.com/a?b=c&d=e", "if (a && b || !c) {", "    ", "\t\t}", "$ ls -la | grep x",
        "{\"key\": [1, 2.5, null]}", "λx.x", "i++", "a[i][j]", "===", "!=", "=>", "::"};
    return one_of(kCode);
  }

  std::string added_text() {
    if (added_.empty()) return "<s>";
    std::string t = one_of(added_);
    if (chance(0.15)) {  // a cut-off token, cut at a char boundary (the text must stay valid UTF-8)
      size_t cut = size_t(pick(1, int(t.size())));
      while (cut < t.size() && (static_cast<unsigned char>(t[cut]) & 0xC0) == 0x80) ++cut;
      t.resize(cut);
    }
    if (chance(0.3)) t = latin_word() + t;                               // glued to a word
    if (chance(0.3)) t += latin_word();
    return t;
  }

  // Any scalar value (no surrogates: the reference takes JS strings), mostly from the BMP:
  // exercises the Unicode category tables of the regexes and normalizers.
  std::string any_char() {
    char32_t c;
    do c = chance(0.8) ? in(0x80, 0xFFFD) : in(0x10000, 0x10FFFF);
    while (c >= 0xD800 && c <= 0xDFFF);
    return utf8(c);
  }

  // Chars assigned after Unicode 14 (what lathe's PCRE2 knows): CJK Ext. H, emoji of Unicode
  // 15/16, Garay digits and letters, Egyptian hieroglyphs Ext. A, Cyrillic/Latin additions.
  std::string recent_char() {
    static const std::vector<std::pair<char32_t, char32_t>> kRecent = {
        {0x31350, 0x323AF}, {0x1FAE8, 0x1FAE8}, {0x1FA75, 0x1FA77}, {0x1FAF7, 0x1FAF8},
        {0x1FAE9, 0x1FAE9}, {0x10D40, 0x10D49}, {0x10D50, 0x10D65}, {0x10D70, 0x10D85},
        {0x13460, 0x143FA}, {0x1C89, 0x1C8A},   {0xA7CB, 0xA7CD},   {0x2FFC, 0x2FFF}};
    auto [lo, hi] = one_of(kRecent);
    std::string s;
    for (int n = pick(1, 3); n > 0; --n) s += utf8(in(lo, hi));
    return s;
  }

  // Long runs: BPE merge chains and regex backtracking over many repeats.
  std::string long_run() {
    static const std::vector<std::string> kUnits = {" ", "\n", "a", "ab", "0", "=", "\xE4\xB8\x80", "\xF0\x9F\x98\x80", " \n"};
    std::string u = one_of(kUnits), s;
    for (int n = pick(8, 80); n > 0; --n) s += u;
    return s;
  }

  std::string piece() {
    switch (pick(0, 16)) {
      case 14: return any_char();
      case 16: return recent_char();
      case 15: return long_run();
      case 0: case 1: return script_word();
      case 2: case 3: return latin_word();
      case 4: return emoji();
      case 5: return combining();
      case 6: case 7: return whitespace();
      case 8: return digits();
      case 9: return punctuation();
      case 10: return contraction();
      case 11: return code();
      default: return added_text();
    }
  }

  std::mt19937 rng_;
  std::vector<std::string> added_;
};

// Added-token text of a tokenizer.json plus the usual chat markers of other families, so every
// tokenizer also sees special-looking text it does not know.
std::vector<std::string> added_token_texts(const fs::path& tokenizer_json) {
  std::vector<std::string> out = {"<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
                                  "<|eot_id|>", "<|begin_of_text|>", "<bos>", "<eos>", "[INST]"};
  json j = json::parse(testing::read_text(tokenizer_json));
  std::vector<std::string> special, plain;
  for (const auto& a : j.value("added_tokens", json::array()))
    (a.value("special", false) ? special : plain).push_back(a.value("content", ""));
  // Long reserved lists (gemma3's <unusedN>) would crowd out the rest: keep a sample of each kind.
  for (auto* v : {&special, &plain})
    for (size_t k = 0; k < v->size(); k += 1 + v->size() / 40) out.push_back((*v)[k]);
  return out;
}

std::string escaped(const std::string& s) { return json(s).dump(-1, ' ', true, json::error_handler_t::replace); }

// ---- the test ---------------------------------------------------------------------------------

class DifferentialTest : public ::testing::TestWithParam<std::string> {};

TEST_P(DifferentialTest, MatchesReferenceLibrary) {
  const std::string name = GetParam();
  LATHE_REQUIRE_TOKENIZER(dir, name);
  if (std::string why = reference_missing(); !why.empty()) GTEST_SKIP() << "reference unavailable: " << why;
  fs::path script = ::lathe::testing::source_dir() / "scripts" / "hf-tokenizers" / "reference.js";
  ASSERT_TRUE(fs::exists(script)) << script;

  const int n = env_int("LATHE_DIFF_N", 1200);
  const uint32_t seed = uint32_t(env_int("LATHE_DIFF_SEED", 20240611)) + uint32_t(std::hash<std::string>{}(name));
  TextGen gen(seed, added_token_texts(dir / "tokenizer.json"));
  std::vector<std::string> texts;
  texts.reserve(size_t(n));
  // Fixed edge cases first, then the random ones.
  for (const char* s : {"", " ", "  ", "\n", " \n ", "\r\n\r\n", "a", "\xC2\xA0", "   x", "x   "}) texts.push_back(s);
  while (int(texts.size()) < n) texts.push_back(gen.text());

  // One batch through the reference: write the requests, read one answer line per request.
  fs::path tmp = fs::temp_directory_path() / ("lathe_diff_" + name + "_" + std::to_string(getpid()));
  {
    std::ofstream req(tmp.string() + ".in.jsonl", std::ios::binary);
    for (const auto& t : texts) req << json{{"tokenizer", (dir / "tokenizer.json").string()}, {"text", t}}.dump() << '\n';
  }
  std::string cmd = "LATHE_NPM_DIR=" + shell_quote(npm_dir().string()) + " node " + shell_quote(script.string()) +
                    " < " + shell_quote(tmp.string() + ".in.jsonl") + " 2> " + shell_quote(tmp.string() + ".err");
  auto out = run_command(cmd);
  std::string err = testing::read_text(tmp.string() + ".err");
  if (!std::getenv("LATHE_DIFF_KEEP")) fs::remove(tmp.string() + ".in.jsonl");
  else std::printf("[differential] requests kept in %s.in.jsonl\n", tmp.string().c_str());
  fs::remove(tmp.string() + ".err");
  ASSERT_TRUE(out.has_value()) << "reference.js failed: " << cmd << "\n" << err;

  Tokenizer tok = Tokenizer::load(dir);
  std::istringstream lines(*out);
  std::string line;
  size_t k = 0, mismatches = 0, reported = 0;
  size_t field_mismatches[4] = {0, 0, 0, 0};
  for (; k < texts.size() && std::getline(lines, line); ++k) {
    json r = json::parse(line);
    ASSERT_FALSE(r.contains("error")) << "reference failed on " << escaped(texts[k]) << ": " << r["error"];
    const std::string& s = texts[k];
    auto ref_ids = r["ids"].get<std::vector<int32_t>>();
    auto ref_special = r["ids_with_special"].get<std::vector<int32_t>>();
    // Decode is checked on the reference's ids, so an encode bug cannot hide a decode bug.
    bool bad[4] = {tok.encode(s, false) != ref_ids, tok.encode(s, true) != ref_special,
                   tok.decode(ref_ids, false) != r["decode"].get<std::string>(),
                   tok.decode(ref_special, true) != r["decode_skip_special"].get<std::string>()};
    bool any = false;
    for (int f = 0; f < 4; ++f) field_mismatches[f] += bad[f], any |= bad[f];
    if (!any) continue;
    ++mismatches;
    if (reported++ >= 8) continue;
    std::ostringstream msg;
    msg << name << " string " << k << ": " << escaped(s);
    if (bad[0]) msg << "\n  ids:      lathe " << json(tok.encode(s, false)).dump() << "\n            hf    " << r["ids"].dump();
    if (bad[1]) msg << "\n  special:  lathe " << json(tok.encode(s, true)).dump() << "\n            hf    " << r["ids_with_special"].dump();
    if (bad[2]) msg << "\n  decode:   lathe " << escaped(tok.decode(ref_ids, false)) << "\n            hf    " << escaped(r["decode"].get<std::string>());
    if (bad[3]) msg << "\n  skip:     lathe " << escaped(tok.decode(ref_special, true)) << "\n            hf    " << escaped(r["decode_skip_special"].get<std::string>());
    ADD_FAILURE() << msg.str();
  }
  EXPECT_EQ(k, texts.size()) << "reference.js answered " << k << " of " << texts.size() << " requests\n" << err;
  EXPECT_EQ(mismatches, 0u) << name << ": " << mismatches << " of " << texts.size()
                            << " strings differ (ids " << field_mismatches[0] << ", ids_with_special "
                            << field_mismatches[1] << ", decode " << field_mismatches[2]
                            << ", decode_skip_special " << field_mismatches[3] << "), seed " << seed;
  std::printf("[differential] %s: %zu strings, %zu mismatches (seed %u)\n", name.c_str(), k, mismatches, seed);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, DifferentialTest,
                         ::testing::Values("llama2", "llama3_1", "qwen3", "deepseek_v3", "gemma3", "gptoss", "llama3",
                                           "gpt4o", "gpt35turbo", "claude", "gemini"));

}  // namespace
}  // namespace lathe::tok
