// What the routes need to know about the one model being served: its public name, tokenizer, chat
// template (when it has one), context length and sampling defaults. Built once at startup, read
// by every handler thread (nothing here changes after that).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "template/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace lathe::server {

struct ServedModel {
  std::string name;                                   // the "model" clients send and /v1/models lists
  int64_t created = 0;                                // unix time the server started
  const tok::Tokenizer* tokenizer = nullptr;          // required
  std::optional<tmpl::ChatTemplateSource> chat_template;  // none: /v1/chat/completions answers 400
  int64_t context = 0;                                // the model's context length (tokens)
  int64_t kv_positions = 0;                           // KV-cache positions the engine holds in all
  int64_t vocab_size = 0;
  std::vector<int32_t> eos_ids;                       // generation stops at these
  model::GenerationDefaults generation;               // unset request fields fall back to these
};

}  // namespace lathe::server
