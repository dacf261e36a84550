// The JSON grammar as an incremental byte-level pushdown automaton: feed bytes, ask whether the
// document is complete, and which tokens of a vocabulary may come next (one walk over the
// vocabulary's sorted byte strings, sharing each common prefix's work and skipping every token
// under a rejected prefix). Every prefix the matcher accepts can still be completed (no dead ends),
// so a sampler restricted to allowed tokens always finishes a valid document, given tokens.
//
// The automaton is nondeterministic where the grammar is (anyOf branches, optional properties that
// share a first byte, enum values with a common prefix): its state is a small set of stacks.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "engine/grammar/json_grammar.h"

namespace lathe::engine {

class TokenVocab;

// One level of the automaton's stack: a value being read (node) and where in it (phase, counters).
struct Frame {
  int32_t node = 0;
  uint8_t phase = 0;
  uint8_t ws = 0;  // whitespace run so far (bounded by GrammarOptions::max_whitespace)
  uint8_t c1 = 0, c2 = 0;
  uint32_t a = 0, b = 0;
  bool operator==(const Frame&) const = default;
};

// Alternative stacks, stored flat (copies reuse their capacity: the vocabulary walk copies one per
// byte). add() skips a stack already present, so the set stays as small as the grammar's ambiguity.
class StackSet {
 public:
  size_t size() const { return ends_.size(); }
  bool empty() const { return ends_.empty(); }
  std::span<const Frame> stack(size_t k) const {
    const uint32_t begin = k ? ends_[k - 1] : 0;
    return {frames_.data() + begin, ends_[k] - begin};
  }
  void clear() {
    frames_.clear();
    ends_.clear();
  }
  void add(std::span<const Frame> s);
  // The string fast path: the one stack's top frame has read `count` code points.
  void set_top_count(uint32_t count) { frames_.back().a = count; }

 private:
  std::vector<Frame> frames_;
  std::vector<uint32_t> ends_;
};

class JsonMatcher {
 public:
  explicit JsonMatcher(std::shared_ptr<const JsonGrammar> grammar);

  // False (and the state unchanged) when the grammar rejects the byte / any byte of `bytes`.
  bool feed(uint8_t byte);
  bool feed(std::string_view bytes);
  // The bytes so far form a complete document (the text may end here).
  bool accepting() const;
  // Complete, and no byte may follow (after the closing brace of an object, say): stop now.
  bool terminated() const;
  // mask[id] = 1 for each token of `vocab` whose bytes feed() would accept now, else 0 (ids past
  // the vocabulary, and special tokens, stay 0).
  void allowed_tokens(const TokenVocab& vocab, std::span<uint8_t> mask);

  const JsonGrammar& grammar() const { return *grammar_; }

 private:
  // out = every successor of `in` on byte c; false when there is none.
  bool advance(const StackSet& in, uint8_t c, StackSet& out);
  void allowed_in_string(const TokenVocab& vocab, std::span<uint8_t> mask);

  std::shared_ptr<const JsonGrammar> grammar_;
  StackSet state_;
  StackSet next_;
  std::vector<Frame> work_;
  std::vector<StackSet> levels_;  // allowed_tokens: the state after each byte of the current token
};

}  // namespace lathe::engine
