// The state behind a Tokenizer: the pipeline stages, the added vocabulary and the
// tokenizer_config.json extras. Immutable after loading (the BPE cache locks internally).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "added_vocab.h"
#include "components.h"

namespace lathe::tok::detail {

struct TokenizerImpl {
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Model> model;
  std::unique_ptr<PostProcessor> post_processor;
  std::unique_ptr<Decoder> decoder;

  std::vector<AddedToken> added;  // stable storage: the matchers point into it
  std::unordered_map<int32_t, size_t> added_by_id;
  Vocab added_by_content;
  AddedMatcher raw_matcher;         // normalized=false tokens, matched on the raw text
  AddedMatcher normalized_matcher;  // normalized=true tokens, matched on normalized pieces

  std::string bos_token, eos_token;
  std::optional<int32_t> bos_id, eos_id;
  bool add_bos = false, add_eos = false;
  int32_t vocab_size = 0;

  // Raw token string for an id (added vocab first, then the model), or nullptr.
  const std::string* token_of(int32_t id) const;
  bool is_special(int32_t id) const;
};

}  // namespace lathe::tok::detail
