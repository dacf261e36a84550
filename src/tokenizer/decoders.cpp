// Decoders of tokenizer.json ("decoder"), as HF decode_chain: ByteLevel, Metaspace, ByteFallback,
// Fuse, Strip, Replace, WordPiece, BPEDecoder, CTC, Sequence.
#include "core/error.h"
#include "components.h"
#include "regex.h"
#include "unicode.h"

namespace lathe::tok::detail {

std::string replace_all(std::string_view s, const std::string& literal, const Regex* regex,
                        const std::string& content);  // normalizers.cpp

namespace {

// Maps byte-level chars back to bytes; a token holding any char outside the table is taken as
// its raw UTF-8 (HF does the same), then the whole byte string is decoded lossily.
class ByteLevelDec : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    decode_chain_raw(tokens);
    tokens.front() = utf8_lossy(tokens.front());
  }
  void decode_chain_raw(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const auto& t : tokens) {
      size_t mark = bytes.size();
      bool ok = true;
      for (size_t i = 0; i < t.size();) {
        int b = char_to_byte(next_cp(t, i));
        if (b < 0) { ok = false; break; }
        bytes += char(b);
      }
      if (!ok) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    tokens.assign(1, std::move(bytes));
  }
};

class MetaspaceDec : public Decoder {
 public:
  MetaspaceDec(std::string rep, bool strip_first) : rep_(std::move(rep)), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i)
      tokens[i] = replace_all(tokens[i], rep_, nullptr, i == 0 && strip_first_ ? "" : " ");
  }

 private:
  std::string rep_;
  bool strip_first_;  // HF drops every replacement char of the first token unless scheme is never
};

// Runs of <0xAB> tokens become their UTF-8 text; an invalid run becomes one U+FFFD per byte.
class ByteFallbackDec : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override { join_bytes(tokens, /*lossy=*/true); }
  void decode_chain_raw(std::vector<std::string>& tokens) const override { join_bytes(tokens, /*lossy=*/false); }
  bool joins_byte_tokens() const override { return true; }

 private:
  static void join_bytes(std::vector<std::string>& tokens, bool lossy) {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string run;
    size_t run_len = 0;
    auto flush = [&] {
      if (run_len == 0) return;
      if (!lossy || is_valid_utf8(run)) out.push_back(run);
      else
        for (size_t k = 0; k < run_len; ++k) out.emplace_back("\xEF\xBF\xBD");
      run.clear();
      run_len = 0;
    };
    for (auto& t : tokens) {
      int b = parse_byte_token(t);
      if (b >= 0) {
        run += char(b);
        ++run_len;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }
};

class FuseDec : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

// Removes up to `start` leading and `stop` trailing copies of one char from every token.
class StripDec : public Decoder {
 public:
  StripDec(char32_t c, size_t start, size_t stop) : c_(c), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      std::vector<std::pair<size_t, char32_t>> chars;  // (byte offset, cp)
      for (size_t i = 0; i < t.size();) {
        size_t b = i;
        chars.emplace_back(b, next_cp(t, i));
      }
      size_t a = 0, z = chars.size();
      while (a < start_ && a < z && chars[a].second == c_) ++a;
      for (size_t k = 0; k < stop_ && z > a && chars[z - 1].second == c_; ++k) --z;
      size_t bb = a < chars.size() ? chars[a].first : t.size();
      size_t eb = z < chars.size() ? chars[z].first : t.size();
      t = t.substr(bb, eb - bb);
    }
  }

 private:
  char32_t c_;
  size_t start_, stop_;
};

