// JSON text for responses. Model output and echoed input can hold invalid UTF-8 (a token that ends
// mid-character); nlohmann's dump throws on it by default, so every response goes through here,
// which writes U+FFFD instead.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace lathe::server {

inline std::string to_text(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace lathe::server
