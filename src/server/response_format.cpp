#include "server/response_format.h"

#include "server/api_error.h"

namespace lathe::server {

namespace {

// The field's shape, with messages naming the offending member.
void check_shape(const nlohmann::json& value) {
  if (!value.is_object()) bad_field("response_format", "'response_format' must be an object, not {}", value.type_name());
  const auto type = value.find("type");
  if (type == value.end() || !type->is_string())
    bad_field("response_format.type", "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"");
  const std::string t = type->get<std::string>();
  if (t == "text" || t == "json_object") return;
  if (t != "json_schema")
    bad_field("response_format.type", "'response_format.type' is \"{}\"; use \"text\", \"json_object\" or \"json_schema\"", t);
  const auto js = value.find("json_schema");
  if (js == value.end() || !js->is_object())
    bad_field("response_format.json_schema", "'response_format.json_schema' must be an object with a 'schema'");
  const auto schema = js->find("schema");
  if (schema != js->end() && !schema->is_object() && !schema->is_boolean())
    bad_field("response_format.json_schema.schema", "'response_format.json_schema.schema' must be a JSON Schema object");
  const auto name = js->find("name");
  if (name != js->end() && !name->is_string())
    bad_field("response_format.json_schema.name", "'response_format.json_schema.name' must be a string");
  const auto strict = js->find("strict");
  if (strict != js->end() && !strict->is_null() && !strict->is_boolean())
    bad_field("response_format.json_schema.strict", "'response_format.json_schema.strict' must be a boolean");
}

}  // namespace

void apply_response_format(const nlohmann::json* value, engine::BatchRequest& request, const tok::Tokenizer& tokenizer) {
  if (!value) return;
  check_shape(*value);
  try {
    request.response_format = engine::make_response_format(*value, tokenizer);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kInvalidArgument) throw;
    throw ApiError(400, e.what(), "response_format", "unsupported_schema");
  }
}

}  // namespace lathe::server
