// OpenAI's request bodies -> engine work. parse_chat_request / parse_completion_request validate
// every field they read (400 naming the field), render the chat template or tokenize the prompt,
// check the prompt against the context, and fill an engine::BatchRequest with the sampling
// settings, limits, stop strings and logprob options; fields they do not know are ignored.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/batch_engine.h"
#include "server/response_format.h"
#include "server/served_model.h"

namespace lathe::server {

enum class Endpoint { kChat, kCompletion };

struct GenerationJob {
  struct Prompt {
    std::vector<int32_t> ids;
    std::string text;  // what echo prints
  };
  Endpoint endpoint = Endpoint::kCompletion;
  std::vector<Prompt> prompts;   // chat: one; completions: one or a batch (choice p * n + i is prompt p's i-th)
  engine::BatchRequest request;  // sampling, limits, stop strings, logprobs; its prompt is set per prompt
  int64_t n = 1;                 // completions of each prompt
  bool stream = false;
  bool include_usage = false;    // stream_options.include_usage: a last chunk with the token counts
  bool logprobs = false;         // per-token logprobs in the response
  int64_t top_logprobs = 0;      // the likeliest alternatives per token
  bool echo = false;             // completions: the prompt (and its logprobs) before each completion

  engine::BatchRequest request_for(size_t prompt) const;  // `request` with prompts[prompt]'s ids
  int64_t prompt_tokens() const;                          // over every prompt
};

GenerationJob parse_chat_request(const nlohmann::json& body, const ServedModel& model);
GenerationJob parse_completion_request(const nlohmann::json& body, const ServedModel& model);

// The "model" field, when given, must name the served model (404 otherwise, as OpenAI answers).
void check_model_name(const nlohmann::json& body, const ServedModel& model);

// Chat messages in OpenAI's shape -> the plain {role, content} list a chat template reads (content
// parts of type "text" are joined). 400 naming messages[i] for anything malformed.
nlohmann::ordered_json template_messages(const nlohmann::json* messages);

}  // namespace lathe::server
