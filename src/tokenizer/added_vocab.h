// Added tokens (tokenizer.json "added_tokens"): found in the text before the model sees it, with
// HF AddedVocabulary semantics: leftmost-longest matching, single_word boundary checks,
// lstrip/rstrip swallowing neighbouring whitespace, special tokens optionally left as plain text.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lathe::tok::detail {

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// One piece of a split text: either plain text [b, e) or an added token covering [b, e).
struct AddedSplit {
  size_t b, e;
  int32_t id;  // -1 for plain text
};

class AddedMatcher {
 public:
  // `patterns[i]` is what token `tokens[i]` matches (its content, normalized when it is).
  void add(std::string pattern, const AddedToken* token);
  bool empty() const { return tokens_.empty(); }
  // Splits `text` into plain pieces and token matches covering it in order. With
  // skip_special, special tokens are found but left as text (HF encode_special_tokens).
  std::vector<AddedSplit> split(std::string_view text, bool skip_special) const;

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> kids;
    int32_t token = -1;  // index into tokens_
  };
  int32_t child(int32_t node, uint8_t b) const;
  std::vector<Node> nodes_{Node{}};
  std::vector<const AddedToken*> tokens_;
};

}  // namespace lathe::tok::detail
