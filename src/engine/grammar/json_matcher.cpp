#include "engine/grammar/json_matcher.h"

#include <algorithm>

#include "core/error.h"
#include "engine/grammar/token_vocab.h"
#include "engine/grammar/utf8_lead.h"

namespace lathe::engine {

namespace {

// Where a frame is inside its value. A value frame starts at kValue (leading whitespace, then the
// first byte picks the kind); containers set their own phase to what follows a child before pushing
// the child, so a finished child just pops.
enum Phase : uint8_t {
  kDoc,       // bottom frame: the document's value is next
  kDocDone,   // the document's value is complete: nothing may follow
  kValue,
  kObjOpen,   // after '{'
  kObjColon,  // after a key (b: the declared property's index)
  kObjAfter,  // after a member's value (a: the first declared property that may still come)
  kObjNext,   // after ','
  kArrOpen,   // after '[' (a: items so far)
  kArrAfter,
  kArrNext,
  kStrBody,  // a: code points so far
  kStrEsc,   // after '\'
  kStrHex,   // in \uXXXX (c1: digits left, b: value so far, c2: kNeedLow)
  kStrUtf8,  // inside a multi-byte character (c1: bytes left, b: the next byte's range lo | hi << 8)
  kStrLowSlash,  // after a high surrogate escape: "\" of its low half must follow
  kStrLowU,      // ... then "u"
  kNumStart, kNumMinus, kNumZero, kNumInt, kNumDot, kNumFrac, kNumExp, kNumExpSign, kNumExpDigits,
  kLit,  // a: bytes of the literal matched
};

constexpr uint8_t kNeedLow = 1;  // this \u escape must be a low surrogate (DC00..DFFF)
// Digits per number part: any JSON number parser takes these, and a model cannot write digits forever.
constexpr uint32_t kMaxIntDigits = 16, kMaxFracDigits = 16, kMaxExpDigits = 2;
constexpr int kMaxChoiceDepth = 64;

bool is_ws(uint8_t c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }
bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
int hex_value(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
// A number may end here (the next byte belongs to whatever follows it).
bool number_complete(uint8_t phase) {
  return phase == kNumZero || phase == kNumInt || phase == kNumFrac || phase == kNumExpDigits;
}

// One byte against one stack: every successor stack goes to `out`.
class Step {
 public:
  Step(const JsonGrammar& g, StackSet& out) : g_(g), out_(out), max_ws_(g.options().max_whitespace) {}

  void feed(std::vector<Frame>& s, uint8_t c, int depth = 0) {
    for (;;) {
      Frame& f = s.back();
      const GrammarNode& n = g_.node(f.node);
      switch (f.phase) {
        case kDoc:
          f.phase = kDocDone;
          s.push_back(Frame{.node = g_.root(), .phase = kValue});
          continue;
        case kDocDone:
          return;
        case kValue:
          if (is_ws(c)) return whitespace(s);
          if (!start_value(s, c, depth)) return;
          continue;  // the byte is the value's first: read it in the value's phase
        case kObjOpen:
        case kObjNext:
          if (is_ws(c)) return whitespace(s);
          if (c == '}' && f.phase == kObjOpen && int32_t(f.a) > n.last_required) return pop(s);
          if (c == '"') return key(s, n);
          return;
        case kObjColon:
          if (is_ws(c)) return whitespace(s);
          if (c != ':') return;
          {
            const int32_t value = n.properties.empty() ? n.values : n.properties[f.b].value;
            if (!n.properties.empty()) f.a = f.b + 1;
            f.phase = kObjAfter;
            f.ws = 0;
            s.push_back(Frame{.node = value, .phase = kValue});
          }
          return out_.add(s);
        case kObjAfter:
          if (is_ws(c)) return whitespace(s);
          if (c == '}' && int32_t(f.a) > n.last_required) return pop(s);
          if (c == ',' && (n.properties.empty() || f.a < n.properties.size())) return next_phase(s, kObjNext);
          return;
        case kArrOpen:
        case kArrNext: {
          if (is_ws(c)) return whitespace(s);
          if (c == ']' && f.phase == kArrOpen && n.min == 0) return pop(s);
          if (f.a >= n.max) return;
          const uint8_t ws = f.ws;  // the item's leading whitespace continues this run
          ++f.a;
          f.phase = kArrAfter;
          f.ws = 0;
          s.push_back(Frame{.node = n.values, .phase = kValue, .ws = ws});
          continue;
        }
        case kArrAfter:
          if (is_ws(c)) return whitespace(s);
          if (c == ']' && f.a >= n.min) return pop(s);
          if (c == ',' && f.a < n.max) return next_phase(s, kArrNext);
          return;
        case kStrBody:
          return string_byte(s, n, c);
        case kStrEsc:
          if (c == 'u') {
            f.phase = kStrHex;
            f.c1 = 4;
            f.b = 0;
          } else if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') {
            f.phase = kStrBody;
          } else {
            return;
          }
          return out_.add(s);
        case kStrHex:
          return hex_digit(s, c);
        case kStrUtf8:
          if (c < (f.b & 0xFF) || c > (f.b >> 8)) return;
          if (--f.c1 == 0) f.phase = kStrBody;
          f.b = 0x80 | (0xBF << 8);
          return out_.add(s);
        case kStrLowSlash:
          if (c != '\\') return;
          f.phase = kStrLowU;
          return out_.add(s);
        case kStrLowU:
          if (c != 'u') return;
          f.phase = kStrHex;
          f.c1 = 4;
          f.b = 0;
          f.c2 = kNeedLow;
          return out_.add(s);
        case kLit:
          if (c != uint8_t(n.text[f.a])) return;
          if (++f.a == n.text.size()) return pop(s);
          return out_.add(s);
        default:
          if (number_byte(f, n, c)) return out_.add(s);
          if (!number_complete(f.phase)) return;
          s.pop_back();  // the number ended before this byte: the enclosing value reads it
          continue;
      }
    }
  }

 private:
  void whitespace(std::vector<Frame>& s) {
    Frame& f = s.back();
    if (f.ws >= max_ws_) return;
    ++f.ws;
    out_.add(s);
  }
  void pop(std::vector<Frame>& s) {
    s.pop_back();
    out_.add(s);
  }
  void next_phase(std::vector<Frame>& s, uint8_t phase) {
    s.back().phase = phase;
    s.back().ws = 0;
    out_.add(s);
  }
  bool may_open(const std::vector<Frame>& s) const { return s.size() <= g_.options().max_depth + 1; }

  // The first byte of a value of f.node: sets the frame to read it (true: feed the byte to that
  // phase) or handles it completely (false).
  bool start_value(std::vector<Frame>& s, uint8_t c, int depth) {
    Frame& f = s.back();
    const GrammarNode& n = g_.node(f.node);
    auto open = [&](int32_t node, uint8_t phase) {  // the value's first byte is read: its frame is next
      if (phase != kStrBody && !may_open(s)) return false;
      f = Frame{.node = node, .phase = phase};
      out_.add(s);
      return false;
    };
    auto read_as = [&](int32_t node, uint8_t phase) {
      f = Frame{.node = node, .phase = phase};
      return true;
    };
    switch (n.kind) {
      case NodeKind::kAny:
        if (c == '{') return open(JsonGrammar::kAnyObject, kObjOpen);
        if (c == '[') return open(JsonGrammar::kAnyArray, kArrOpen);
        if (c == '"') return open(JsonGrammar::kAnyString, kStrBody);
        if (c == '-' || is_digit(c)) return read_as(JsonGrammar::kAnyNumber, kNumStart);
        if (c == 't') return read_as(JsonGrammar::kTrue, kLit);
        if (c == 'f') return read_as(JsonGrammar::kFalse, kLit);
        if (c == 'n') return read_as(JsonGrammar::kNull, kLit);
        return false;
      case NodeKind::kObject:
        return c == '{' && open(f.node, kObjOpen);
      case NodeKind::kArray:
        return c == '[' && open(f.node, kArrOpen);
      case NodeKind::kString:
        return c == '"' && open(f.node, kStrBody);
      case NodeKind::kNumber:
      case NodeKind::kInteger:
        return read_as(f.node, kNumStart);
      case NodeKind::kLiteral:
        return read_as(f.node, kLit);
      case NodeKind::kChoice:
        if (depth >= kMaxChoiceDepth) return false;
        for (int32_t alt : n.alternatives) {
          std::vector<Frame> branch = s;
          branch.back().node = alt;
          feed(branch, c, depth + 1);
        }
        return false;
    }
    return false;
  }

  // '"' after '{' or ',': a declared property's key (any that may come next: skipping optional
  // ones, never a required one), or a free key.
  void key(std::vector<Frame>& s, const GrammarNode& n) {
    Frame& f = s.back();
    f.phase = kObjColon;
    f.ws = 0;
    if (n.properties.empty()) {
      if (n.values < 0) return;
      s.push_back(Frame{.node = JsonGrammar::kAnyString, .phase = kStrBody});
      return out_.add(s);
    }
    for (uint32_t i = f.a; i < n.properties.size(); ++i) {
      std::vector<Frame> branch = s;
      branch.back().b = i;
      branch.push_back(Frame{.node = n.properties[i].key, .phase = kLit});
      out_.add(branch);
      if (n.properties[i].required) break;
    }
  }

  void string_byte(std::vector<Frame>& s, const GrammarNode& n, uint8_t c) {
    Frame& f = s.back();
    if (c == '"') {
      if (f.a >= n.min) pop(s);
      return;
    }
    if (f.a >= n.max || c < 0x20) return;  // full: only the closing quote; control bytes must be escaped
    if (c == '\\') {
      f.phase = kStrEsc;
    } else if (c >= 0x80) {
      const Utf8Lead lead = utf8_lead(c);
      if (lead.left == 0) return;
      f.phase = kStrUtf8;
      f.c1 = lead.left;
      f.b = uint32_t(lead.lo) | uint32_t(lead.hi) << 8;
    }
    ++f.a;  // one code point per character or escape (a surrogate pair's second half is not counted)
    out_.add(s);
  }

  // A \uXXXX digit. Lone surrogates are refused as soon as their second digit shows them (many
  // JSON parsers reject them): D800..DBFF must be followed by an escaped DC00..DFFF.
  void hex_digit(std::vector<Frame>& s, uint8_t c) {
    Frame& f = s.back();
    const int v = hex_value(c);
    if (v < 0) return;
    const int k = 4 - f.c1;  // digit index
    if (f.c2 & kNeedLow) {
      if ((k == 0 && v != 0xD) || (k == 1 && v < 0xC)) return;
    } else if (k == 1 && f.b == 0xD && v > 0xB) {
      return;
    }
    f.b = f.b * 16 + uint32_t(v);
    if (--f.c1 == 0) {
      const bool high = !(f.c2 & kNeedLow) && f.b >= 0xD800 && f.b <= 0xDBFF;
      f.phase = high ? kStrLowSlash : kStrBody;
      f.c2 = 0;
    }
    out_.add(s);
  }

  // A byte inside a number (-? int frac? exp?); false when it is not part of it.
  static bool number_byte(Frame& f, const GrammarNode& n, uint8_t c) {
    const bool real = n.kind != NodeKind::kInteger;
    auto go = [&](uint8_t phase, uint32_t digits) {
      f.phase = phase;
      f.a = digits;
      return true;
    };
    switch (f.phase) {
      case kNumStart:
        if (c == '-') return go(kNumMinus, 0);
        [[fallthrough]];
      case kNumMinus:
        if (c == '0') return go(kNumZero, 1);
        if (c >= '1' && c <= '9') return go(kNumInt, 1);
        return false;
      case kNumInt:
        if (is_digit(c)) return f.a < kMaxIntDigits && go(kNumInt, f.a + 1);
        [[fallthrough]];
      case kNumZero:
        if (real && c == '.') return go(kNumDot, 0);
        if (real && (c == 'e' || c == 'E')) return go(kNumExp, 0);
        return false;
      case kNumDot:
        return is_digit(c) && go(kNumFrac, 1);
      case kNumFrac:
        if (is_digit(c)) return f.a < kMaxFracDigits && go(kNumFrac, f.a + 1);
        return (c == 'e' || c == 'E') && go(kNumExp, 0);
      case kNumExp:
        if (c == '+' || c == '-') return go(kNumExpSign, 0);
        [[fallthrough]];
      case kNumExpSign:
        return is_digit(c) && go(kNumExpDigits, 1);
      case kNumExpDigits:
        return is_digit(c) && f.a < kMaxExpDigits && go(kNumExpDigits, f.a + 1);
      default:
        LATHE_CHECK(false);
    }
    return false;
  }

  const JsonGrammar& g_;
  StackSet& out_;
  uint32_t max_ws_;
};

// A stack whose pending number (if any) may end here and whose document is then complete.
bool stack_complete(std::span<const Frame> s) {
  size_t n = s.size();
  while (n > 1 && number_complete(s[n - 1].phase)) --n;
  return n == 1 && s[0].phase == kDocDone;
}

}  // namespace

void StackSet::add(std::span<const Frame> s) {
  for (size_t k = 0; k < size(); ++k) {
    const auto t = stack(k);
    if (t.size() == s.size() && std::equal(t.begin(), t.end(), s.begin())) return;
  }
  frames_.insert(frames_.end(), s.begin(), s.end());
  ends_.push_back(uint32_t(frames_.size()));
}

JsonMatcher::JsonMatcher(std::shared_ptr<const JsonGrammar> grammar) : grammar_(std::move(grammar)) {
  LATHE_CHECK(grammar_);
  const Frame doc{.node = grammar_->root(), .phase = kDoc};
  state_.add(std::span(&doc, 1));
}

bool JsonMatcher::advance(const StackSet& in, uint8_t c, StackSet& out) {
  out.clear();
  Step step(*grammar_, out);
  for (size_t k = 0; k < in.size(); ++k) {
    const auto s = in.stack(k);
    work_.assign(s.begin(), s.end());
    step.feed(work_, c);
  }
  return !out.empty();
}

bool JsonMatcher::feed(uint8_t byte) {
  if (!advance(state_, byte, next_)) return false;
  std::swap(state_, next_);
  return true;
}

bool JsonMatcher::feed(std::string_view bytes) {
  StackSet saved = state_;
  for (char c : bytes)
    if (!feed(uint8_t(c))) {
      state_ = std::move(saved);
      return false;
    }
  return true;
}

bool JsonMatcher::accepting() const {
  for (size_t k = 0; k < state_.size(); ++k)
    if (stack_complete(state_.stack(k))) return true;
  return false;
}

bool JsonMatcher::terminated() const {
  if (state_.size() == 1 && state_.stack(0).size() == 1 && state_.stack(0)[0].phase == kDocDone) return true;
  if (!accepting()) return false;
  // Complete with a number that might go on (a root integer at its digit bound, say): done only if
  // no byte at all continues it. Rare (only complete documents get here), so plain probing.
  StackSet out;
  std::vector<Frame> work;
  Step step(*grammar_, out);
  for (int c = 0; c < 256; ++c)
    for (size_t k = 0; k < state_.size(); ++k) {
      const auto s = state_.stack(k);
      work.assign(s.begin(), s.end());
      step.feed(work, uint8_t(c));
      if (!out.empty()) return false;
    }
  return true;
}

void JsonMatcher::allowed_tokens(const TokenVocab& vocab, std::span<uint8_t> mask) {
  std::fill(mask.begin(), mask.end(), uint8_t(0));
  if (state_.size() == 1 && state_.stack(0).back().phase == kStrBody) return allowed_in_string(vocab, mask);
  if (levels_.size() < vocab.max_length() + 1) levels_.resize(vocab.max_length() + 1);
  levels_[0] = state_;
  // Tokens in byte order: token i shares lcp(i) leading bytes with token i - 1, so the states
  // after those bytes are still in levels_; only the rest of the token is fed. A rejected byte at
  // depth d rules out every following token with the same first d + 1 bytes: they are skipped.
  size_t valid = 0;  // levels_[0..valid] hold the states after the previous token's first bytes
  const size_t count = vocab.sorted_count();
  for (size_t i = 0; i < count; ++i) {
    const std::string_view t = vocab.sorted_bytes(i);
    size_t d = std::min<size_t>(vocab.sorted_lcp(i), valid);
    while (d < t.size() && advance(levels_[d], uint8_t(t[d]), levels_[d + 1])) ++d;
    valid = d;
    if (d == t.size()) {
      const int32_t id = vocab.sorted_id(i);
      if (size_t(id) < mask.size()) mask[size_t(id)] = 1;
      continue;
    }
    while (i + 1 < count && vocab.sorted_lcp(i + 1) > d) ++i;
  }
}

// Inside a string (one stack, at a character boundary) almost every token is allowed, and walking
// all their bytes is the expensive case. The vocabulary's StringScan says what each token does from
// here without the automaton: plain string content is allowed while it fits maxLength; only tokens
// that leave the plain part ('"' or '\\' after some content) run their rest through the automaton,
// from the state the content leads to.
void JsonMatcher::allowed_in_string(const TokenVocab& vocab, std::span<uint8_t> mask) {
  const Frame top = state_.stack(0).back();
  const GrammarNode& n = grammar_->node(top.node);
  const uint32_t room = n.max == kUnbounded ? kUnbounded : n.max - top.a;
  const int32_t limit = std::min<int32_t>(vocab.size(), int32_t(mask.size()));
  for (int32_t id = 0; id < limit; ++id) {
    const StringScan& scan = vocab.string_scan(id);
    if (scan.kind == StringScan::kInvalid || scan.cps > room) continue;
    if (scan.kind == StringScan::kInside) {
      mask[size_t(id)] = !vocab.bytes(id).empty();
      continue;
    }
    levels_.resize(std::max<size_t>(levels_.size(), 2));
    StackSet* cur = &levels_[0];
    StackSet* nxt = &levels_[1];
    *cur = state_;
    cur->set_top_count(top.a + scan.cps);
    const std::string_view rest = vocab.bytes(id).substr(scan.exit);
    bool ok = true;
    for (size_t i = 0; ok && i < rest.size(); ++i) {
      ok = advance(*cur, uint8_t(rest[i]), *nxt);
      std::swap(cur, nxt);
    }
    mask[size_t(id)] = ok;
  }
}

}  // namespace lathe::engine
