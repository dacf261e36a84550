// Single-sequence generation: prefill the prompt, then decode token by token through the KV cache,
// sampling with the chain, stopping at EOS ids (unless ignored), stop strings or the token limit,
// and streaming text as it becomes final.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <vector>

#include "engine/sampler.h"
#include "model/model.h"
#include "ops/ops.h"
#include "tokenizer/tokenizer.h"

namespace lathe::engine {

struct GenerateConfig {
  int64_t max_new_tokens = 128;
  SamplerConfig sampler;
  bool ignore_eos = false;
  std::vector<int32_t> eos_ids;  // usually the model's generation_config eos ids
  std::vector<std::string> stop; // stop strings (not included in the output)
};

enum class FinishReason { kLength, kEos, kStop, kContext };
const char* to_string(FinishReason r);

struct GenerateResult {
  std::vector<int32_t> ids;  // generated ids only (an EOS that ended generation is included)
  std::string text;          // streamed text, stop string excluded
  FinishReason finish = FinishReason::kLength;
  int64_t prompt_tokens = 0;
  int64_t reused_tokens = 0;  // prompt tokens whose K/V came from the session
  double prefill_seconds = 0;
  double decode_seconds = 0;  // time for ids.size() - 1 decode steps after the first token
};

// A conversation's KV cache and the tokens it holds, kept across generate() calls so a prompt that
// extends the previous one (multi-turn chat) only prefills the new part.
struct Session {
  Session(const model::Runner& runner, int64_t capacity) : cache(runner.config(), capacity, runner.ops()) {}
  model::KvCache cache;
  std::vector<int32_t> tokens;  // exactly the tokens whose K/V are in the cache
};

class Generator {
 public:
  // `tokenizer` may be null: then no text is produced and stop strings are not available.
  Generator(const model::Runner& runner, const tok::Tokenizer* tokenizer);

  // on_text receives text pieces as they become final (may be null).
  // With a session, the longest common prefix of session->tokens and the prompt is reused.
  GenerateResult generate(std::span<const int32_t> prompt, const GenerateConfig& config,
                          const std::function<void(std::string_view)>& on_text = nullptr,
                          Session* session = nullptr);

 private:
  const model::Runner& runner_;
  const tok::Tokenizer* tokenizer_;
};

}  // namespace lathe::engine
