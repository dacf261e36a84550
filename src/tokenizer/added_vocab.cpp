#include "added_vocab.h"

#include "unicode.h"

namespace lathe::tok::detail {

int32_t AddedMatcher::child(int32_t node, uint8_t b) const {
  for (auto [k, n] : nodes_[size_t(node)].kids)
    if (k == b) return n;
  return -1;
}

void AddedMatcher::add(std::string pattern, const AddedToken* token) {
  if (pattern.empty()) return;
  int32_t node = 0;
  for (unsigned char b : pattern) {
    int32_t c = child(node, b);
    if (c < 0) {
      c = int32_t(nodes_.size());
      nodes_[size_t(node)].kids.emplace_back(b, c);
      nodes_.push_back(Node{});
    }
    node = c;
  }
  if (nodes_[size_t(node)].token < 0) {
    nodes_[size_t(node)].token = int32_t(tokens_.size());
    tokens_.push_back(token);
  }
}

namespace {
// Rust is_alphanumeric || '_': what HF's single_word boundary test calls a word char.
bool is_word_char(char32_t c) { return c == '_' || is_alphanumeric(c); }

char32_t last_char(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return next_cp(s, i);
}
}  // namespace

std::vector<AddedSplit> AddedMatcher::split(std::string_view text, bool skip_special) const {
  std::vector<AddedSplit> out;
  if (tokens_.empty() || text.empty()) {
    if (!text.empty()) out.push_back({0, text.size(), -1});
    return out;
  }
  size_t start_offset = 0;  // end of the last accepted split
  size_t pos = 0;
  while (pos < text.size()) {
    // Longest pattern starting at pos (leftmost-longest: the first pos with a match wins).
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t k = pos; k < text.size(); ++k) {
      node = child(node, static_cast<unsigned char>(text[k]));
      if (node < 0) break;
      if (nodes_[size_t(node)].token >= 0) best = nodes_[size_t(node)].token, best_end = k + 1;
    }
    if (best < 0) {
      ++pos;
      continue;
    }
    const AddedToken& tok = *tokens_[size_t(best)];
    size_t start = pos, stop = best_end;
    pos = best_end;  // a rejected match still consumes its range, as aho-corasick's iterator does
    if (skip_special && tok.special) continue;
    if (tok.single_word) {
      bool start_ok = start == 0 || !is_word_char(last_char(text.substr(0, start)));
      size_t j = stop;
      bool stop_ok = stop == text.size() || !is_word_char(next_cp(text, j));
      if (!start_ok || !stop_ok) continue;
    }
    if (tok.lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t b = s - 1;
        while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
        size_t j = b;
        if (!is_whitespace(next_cp(text, j))) break;
        s = b;
      }
      start = std::max(s, start_offset);
    }
    if (tok.rstrip) {
      while (stop < text.size()) {
        size_t j = stop;
        if (!is_whitespace(next_cp(text, j))) break;
        stop = j;
      }
    }
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, tok.id});
    start_offset = stop;
    pos = std::max(pos, stop);
  }
  if (start_offset < text.size()) out.push_back({start_offset, text.size(), -1});
  return out;
}

}  // namespace lathe::tok::detail
