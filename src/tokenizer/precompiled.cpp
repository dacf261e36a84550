#include "precompiled.h"

#include <utf8proc.h>

#include "core/error.h"
#include "unicode.h"

namespace lathe::tok::detail {

namespace {

std::string base64_decode(std::string_view in) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=' || c == '\n' || c == '\r') continue;
    int v = val(c);
    if (v < 0) fail(ErrorKind::kFormat, "tokenizer.json: precompiled_charsmap is not valid base64");
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xFF);
    }
  }
  return out;
}

class PrecompiledNorm : public Normalizer {
 public:
  explicit PrecompiledNorm(const std::string& blob) {
    if (blob.empty()) return;
    if (blob.size() < 4) fail(ErrorKind::kFormat, "tokenizer.json: precompiled_charsmap is truncated");
    uint32_t trie_bytes = uint32_t(uint8_t(blob[0])) | uint32_t(uint8_t(blob[1])) << 8 |
                          uint32_t(uint8_t(blob[2])) << 16 | uint32_t(uint8_t(blob[3])) << 24;
    if (trie_bytes % 4 != 0 || 4 + size_t(trie_bytes) > blob.size())
      fail(ErrorKind::kFormat, "tokenizer.json: precompiled_charsmap trie size {} is invalid", trie_bytes);
    units_.resize(trie_bytes / 4);
    for (size_t k = 0; k < units_.size(); ++k) {
      const auto* p = reinterpret_cast<const uint8_t*>(blob.data()) + 4 + 4 * k;
      units_[k] = uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
    }
    normalized_ = blob.substr(4 + trie_bytes);
  }

  void normalize(std::string& s) const override {
    if (units_.empty() || s.empty()) return;
    std::string out;
    out.reserve(s.size());
    // Walk extended grapheme clusters.
    size_t i = 0;
    while (i < s.size()) {
      size_t g_begin = i;
      utf8proc_int32_t state = 0;
      char32_t prev = next_cp(s, i);
      while (i < s.size()) {
        size_t j = i;
        char32_t c = next_cp(s, j);
        if (utf8proc_grapheme_break_stateful(utf8proc_int32_t(prev), utf8proc_int32_t(c), &state)) break;
        prev = c;
        i = j;
      }
      std::string_view g(s.data() + g_begin, i - g_begin);
      if (g.size() < 6) {
        if (auto r = transform(g)) {
          out.append(*r);
          continue;
        }
      }
      for (size_t k = 0; k < g.size();) {
        size_t start = k;
        next_cp(g, k);
        std::string_view part = g.substr(start, k - start);
        if (auto r = transform(part)) out.append(*r);
        else out.append(part);
      }
    }
    s = std::move(out);
  }

 private:
  // darts-clone common prefix search; HF uses the first (shortest) hit's replacement.
  std::optional<std::string_view> transform(std::string_view key) const {
    auto has_leaf = [](uint32_t u) { return ((u >> 8) & 1) != 0; };
    auto value = [](uint32_t u) { return u & ((1u << 31) - 1); };
    auto label = [](uint32_t u) { return u & ((1u << 31) | 0xFF); };
    auto offset = [](uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); };
    size_t pos = 0;
    pos ^= offset(units_[0]);
    for (unsigned char c : key) {
      pos ^= c;
      if (pos >= units_.size()) return std::nullopt;
      uint32_t u = units_[pos];
      if (label(u) != c) return std::nullopt;
      pos ^= offset(u);
      if (has_leaf(u)) {
        if (pos >= units_.size()) return std::nullopt;
        size_t idx = value(units_[pos]);
        if (idx >= normalized_.size()) return std::nullopt;
        size_t end = normalized_.find('\0', idx);
        if (end == std::string::npos) end = normalized_.size();
        return std::string_view(normalized_).substr(idx, end - idx);
      }
    }
    return std::nullopt;
  }

  std::vector<uint32_t> units_;
  std::string normalized_;
};

}  // namespace

std::unique_ptr<Normalizer> make_precompiled_normalizer(const json& j) {
  std::string blob;
  if (j.contains("precompiled_charsmap") && j.at("precompiled_charsmap").is_string())
    blob = base64_decode(j.at("precompiled_charsmap").get<std::string>());
  return std::make_unique<PrecompiledNorm>(blob);
}

}  // namespace lathe::tok::detail
