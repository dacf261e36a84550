// Normalizers of tokenizer.json ("normalizer"), following HF tokenizers' semantics on whole
// strings: Sequence, Prepend, Append, Replace, NFC/NFD/NFKC/NFKD, Lowercase, Strip, StripAccents,
// BertNormalizer, ByteLevel, Precompiled (SentencePiece charsmap, in precompiled.cpp).
#include "core/error.h"
#include "components.h"
#include "precompiled.h"
#include "regex.h"
#include "unicode.h"

namespace lathe::tok::detail {

namespace {

class SequenceNorm : public Normalizer {
 public:
  explicit SequenceNorm(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
  void normalize(std::string& s) const override {
    for (const auto& p : parts_) p->normalize(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

// HF Prepend/Append only touch non-empty strings.
class PrependNorm : public Normalizer {
 public:
  PrependNorm(std::string text, bool append) : text_(std::move(text)), append_(append) {}
  void normalize(std::string& s) const override {
    if (s.empty()) return;
    if (append_) s += text_;
    else s.insert(0, text_);
  }

 private:
  std::string text_;
  bool append_;
};

}  // namespace

// Replaces every non-overlapping occurrence (left to right) of a literal or regex by `content`.
std::string replace_all(std::string_view s, const std::string& literal, const Regex* regex,
                        const std::string& content) {
  std::string out;
  out.reserve(s.size());
  size_t prev = 0;
  if (regex) {
    for (auto [b, e] : regex->find_all(s)) {
      out.append(s.substr(prev, b - prev));
      out += content;
      prev = e;
    }
  } else if (!literal.empty()) {
    for (size_t pos = s.find(literal); pos != std::string_view::npos; pos = s.find(literal, prev)) {
      out.append(s.substr(prev, pos - prev));
      out += content;
      prev = pos + literal.size();
    }
  }
  out.append(s.substr(prev));
  return out;
}

namespace {

class ReplaceNorm : public Normalizer {
 public:
  ReplaceNorm(const PatternSpec& p, std::string content) : content_(std::move(content)) {
    if (p.is_regex) regex_ = std::make_unique<Regex>(p.text);
    else literal_ = p.text;
  }
  void normalize(std::string& s) const override {
    s = replace_all(s, literal_, regex_.get(), content_);
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

class UnicodeNorm : public Normalizer {
 public:
  explicit UnicodeNorm(NormForm f) : form_(f) {}
  void normalize(std::string& s) const override { s = unicode_normalize(s, form_); }

 private:
  NormForm form_;
};

class LowercaseNorm : public Normalizer {
 public:
  void normalize(std::string& s) const override { s = to_lower(s); }
};

// HF Strip trims Unicode whitespace (Rust char::is_whitespace) on the chosen sides.
class StripNorm : public Normalizer {
 public:
  StripNorm(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& s) const override {
    size_t b = 0, e = s.size();
    if (left_) {
      while (b < e) {
        size_t i = b;
        if (!is_whitespace(next_cp(s, i))) break;
        b = i;
      }
    }
    if (right_) {
      while (e > b) {
        size_t start = e - 1;
        while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
        size_t i = start;
        if (!is_whitespace(next_cp(s, i))) break;
        e = start;
      }
    }
    s = s.substr(b, e - b);
  }

 private:
  bool left_, right_;
};

std::string remove_nonspacing_marks(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t start = i;
    char32_t c = next_cp(s, i);
    if (!is_nonspacing_mark(c)) out.append(s.substr(start, i - start));
  }
  return out;
}

// HF StripAccents drops nonspacing marks only; it relies on a prior NFD to split accents off.
class StripAccentsNorm : public Normalizer {
 public:
  void normalize(std::string& s) const override { s = remove_nonspacing_marks(s); }
};

bool is_cjk(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// HF BertNormalizer: clean_text, handle_chinese_chars, strip_accents (defaults to lowercase),
// lowercase, in that order.
class BertNorm : public Normalizer {
 public:
  BertNorm(bool clean, bool chinese, bool strip, bool lower)
      : clean_(clean), chinese_(chinese), strip_(strip), lower_(lower) {}
  void normalize(std::string& s) const override {
    if (clean_ || chinese_) {
      std::string out;
      out.reserve(s.size());
      for (size_t i = 0; i < s.size();) {
        size_t start = i;
        char32_t c = next_cp(s, i);
        if (clean_) {
          bool control = c != '\t' && c != '\n' && c != '\r' && is_control_or_other(c);
          if (c == 0 || c == 0xFFFD || control) continue;
          bool ws = c == ' ' || c == '\t' || c == '\n' || c == '\r' || is_space_separator(c);
          if (ws) { out += ' '; continue; }
        }
        if (chinese_ && is_cjk(c)) {
          out += ' ';
          out.append(s.substr(start, i - start));
          out += ' ';
          continue;
        }
        out.append(s.substr(start, i - start));
      }
      s = std::move(out);
    }
    if (strip_) s = remove_nonspacing_marks(unicode_normalize(s, NormForm::kNFD));
    if (lower_) s = to_lower(s);
  }

 private:
  bool clean_, chinese_, strip_, lower_;
};

// Maps every byte to its GPT-2 byte-level char (the ByteLevel normalizer).
class ByteLevelNorm : public Normalizer {
 public:
  void normalize(std::string& s) const override {
    std::string out;
    out.reserve(s.size() * 2);
    for (unsigned char b : s) append_utf8(out, byte_to_char()[b]);
    s = std::move(out);
  }
};

bool get_bool(const json& j, const char* key, bool dflt) {
  return j.contains(key) && j.at(key).is_boolean() ? j.at(key).get<bool>() : dflt;
}

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j) {
  if (j.is_null()) return nullptr;
  std::string t = type_of(j, "normalizer");
  if (t == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (const auto& n : require(j, "normalizers", "Sequence normalizer"))
      if (auto p = make_normalizer(n)) parts.push_back(std::move(p));
    return std::make_unique<SequenceNorm>(std::move(parts));
  }
  if (t == "Prepend")
    return std::make_unique<PrependNorm>(require(j, "prepend", "Prepend").get<std::string>(), false);
  if (t == "Append")
    return std::make_unique<PrependNorm>(require(j, "append", "Append").get<std::string>(), true);
  if (t == "Replace")
    return std::make_unique<ReplaceNorm>(parse_pattern(require(j, "pattern", "Replace"), "Replace"),
                                         require(j, "content", "Replace").get<std::string>());
  if (t == "NFC") return std::make_unique<UnicodeNorm>(NormForm::kNFC);
  if (t == "NFD") return std::make_unique<UnicodeNorm>(NormForm::kNFD);
  if (t == "NFKC") return std::make_unique<UnicodeNorm>(NormForm::kNFKC);
  if (t == "NFKD") return std::make_unique<UnicodeNorm>(NormForm::kNFKD);
  if (t == "Lowercase") return std::make_unique<LowercaseNorm>();
  if (t == "Strip")
    return std::make_unique<StripNorm>(get_bool(j, "strip_left", true), get_bool(j, "strip_right", true));
  if (t == "StripAccents") return std::make_unique<StripAccentsNorm>();
  if (t == "BertNormalizer") {
    bool lower = get_bool(j, "lowercase", true);
    bool strip = j.contains("strip_accents") && j.at("strip_accents").is_boolean()
                     ? j.at("strip_accents").get<bool>()
                     : lower;
    return std::make_unique<BertNorm>(get_bool(j, "clean_text", true),
                                      get_bool(j, "handle_chinese_chars", true), strip, lower);
  }
  if (t == "ByteLevel") return std::make_unique<ByteLevelNorm>();
  if (t == "Precompiled") return make_precompiled_normalizer(j);
  fail(ErrorKind::kUnsupported,
       "tokenizer.json: normalizer type '{}' is not supported (supported: Sequence, Prepend, "
       "Append, Replace, NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, BertNormalizer, "
       "ByteLevel, Precompiled)", t);
}

}  // namespace lathe::tok::detail
