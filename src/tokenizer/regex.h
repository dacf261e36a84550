// PCRE2 (UTF + UCP, JIT when available) stand-in for the Oniguruma regexes HF tokenizer.json
// files carry (Split pre-tokenizer, Replace normalizer/decoder, the GPT-2 ByteLevel regex).
// PCRE2 10.42 knows Unicode 14 while HF's Oniguruma knows 16: chars assigned since (CJK Ext. H,
// new emoji, ...) would fall outside \p{L}, \p{So}, \d, \w. Patterns using those get a second
// compiled form with the newer chars added (unicode_delta.inc), used only on input holding one.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lathe::tok::detail {

class Regex {
 public:
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-overlapping, non-empty matches as [begin, end) byte offsets, left to right.
  // `s` must be valid UTF-8 (callers validate once; PCRE2's per-call check would be O(n^2)).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;        // pcre2_code_8*
  void* code_delta_ = nullptr;  // with the post-Unicode-14 ranges added; null if the same
  bool jit_ = false;
};

}  // namespace lathe::tok::detail
