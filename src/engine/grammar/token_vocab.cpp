#include "engine/grammar/token_vocab.h"

#include <algorithm>
#include <map>
#include <mutex>

#include "engine/grammar/utf8_lead.h"

namespace lathe::engine {

namespace {
// The string-body rules of JsonMatcher (RFC 8259 string characters, RFC 3629 UTF-8) from a
// character boundary.
StringScan scan_string(std::string_view b) {
  StringScan s;
  uint8_t left = 0, lo = 0, hi = 0;  // continuation bytes still due, and the next one's range
  for (size_t i = 0; i < b.size(); ++i) {
    const uint8_t c = uint8_t(b[i]);
    if (left > 0) {
      if (c < lo || c > hi) return s;
      --left;
      lo = 0x80, hi = 0xBF;
      continue;
    }
    if (c == '"' || c == '\\') {
      s.kind = StringScan::kExits;
      s.exit = uint32_t(i);
      return s;
    }
    if (c < 0x20) return s;
    ++s.cps;
    if (c < 0x80) continue;
    const Utf8Lead lead = utf8_lead(c);
    if (lead.left == 0) return s;
    left = lead.left, lo = lead.lo, hi = lead.hi;
  }
  s.kind = StringScan::kInside;
  return s;
}
}  // namespace

TokenVocab::TokenVocab(const tok::Tokenizer& tokenizer) : tokenizer_(tokenizer) {
  const int32_t n = tokenizer.vocab_size();
  by_id_.assign(size_t(n), {0, 0});
  for (int32_t id = 0; id < n; ++id) {
    if (tokenizer.is_special(id)) continue;
    const std::optional<std::string> b = tokenizer.token_bytes(id);
    if (!b || b->empty()) continue;
    by_id_[size_t(id)] = {uint32_t(blob_.size()), uint32_t(b->size())};
    blob_ += *b;
    sorted_.push_back(id);
    max_length_ = std::max(max_length_, b->size());
  }
  std::sort(sorted_.begin(), sorted_.end(), [&](int32_t a, int32_t b) {
    const std::string_view x = bytes(a), y = bytes(b);
    return x != y ? x < y : a < b;
  });
  scans_.resize(by_id_.size());
  for (int32_t id : sorted_) scans_[size_t(id)] = scan_string(bytes(id));
  lcp_.assign(sorted_.size(), 0);
  for (size_t i = 1; i < sorted_.size(); ++i) {
    const std::string_view x = bytes(sorted_[i - 1]), y = bytes(sorted_[i]);
    uint32_t k = 0;
    while (k < x.size() && k < y.size() && x[k] == y[k]) ++k;
    lcp_[i] = k;
  }
}

std::string_view TokenVocab::bytes(int32_t id) const {
  if (id < 0 || id >= size()) return {};
  const auto [offset, length] = by_id_[size_t(id)];
  return std::string_view(blob_).substr(offset, length);
}

std::shared_ptr<const TokenVocab> TokenVocab::of(const tok::Tokenizer& tokenizer) {
  // Keyed by the tokenizer's shared state: a vocabulary holds that state, so while an entry is
  // alive its key cannot be freed and reused by another tokenizer.
  static std::mutex mu;
  static std::map<const void*, std::weak_ptr<const TokenVocab>> cache;
  const void* key = &tokenizer.impl();
  std::lock_guard lock(mu);
  if (auto it = cache.find(key); it != cache.end())
    if (auto v = it->second.lock()) return v;
  std::erase_if(cache, [](const auto& e) { return e.second.expired(); });
  auto v = std::make_shared<const TokenVocab>(tokenizer);
  cache[key] = v;
  return v;
}

}  // namespace lathe::engine
