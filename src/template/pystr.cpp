// Python string operations. Case mapping and character classes use utf8proc so non-ASCII text
// (common in chat content) behaves as in Python, not as in the C locale.
#include "template/pystr.h"

#include <utf8proc.h>

#include <algorithm>

#include "template/value.h"

namespace lathe::tmpl::py {

namespace {

char32_t to_upper(char32_t c) { return char32_t(utf8proc_toupper(utf8proc_int32_t(c))); }
char32_t to_lower(char32_t c) { return char32_t(utf8proc_tolower(utf8proc_int32_t(c))); }
char32_t to_title(char32_t c) { return char32_t(utf8proc_totitle(utf8proc_int32_t(c))); }

bool is_cased(char32_t c) { return to_upper(c) != c || to_lower(c) != c || to_title(c) != c; }
bool is_lower_char(char32_t c) { return utf8proc_category(utf8proc_int32_t(c)) == UTF8PROC_CATEGORY_LL; }
bool is_upper_char(char32_t c) {
  auto cat = utf8proc_category(utf8proc_int32_t(c));
  return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LT;
}
bool is_alpha_char(char32_t c) {
  auto cat = utf8proc_category(utf8proc_int32_t(c));
  return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT ||
         cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_LO;
}
bool is_decimal_char(char32_t c) { return utf8proc_category(utf8proc_int32_t(c)) == UTF8PROC_CATEGORY_ND; }
bool is_numeric_char(char32_t c) {
  auto cat = utf8proc_category(utf8proc_int32_t(c));
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

template <typename F>
std::string map_chars(std::string_view s, F f) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : utf8_decode(s)) utf8_append(out, f(c));
  return out;
}

}  // namespace

std::string strip(std::string_view s, const std::optional<std::string>& chars, Side side) {
  std::u32string u = utf8_decode(s);
  std::u32string set = chars ? utf8_decode(*chars) : std::u32string();
  auto strip_it = [&](char32_t c) { return chars ? set.find(c) != std::u32string::npos : is_py_space(c); };
  size_t b = 0, e = u.size();
  if (side != Side::kRight)
    while (b < e && strip_it(u[b])) ++b;
  if (side != Side::kLeft)
    while (e > b && strip_it(u[e - 1])) --e;
  return utf8_encode(std::u32string_view(u).substr(b, e - b));
}

std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep, long long maxsplit) {
  std::vector<std::string> out;
  if (sep) {
    if (sep->empty()) runtime_fail("empty separator");
    size_t start = 0;
    while (maxsplit < 0 || (long long)out.size() < maxsplit) {
      size_t at = s.find(*sep, start);
      if (at == std::string_view::npos) break;
      out.emplace_back(s.substr(start, at - start));
      start = at + sep->size();
    }
    out.emplace_back(s.substr(start));
    return out;
  }
  std::u32string u = utf8_decode(s);
  size_t k = 0;
  while (true) {
    while (k < u.size() && is_py_space(u[k])) ++k;
    if (k >= u.size()) break;
    if (maxsplit >= 0 && (long long)out.size() >= maxsplit) {
      size_t e = u.size();
      while (e > k && is_py_space(u[e - 1])) --e;
      out.push_back(utf8_encode(std::u32string_view(u).substr(k, e - k)));
      break;
    }
    size_t e = k;
    while (e < u.size() && !is_py_space(u[e])) ++e;
    out.push_back(utf8_encode(std::u32string_view(u).substr(k, e - k)));
    k = e;
  }
  return out;
}

std::vector<std::string> rsplit(std::string_view s, const std::optional<std::string>& sep, long long maxsplit) {
  if (maxsplit < 0) return split(s, sep, maxsplit);
  std::vector<std::string> out;
  if (sep) {
    if (sep->empty()) runtime_fail("empty separator");
    size_t end = s.size();
    while ((long long)out.size() < maxsplit) {
      if (end < sep->size()) break;
      size_t at = s.rfind(*sep, end - sep->size());
      if (at == std::string_view::npos) break;
      out.emplace_back(s.substr(at + sep->size(), end - at - sep->size()));
      end = at;
    }
    out.emplace_back(s.substr(0, end));
    std::reverse(out.begin(), out.end());
    return out;
  }
  std::u32string u = utf8_decode(s);
  long long e = (long long)u.size();
  while (true) {
    while (e > 0 && is_py_space(u[size_t(e - 1)])) --e;
    if (e <= 0) break;
    if ((long long)out.size() >= maxsplit) {
      long long b = 0;
      while (b < e && is_py_space(u[size_t(b)])) ++b;
      out.push_back(utf8_encode(std::u32string_view(u).substr(size_t(b), size_t(e - b))));
      break;
    }
    long long b = e;
    while (b > 0 && !is_py_space(u[size_t(b - 1)])) --b;
    out.push_back(utf8_encode(std::u32string_view(u).substr(size_t(b), size_t(e - b))));
    e = b;
  }
  std::reverse(out.begin(), out.end());
  return out;
}

