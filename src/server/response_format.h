// response_format (json_object / json_schema): the hook where grammar-constrained sampling plugs in.
//
// HOOK (issue 6, grammar engineer): the grammar layer provides a ResponseFormatHook that turns a
// validated ResponseFormat into a constraint on the engine request (e.g. a token mask its sampler
// applies each step) and hands it to HttpServer through ServerOptions::response_format. Until one
// is set, {"type": "text"} is accepted and json_object / json_schema answer 400 "not supported yet",
// so no client silently gets unconstrained output it asked to be JSON.
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/batch_engine.h"

namespace lathe::server {

struct ResponseFormat {
  enum class Kind { kText, kJsonObject, kJsonSchema };
  Kind kind = Kind::kText;
  nlohmann::json schema;  // json_schema: the schema object
  std::string name;       // json_schema: its name
  bool strict = false;    // json_schema: "strict"
};

// Validates the field's shape (400 naming response_format.* otherwise); null means text.
ResponseFormat parse_response_format(const nlohmann::json* value);

using ResponseFormatHook = std::function<void(const ResponseFormat& format, engine::BatchRequest& request)>;

// Text needs nothing; JSON formats go to the hook, or are refused while there is none.
void apply_response_format(const ResponseFormat& format, engine::BatchRequest& request, const ResponseFormatHook& hook);

}  // namespace lathe::server
