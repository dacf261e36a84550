// response_format (json_object / json_schema): the OpenAI field checked for shape (a 400 naming
// response_format.* otherwise) and turned into a grammar constraint on the engine request
// (engine::make_response_format: grammar-constrained sampling). A schema the grammar cannot enforce
// is a 400 naming the keyword, never silently unconstrained output.
#pragma once

#include <nlohmann/json.hpp>

#include "engine/batch_engine.h"
#include "tokenizer/tokenizer.h"

namespace lathe::server {

// `value`: the request's response_format (null: text, no constraint).
void apply_response_format(const nlohmann::json* value, engine::BatchRequest& request, const tok::Tokenizer& tokenizer);

}  // namespace lathe::server
