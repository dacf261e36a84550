// Pre-tokenizers of tokenizer.json ("pre_tokenizer"): Split, ByteLevel, Metaspace, Digits,
// Whitespace, WhitespaceSplit, Punctuation, BertPreTokenizer, Sequence. Splitting follows HF's
// NormalizedString::split: matches and gaps cover the piece, the behaviour decides how matches
// attach, and empty pieces are dropped.
#include <functional>

#include "core/error.h"
#include "components.h"
#include "regex.h"
#include "unicode.h"

namespace lathe::tok::detail {

namespace {

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior parse_behavior(const json& j) {
  std::string b = j.is_string() ? j.get<std::string>() : "";
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  fail(ErrorKind::kUnsupported, "tokenizer.json: split behavior '{}' is unknown (expected Removed, "
       "Isolated, MergedWithPrevious, MergedWithNext or Contiguous)", j.dump());
}

struct Span {
  size_t b, e;
  bool match;
};

// Matches -> spans covering [0, len) (HF Pattern::find_matches), with `invert` flipping them.
std::vector<Span> cover(const std::vector<std::pair<size_t, size_t>>& matches, size_t len, bool invert) {
  std::vector<Span> spans;
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev != b) spans.push_back({prev, b, invert});
    spans.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != len) spans.push_back({prev, len, invert});
  return spans;
}

// Every char satisfying `pred` is its own match (HF's Fn(char) -> bool pattern).
std::vector<std::pair<size_t, size_t>> char_matches(std::string_view s,
                                                    const std::function<bool(char32_t)>& pred) {
  std::vector<std::pair<size_t, size_t>> out;
  for (size_t i = 0; i < s.size();) {
    size_t b = i;
    if (pred(next_cp(s, i))) out.emplace_back(b, i);
  }
  return out;
}

std::vector<std::pair<size_t, size_t>> literal_matches(std::string_view s, std::string_view lit) {
  std::vector<std::pair<size_t, size_t>> out;
  if (lit.empty()) return out;
  for (size_t p = s.find(lit); p != std::string_view::npos; p = s.find(lit, p + lit.size()))
    out.emplace_back(p, p + lit.size());
  return out;
}

// Applies a behaviour to the spans of `piece` and appends the resulting non-empty pieces.
void emit_split(const Piece& piece, const std::vector<Span>& spans, Behavior beh, std::vector<Piece>& out) {
  std::vector<std::pair<size_t, size_t>> parts;  // [b, e) kept
  switch (beh) {
    case Behavior::kRemoved:
      for (const auto& s : spans)
        if (!s.match) parts.emplace_back(s.b, s.e);
      break;
    case Behavior::kIsolated:
      for (const auto& s : spans) parts.emplace_back(s.b, s.e);
      break;
    case Behavior::kContiguous: {
      bool prev_match = false;
      for (const auto& s : spans) {
        if (s.match == prev_match && !parts.empty()) parts.back().second = s.e;
        else parts.emplace_back(s.b, s.e);
        prev_match = s.match;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (const auto& s : spans) {
        if (s.match && !prev_match && !parts.empty()) parts.back().second = s.e;
        else parts.emplace_back(s.b, s.e);
        prev_match = s.match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool prev_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !prev_match && !parts.empty()) parts.back().first = it->b;
        else parts.emplace_back(it->b, it->e);
        prev_match = it->match;
      }
      std::reverse(parts.begin(), parts.end());
      break;
    }
  }
  for (auto [b, e] : parts) {
    if (b == e) continue;
    out.push_back({piece.text.substr(b, e - b), piece.at_start && b == 0});
  }
}

// Runs `fn` over every piece, collecting what it appends.
template <typename Fn>
void for_each_piece(std::vector<Piece>& pieces, Fn&& fn) {
  std::vector<Piece> out;
  out.reserve(pieces.size());
  for (const auto& p : pieces) fn(p, out);
  pieces = std::move(out);
}

class SplitPre : public PreTokenizer {
 public:
  SplitPre(const PatternSpec& p, Behavior beh, bool invert) : literal_(p.text), beh_(beh), invert_(invert) {
    if (p.is_regex) regex_ = std::make_unique<Regex>(p.text);
  }
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for_each_piece(pieces, [&](const Piece& p, std::vector<Piece>& out) {
      auto m = regex_ ? regex_->find_all(p.text) : literal_matches(p.text, literal_);
      emit_split(p, cover(m, p.text.size(), invert_), beh_, out);
    });
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  Behavior beh_;
  bool invert_;
};

// Splits on chars satisfying a predicate (WhitespaceSplit, Punctuation, Digits, Bert).
class CharSplitPre : public PreTokenizer {
 public:
  CharSplitPre(std::function<bool(char32_t)> pred, Behavior beh) : pred_(std::move(pred)), beh_(beh) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for_each_piece(pieces, [&](const Piece& p, std::vector<Piece>& out) {
      emit_split(p, cover(char_matches(p.text, pred_), p.text.size(), false), beh_, out);
    });
  }

 private:
  std::function<bool(char32_t)> pred_;
  Behavior beh_;
};

