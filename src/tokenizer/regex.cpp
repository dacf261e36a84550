#define PCRE2_CODE_UNIT_WIDTH 8
#include "regex.h"

#include <pcre2.h>

#include "core/error.h"
#include "unicode.h"

namespace lathe::tok::detail {

namespace {
std::string pcre_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

// Per-thread match state: a JIT stack larger than PCRE2's 32 KiB default so long whitespace or
// letter runs in huge inputs cannot overflow it.
struct ThreadMatchState {
  pcre2_match_context* ctx = nullptr;
  pcre2_jit_stack* stack = nullptr;
  ThreadMatchState() {
    ctx = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
    if (ctx && stack) pcre2_jit_stack_assign(ctx, nullptr, stack);
  }
  ~ThreadMatchState() {
    if (stack) pcre2_jit_stack_free(stack);
    if (ctx) pcre2_match_context_free(ctx);
  }
};

// Code points whose general category in HF's regex engine differs from PCRE2's tables.
struct DeltaRange {
  char32_t lo, hi;
  const char* cat;
};
constexpr DeltaRange kDelta[] = {
#include "unicode_delta.inc"
};

// True if s holds a code point of kDelta (all of them need 3 or 4 UTF-8 bytes).
bool has_delta_char(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto b = static_cast<unsigned char>(s[i]);
    if (b < 0xE0) {
      ++i;
      continue;
    }
    char32_t c = next_cp(s, i);
    // kDelta is sorted: binary search for the last range starting at or below c.
    size_t lo = 0, hi = std::size(kDelta);
    while (lo < hi) {
      size_t mid = (lo + hi) / 2;
      if (kDelta[mid].lo <= c) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0 && c <= kDelta[lo - 1].hi) return true;
  }
  return false;
}

// Class items (\x{A}-\x{B}...) for the delta chars in general category `cat` ("L", "Nd", ...)
// or in PCRE2's UCP \d / \w ("d": Nd; "w": L or N). Empty when `cat` is not a category.
std::string delta_items(std::string_view cat) {
  auto in = [&](std::string_view c) {
    if (cat == "d") return c == "Nd";
    if (cat == "w") return c[0] == 'L' || c[0] == 'N';
    if (cat == "L&" || cat == "Lc") return c == "Lu" || c == "Ll" || c == "Lt";
    return cat.size() == 1 ? c[0] == cat[0] : c == cat;
  };
  std::string out;
  for (const auto& r : kDelta) {
    if (!in(r.cat)) continue;
    out += fmt::format("\\x{{{:X}}}", uint32_t(r.lo));
    if (r.hi != r.lo) out += fmt::format("-\\x{{{:X}}}", uint32_t(r.hi));
  }
  return out;
}

// Adds the delta chars to every positive \p{Cat}, \d, \w of the pattern (and to \P, \D, \W
// outside classes, which become negated classes). A negated property inside a class stays as it
// is: a class cannot subtract. Returns the pattern unchanged when nothing applies.
std::string add_delta_ranges(const std::string& p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size();) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char d = p[i + 1];
      if (d == 'Q') {  // \Q...\E is literal text
        size_t e = p.find("\\E", i + 2);
        e = e == std::string::npos ? p.size() : e + 2;
        out.append(p, i, e - i);
        i = e;
        continue;
      }
      std::string name;
      size_t len = 2;
      bool negated = false;
      if (d == 'p' || d == 'P') {
        negated = d == 'P';
        if (i + 2 < p.size() && p[i + 2] == '{') {
          size_t close = p.find('}', i + 3);
          if (close == std::string::npos) return p;  // malformed: PCRE2 reports it
          name = p.substr(i + 3, close - i - 3);
          len = close + 1 - i;
          if (!name.empty() && name[0] == '^') negated = !negated, name.erase(0, 1);
        } else if (i + 2 < p.size()) {
          name = p.substr(i + 2, 1);
          len = 3;
        }
      } else if (d == 'd' || d == 'w' || d == 'D' || d == 'W') {
        name = std::string(1, char(d | 0x20));
        negated = d == 'D' || d == 'W';
      }
      std::string items = name.empty() ? "" : delta_items(name);
      std::string original = p.substr(i, len);
      if (items.empty() || (in_class && negated)) {
        out += original;
      } else if (in_class) {
        out += original + items;
      } else {
        std::string positive = d == 'p' || d == 'P' ? "\\p{" + name + "}" : std::string("\\") + char(d | 0x20);
        out += (negated ? "[^" : "[") + positive + items + "]";
      }
      i += len;
      continue;
    }
    if (c == '[') {
      if (in_class) {
        // A POSIX class ([:alpha:]) is copied whole; a lone '[' inside a class is literal.
        size_t e = i + 1 < p.size() && p[i + 1] == ':' ? p.find(":]", i + 2) : std::string::npos;
        size_t stop = e == std::string::npos ? i + 1 : e + 2;
        out.append(p, i, stop - i);
        i = stop;
        continue;
      }
      in_class = true;
      out += c;
      ++i;
      if (i < p.size() && p[i] == '^') out += p[i++];
      if (i < p.size() && p[i] == ']') out += p[i++];  // a leading ']' is literal
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
    ++i;
  }
  return out;
}

void* compile(const std::string& pattern, bool* jit) {
  int err = 0;
  PCRE2_SIZE off = 0;
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                             PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  if (!code)
    fail(ErrorKind::kUnsupported,
         "tokenizer regex /{}/ does not compile with PCRE2 at offset {}: {} (the tokenizer.json "
         "uses a regex feature lathe does not support)",
         pattern, off, pcre_message(err));
  *jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return code;
}
}  // namespace

Regex::Regex(const std::string& pattern) : pattern_(pattern) {
  code_ = compile(pattern, &jit_);
  std::string extended = add_delta_ranges(pattern);
  if (extended != pattern) {
    bool jit = false;
    try {
      code_delta_ = compile(extended, &jit);
    } catch (const Error&) {
      pcre2_code_free(static_cast<pcre2_code*>(code_));
      throw;
    }
  }
}

Regex::~Regex() {
  pcre2_code_free(static_cast<pcre2_code*>(code_));
  if (code_delta_) pcre2_code_free(static_cast<pcre2_code*>(code_delta_));
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view s) const {
  thread_local ThreadMatchState state;
  auto* code = static_cast<pcre2_code*>(code_delta_ && has_delta_char(s) ? code_delta_ : code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  std::vector<std::pair<size_t, size_t>> out;
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  while (pos <= s.size()) {
    int rc = pcre2_match(code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, state.ctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(md);
      fail(ErrorKind::kInvalidArgument, "regex /{}/ failed on the input: {}", pattern_,
           pcre_message(rc));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t b = ov[0], e = ov[1];
    if (e > b) {
      out.emplace_back(b, e);
      pos = e;
    } else {
      // An empty match contributes nothing (HF drops empty splits); step over one character.
      if (b >= s.size()) break;
      pos = b + cp_len(static_cast<unsigned char>(s[b]));
    }
  }
  pcre2_match_data_free(md);
  return out;
}

}  // namespace lathe::tok::detail
