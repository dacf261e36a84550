// A tokenizer's vocabulary as byte strings, for grammar-constrained sampling: each id's exact bytes
// (tok::Tokenizer::token_bytes) and the same strings sorted, with each one's common prefix length
// with the one before, which is what JsonMatcher::allowed_tokens walks. Special tokens (and tokens
// that add no bytes) are left out: they are never part of a JSON text. Built once per tokenizer
// (~0.1 s for 128k tokens) and shared by every request through TokenVocab::of.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace lathe::engine {

// What a token does when it starts inside a JSON string at a character boundary (grammar-free, so
// computed once per vocabulary): stays inside (code points `cps`, possibly ending mid-character),
// leaves the plain string part at byte `exit` (a '"' or '\\' after `cps` code points), or cannot be
// string content (a control byte, invalid UTF-8). JsonMatcher's string fast path reads these
// instead of walking the bytes of the ~all tokens a string allows.
struct StringScan {
  enum Kind : uint8_t { kInside, kExits, kInvalid };
  Kind kind = kInvalid;
  uint32_t cps = 0;
  uint32_t exit = 0;
};

class TokenVocab {
 public:
  explicit TokenVocab(const tok::Tokenizer& tokenizer);
  // The vocabulary of `tokenizer`, built on first use and shared while anyone holds it.
  static std::shared_ptr<const TokenVocab> of(const tok::Tokenizer& tokenizer);

  int32_t size() const { return int32_t(by_id_.size()); }  // ids 0..size-1
  // The bytes of `id` as text; empty for special tokens and ids outside the vocabulary.
  std::string_view bytes(int32_t id) const;

  // Grammar tokens in byte order.
  size_t sorted_count() const { return sorted_.size(); }
  std::string_view sorted_bytes(size_t i) const { return bytes(sorted_[i]); }
  int32_t sorted_id(size_t i) const { return sorted_[i]; }
  uint32_t sorted_lcp(size_t i) const { return lcp_[i]; }  // common prefix with entry i - 1 (0 for i = 0)
  size_t max_length() const { return max_length_; }
  const StringScan& string_scan(int32_t id) const { return scans_[size_t(id)]; }

 private:
  tok::Tokenizer tokenizer_;  // keeps the tokenizer's state (the of() cache's key) alive
  std::string blob_;
  std::vector<std::pair<uint32_t, uint32_t>> by_id_;  // (offset, length) into blob_
  std::vector<int32_t> sorted_;
  std::vector<uint32_t> lcp_;
  std::vector<StringScan> scans_;  // by id
  size_t max_length_ = 0;
};

}  // namespace lathe::engine