const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPre : public PreTokenizer {
 public:
  ByteLevelPre(bool add_prefix_space, bool use_regex) : add_prefix_space_(add_prefix_space) {
    if (use_regex) regex_ = std::make_unique<Regex>(kGpt2Regex);
  }
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    const auto& map = byte_to_char();
    for_each_piece(pieces, [&](const Piece& p, std::vector<Piece>& out) {
      Piece q = p;
      if (add_prefix_space_ && q.text[0] != ' ') q.text.insert(0, " ");
      size_t first = out.size();
      if (regex_) emit_split(q, cover(regex_->find_all(q.text), q.text.size(), false), Behavior::kIsolated, out);
      else out.push_back(std::move(q));
      for (size_t k = first; k < out.size(); ++k) {
        std::string mapped;
        mapped.reserve(out[k].text.size() * 2);
        for (unsigned char b : out[k].text) append_utf8(mapped, map[b]);
        out[k].text = std::move(mapped);
      }
    });
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePre : public PreTokenizer {
 public:
  MetaspacePre(char32_t replacement, PrependScheme scheme, bool split)
      : replacement_cp_(replacement), scheme_(scheme), split_(split) {
    append_utf8(replacement_, replacement);
  }
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for_each_piece(pieces, [&](const Piece& p, std::vector<Piece>& out) {
      Piece q{literal_replace(p.text), p.at_start};
      bool starts = q.text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && q.at_start)))
        q.text.insert(0, replacement_);
      if (!split_) {
        out.push_back(std::move(q));
        return;
      }
      char32_t r = replacement_cp_;
      auto m = char_matches(q.text, [r](char32_t c) { return c == r; });
      emit_split(q, cover(m, q.text.size(), false), Behavior::kMergedWithNext, out);
    });
  }

 private:
  std::string literal_replace(const std::string& s) const {
    std::string out;
    out.reserve(s.size() + 8);
    for (char c : s) {
      if (c == ' ') out += replacement_;
      else out += c;
    }
    return out;
  }
  char32_t replacement_cp_;
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePre : public PreTokenizer {
 public:
  explicit SequencePre(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& p : parts_) p->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

bool get_bool(const json& j, const char* key, bool dflt) {
  return j.contains(key) && j.at(key).is_boolean() ? j.at(key).get<bool>() : dflt;
}

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j) {
  if (j.is_null()) return nullptr;
  std::string t = type_of(j, "pre_tokenizer");
  if (t == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (const auto& p : require(j, "pretokenizers", "Sequence pre_tokenizer"))
      if (auto q = make_pre_tokenizer(p)) parts.push_back(std::move(q));
    return std::make_unique<SequencePre>(std::move(parts));
  }
  if (t == "Split")
    return std::make_unique<SplitPre>(parse_pattern(require(j, "pattern", "Split"), "Split"),
                                      parse_behavior(require(j, "behavior", "Split")),
                                      get_bool(j, "invert", false));
  if (t == "ByteLevel")
    return std::make_unique<ByteLevelPre>(get_bool(j, "add_prefix_space", true), get_bool(j, "use_regex", true));
  if (t == "Metaspace") {
    std::string rep = j.contains("replacement") ? j.at("replacement").get<std::string>() : "\xE2\x96\x81";
    if (rep.empty() || count_chars(rep) != 1)
      fail(ErrorKind::kFormat, "tokenizer.json: Metaspace replacement must be one character, got '{}'", rep);
    size_t i = 0;
    char32_t cp = next_cp(rep, i);
    PrependScheme scheme = get_bool(j, "add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
    if (j.contains("prepend_scheme") && j.at("prepend_scheme").is_string()) {
      std::string s = j.at("prepend_scheme").get<std::string>();
      if (s == "always") scheme = PrependScheme::kAlways;
      else if (s == "first") scheme = PrependScheme::kFirst;
      else if (s == "never") scheme = PrependScheme::kNever;
      else fail(ErrorKind::kFormat, "tokenizer.json: Metaspace prepend_scheme '{}' is unknown", s);
    }
    return std::make_unique<MetaspacePre>(cp, scheme, get_bool(j, "split", true));
  }
  if (t == "Digits") {
    if (get_bool(j, "individual_digits", false))
      return std::make_unique<CharSplitPre>(is_numeric, Behavior::kIsolated);
    return std::make_unique<CharSplitPre>(is_numeric, Behavior::kContiguous);
  }
  if (t == "Whitespace") {
    // HF: keep the matches of \w+|[^\w\s]+ (Removed + invert), i.e. drop whitespace runs.
    return std::make_unique<SplitPre>(PatternSpec{R"(\w+|[^\w\s]+)", true}, Behavior::kRemoved, true);
  }
  if (t == "WhitespaceSplit") return std::make_unique<CharSplitPre>(is_whitespace, Behavior::kRemoved);
  if (t == "Punctuation") {
    Behavior beh = j.contains("behavior") ? parse_behavior(j.at("behavior")) : Behavior::kIsolated;
    return std::make_unique<CharSplitPre>(is_punctuation, beh);
  }
  if (t == "BertPreTokenizer") {
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    parts.push_back(std::make_unique<CharSplitPre>(is_whitespace, Behavior::kRemoved));
    parts.push_back(std::make_unique<CharSplitPre>(is_punctuation, Behavior::kIsolated));
    return std::make_unique<SequencePre>(std::move(parts));
  }
  fail(ErrorKind::kUnsupported,
       "tokenizer.json: pre_tokenizer type '{}' is not supported (supported: Sequence, Split, "
       "ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit, Punctuation, BertPreTokenizer)", t);
}

}  // namespace lathe::tok::detail