std::vector<std::string> splitlines(std::string_view s, bool keepends) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t k = 0; k < s.size(); ++k) {
    if (s[k] != '\n' && s[k] != '\r') continue;
    size_t end = k;
    if (s[k] == '\r' && k + 1 < s.size() && s[k + 1] == '\n') ++k;
    out.emplace_back(s.substr(start, (keepends ? k + 1 : end) - start));
    start = k + 1;
  }
  if (start < s.size()) out.emplace_back(s.substr(start));
  return out;
}

std::string replace(std::string_view s, std::string_view old, std::string_view repl, long long count) {
  std::string out;
  if (old.empty()) {
    // Python inserts repl between every code point (and at both ends).
    std::u32string u = utf8_decode(s);
    long long n = 0;
    for (char32_t c : u) {
      if (count < 0 || n < count) {
        out += repl;
        ++n;
      }
      utf8_append(out, c);
    }
    if (count < 0 || n < count) out += repl;
    return out;
  }
  size_t start = 0;
  long long n = 0;
  while (count < 0 || n < count) {
    size_t at = s.find(old, start);
    if (at == std::string_view::npos) break;
    out.append(s.substr(start, at - start));
    out.append(repl);
    start = at + old.size();
    ++n;
  }
  out.append(s.substr(start));
  return out;
}

std::string upper(std::string_view s) {
  // Python applies full case mapping; the one multi-character case common in chat text is the
  // German sharp s (utf8proc only has the one-to-one mappings).
  std::string out;
  out.reserve(s.size());
  for (char32_t c : utf8_decode(s)) {
    if (c == 0xDF) out += "SS";
    else utf8_append(out, to_upper(c));
  }
  return out;
}
std::string lower(std::string_view s) { return map_chars(s, to_lower); }
std::string swapcase(std::string_view s) {
  return map_chars(s, [](char32_t c) { return is_upper_char(c) ? to_lower(c) : is_lower_char(c) ? to_upper(c) : c; });
}

std::string title(std::string_view s) {
  // Python: a letter following a cased letter is lowered, any other letter is title-cased.
  std::string out;
  bool prev_cased = false;
  for (char32_t c : utf8_decode(s)) {
    utf8_append(out, prev_cased ? to_lower(c) : to_title(c));
    prev_cased = is_cased(c);
  }
  return out;
}

std::string capitalize(std::string_view s) {
  std::u32string u = utf8_decode(s);
  std::string out;
  for (size_t k = 0; k < u.size(); ++k) utf8_append(out, k == 0 ? to_title(u[k]) : to_lower(u[k]));
  return out;
}

long long count(std::string_view s, std::string_view sub) {
  if (sub.empty()) return (long long)utf8_decode(s).size() + 1;
  long long n = 0;
  for (size_t at = s.find(sub); at != std::string_view::npos; at = s.find(sub, at + sub.size())) ++n;
  return n;
}

long long find(std::string_view s, std::string_view sub, bool reverse) {
  size_t at = reverse ? s.rfind(sub) : s.find(sub);
  if (at == std::string_view::npos) return -1;
  long long cps = 0;
  for (size_t k = 0; k < at; ++k) cps += (static_cast<unsigned char>(s[k]) & 0xC0) != 0x80;
  return cps;
}

bool is_class(std::string_view s, CharClass cls) {
  std::u32string u = utf8_decode(s);
  if (u.empty()) return false;
  switch (cls) {
    case CharClass::kLower:
    case CharClass::kUpper: {
      bool any_cased = false;
      for (char32_t c : u) {
        if (cls == CharClass::kLower ? is_upper_char(c) : is_lower_char(c)) return false;
        any_cased |= is_cased(c);
      }
      return any_cased;
    }
    case CharClass::kTitle: return title(s) == s && std::any_of(u.begin(), u.end(), is_cased);
    default: break;
  }
  for (char32_t c : u) {
    bool ok = false;
    switch (cls) {
      case CharClass::kDigit:
      case CharClass::kDecimal: ok = is_decimal_char(c); break;
      case CharClass::kNumeric: ok = is_numeric_char(c); break;
      case CharClass::kAlpha: ok = is_alpha_char(c); break;
      case CharClass::kAlnum: ok = is_alpha_char(c) || is_numeric_char(c); break;
      case CharClass::kSpace: ok = is_py_space(c); break;
      default: break;
    }
    if (!ok) return false;
  }
  return true;
}

}  // namespace lathe::tmpl::py