class ReplaceDec : public Decoder {
 public:
  ReplaceDec(const PatternSpec& p, std::string content) : content_(std::move(content)) {
    if (p.is_regex) regex_ = std::make_unique<Regex>(p.text);
    else literal_ = p.text;
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) t = replace_all(t, literal_, regex_.get(), content_);
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

// HF's cleanup of tokenization spaces before punctuation and English contractions.
std::string cleanup_spaces(std::string s) {
  static const std::pair<const char*, const char*> kRules[] = {
      {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
      {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (auto [from, to] : kRules) s = replace_all(s, from, nullptr, to);
  return s;
}

class WordPieceDec : public Decoder {
 public:
  WordPieceDec(std::string prefix, bool cleanup) : prefix_(std::move(prefix)), cleanup_(cleanup) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      auto& t = tokens[i];
      if (i != 0) {
        if (t.compare(0, prefix_.size(), prefix_) == 0) t.erase(0, prefix_.size());
        else t = " " + t;  // (not insert(0, ...): GCC 12 warns falsely)
      }
      if (cleanup_) t = cleanup_spaces(t);
    }
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

class BpeDec : public Decoder {
 public:
  explicit BpeDec(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i)
      tokens[i] = replace_all(tokens[i], suffix_, nullptr, i + 1 == tokens.size() ? "" : " ");
  }

 private:
  std::string suffix_;
};

class CtcDec : public Decoder {
 public:
  CtcDec(std::string pad, std::string delim, bool cleanup)
      : pad_(std::move(pad)), delim_(std::move(delim)), cleanup_(cleanup) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0 && tokens[i] == tokens[i - 1]) continue;  // collapse repeats
      if (tokens[i] == pad_) continue;
      std::string t = replace_all(tokens[i], delim_, nullptr, " ");
      if (cleanup_) t = cleanup_spaces(t);
      out.push_back(std::move(t));
    }
    tokens = std::move(out);
  }

 private:
  std::string pad_, delim_;
  bool cleanup_;
};

class SequenceDec : public Decoder {
 public:
  explicit SequenceDec(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->decode_chain(tokens);
  }
  void decode_chain_raw(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->decode_chain_raw(tokens);
  }
  bool joins_byte_tokens() const override {
    for (const auto& p : parts_)
      if (p->joins_byte_tokens()) return true;
    return false;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

char32_t single_char(const std::string& s, const char* where) {
  if (count_chars(s) != 1)
    fail(ErrorKind::kFormat, "tokenizer.json: {} must be one character, got '{}'", where, s);
  size_t i = 0;
  return next_cp(s, i);
}

}  // namespace

std::unique_ptr<Decoder> make_decoder(const json& j) {
  if (j.is_null()) return nullptr;
  std::string t = type_of(j, "decoder");
  if (t == "ByteLevel") return std::make_unique<ByteLevelDec>();
  if (t == "Metaspace") {
    std::string rep = j.value("replacement", std::string("\xE2\x96\x81"));
    single_char(rep, "Metaspace replacement");
    bool strip_first = j.value("add_prefix_space", true);
    if (j.contains("prepend_scheme") && j.at("prepend_scheme").is_string())
      strip_first = j.at("prepend_scheme").get<std::string>() != "never";
    return std::make_unique<MetaspaceDec>(rep, strip_first);
  }
  if (t == "ByteFallback") return std::make_unique<ByteFallbackDec>();
  if (t == "Fuse") return std::make_unique<FuseDec>();
  if (t == "Strip")
    return std::make_unique<StripDec>(single_char(require(j, "content", "Strip").get<std::string>(), "Strip content"),
                                      j.value("start", size_t(0)), j.value("stop", size_t(0)));
  if (t == "Replace")
    return std::make_unique<ReplaceDec>(parse_pattern(require(j, "pattern", "Replace"), "Replace"),
                                        require(j, "content", "Replace").get<std::string>());
  if (t == "WordPiece")
    return std::make_unique<WordPieceDec>(j.value("prefix", std::string("##")), j.value("cleanup", true));
  if (t == "BPEDecoder") return std::make_unique<BpeDec>(j.value("suffix", std::string("</w>")));
  if (t == "CTC")
    return std::make_unique<CtcDec>(j.value("pad_token", std::string("<pad>")),
                                    j.value("word_delimiter_token", std::string("|")), j.value("cleanup", true));
  if (t == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> parts;
    for (const auto& d : require(j, "decoders", "Sequence decoder"))
      if (auto p = make_decoder(d)) parts.push_back(std::move(p));
    return std::make_unique<SequenceDec>(std::move(parts));
  }
  fail(ErrorKind::kUnsupported,
       "tokenizer.json: decoder type '{}' is not supported (supported: ByteLevel, Metaspace, "
       "ByteFallback, Fuse, Strip, Replace, WordPiece, BPEDecoder, CTC, Sequence)", t);
}

}  // namespace lathe::tok::detail
