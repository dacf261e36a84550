// OpenAI's response_format for the engine: {"type": "json_object"} or {"type": "json_schema",
// "json_schema": {"name": ..., "schema": {...}, "strict": ...}} become a JSON grammar over the
// model's tokenizer, enforced at every step by TokenConstraint (tokens the grammar rejects get
// -inf before the sampler chain; EOS only once the document is complete).
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <vector>

#include "engine/grammar/json_grammar.h"
#include "engine/grammar/json_matcher.h"
#include "engine/grammar/token_vocab.h"
#include "engine/sampler.h"
#include "tokenizer/tokenizer.h"

namespace lathe::engine {

// What a request asks its output to be: immutable, shared by requests (and n > 1 completions).
struct ResponseFormat {
  std::shared_ptr<const JsonGrammar> grammar;
  std::shared_ptr<const TokenVocab> vocab;
};

// The server's entry point. Returns null for {"type": "text"} (no constraint). Throws lathe::Error
// kInvalidArgument with a message fit for an HTTP 400 for anything else it cannot enforce (unknown
// type, missing schema, unsupported schema keyword). The vocabulary is built once per tokenizer.
// Both JSON flavours are accepted; with ordered_json, properties are generated in the schema's order.
std::shared_ptr<const ResponseFormat> make_response_format(const nlohmann::ordered_json& response_format,
                                                           const tok::Tokenizer& tokenizer,
                                                           const GrammarOptions& options = {});
std::shared_ptr<const ResponseFormat> make_response_format(const nlohmann::json& response_format,
                                                           const tok::Tokenizer& tokenizer,
                                                           const GrammarOptions& options = {});

// One request's constraint: the grammar's state over its generated tokens.
class TokenConstraint {
 public:
  explicit TokenConstraint(std::shared_ptr<const ResponseFormat> format);

  // The request's next token from `logits` (the model's full row): disallowed tokens are masked to
  // -inf, `eos` ids stay only when the document is complete, then `sampler` runs its chain. The
  // token is taken (its bytes fed to the grammar). If no token can continue the document (a
  // vocabulary missing bytes the grammar needs), an EOS id if there is one, else done() turns true.
  int32_t sample(Sampler& sampler, std::span<const float> logits, std::span<const int32_t> history,
                 std::span<const int32_t> eos);
  // Feeds a token chosen elsewhere; false (state unchanged) when the grammar rejects it.
  bool accept(int32_t token);
  // The document is complete and nothing may follow (or no token could continue it): stop.
  bool done() const { return stuck_ || matcher_.terminated(); }
  const JsonMatcher& matcher() const { return matcher_; }

 private:
  int32_t draw(Sampler& sampler, std::span<const int32_t> history);  // from masked_

  std::shared_ptr<const ResponseFormat> format_;
  JsonMatcher matcher_;
  std::vector<uint8_t> mask_;
  std::vector<float> masked_;
  std::vector<int32_t> order_;  // draw()'s candidates
  std::vector<float> values_;
  bool stuck_ = false;
};

}  // namespace lathe::engine
