// OpenAI's response shapes for one generation request: the whole chat.completion / text_completion
// object, or the chat.completion.chunk / text_completion chunks of a stream, built from the
// engine's events as they arrive (n choices, finish reasons, usage, chat-style and
// completions-style logprobs, echo of the prompt with its logprobs; a batch of prompts gives n
// choices per prompt).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/openai_protocol.h"
#include "server/request_channel.h"
#include "server/served_model.h"

namespace lathe::server {

class ResponseBuilder {
 public:
  ResponseBuilder(const GenerationJob& job, const ServedModel& model);

  // Stream chunks: the opening ones (chat: the assistant role per choice), one per update that
  // carries text, logprobs or an end, and the closing ones (the usage chunk when asked).
  std::vector<nlohmann::json> opening_chunks() const;
  std::vector<nlohmann::json> apply(const SequenceUpdate& update);
  std::vector<nlohmann::json> closing_chunks() const;

  nlohmann::json whole() const;  // the non-streamed response (after every update was applied)
  nlohmann::json usage() const;
  bool finished() const;         // every choice ended

 private:
  struct Choice {
    std::string text;
    std::optional<std::string> finish_reason;
    bool started = false;      // its first update arrived (echo goes before it)
    int64_t tokens = 0;        // generated tokens (an ending EOS included, as the usage counts it)
    nlohmann::json chat_lp = nlohmann::json::array();  // chat logprobs content entries
    nlohmann::json tokens_lp = nlohmann::json::object();  // completions logprobs arrays
    int64_t offset = 0;        // completions text_offset of the next token
    int64_t cached = 0;        // prompt positions the prefix cache served (known when it ends)
  };
  nlohmann::json chunk(nlohmann::json choices) const;
  nlohmann::json empty_completion_lp() const;
  void add_completion_token(Choice& c, int32_t token, std::optional<float> logprob,
                            const std::vector<std::pair<int32_t, float>>* top) const;
  nlohmann::json chat_entry(int32_t token, float logprob, const std::vector<std::pair<int32_t, float>>& top) const;
  std::string token_text(int32_t token) const;
  // Echo: the prompt's text, and its tokens' logprobs when asked, at the start of a choice.
  void echo_prompt(Choice& c, size_t prompt, std::string* text_out);

  const GenerationJob& job_;
  const ServedModel& model_;
  std::string id_;
  int64_t created_;
  std::vector<Choice> choices_;  // prompt p's i-th completion is choice p * n + i
  std::vector<std::vector<engine::TokenLogprob>> prompt_lp_;  // per prompt, from its first choice's first event
};

const char* finish_reason_name(engine::FinishReason r);

}  // namespace lathe::server
