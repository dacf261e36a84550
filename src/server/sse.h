// Server-sent events as OpenAI streams them: each chunk one `data: <json>` event ended by a blank
// line, and a final `data: [DONE]`.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "server/json_text.h"

namespace lathe::server {

inline std::string sse_event(const nlohmann::json& payload) { return "data: " + to_text(payload) + "\n\n"; }
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

}  // namespace lathe::server
