#include "server/response_format.h"

#include "server/api_error.h"

namespace lathe::server {

ResponseFormat parse_response_format(const nlohmann::json* value) {
  ResponseFormat f;
  if (!value) return f;
  if (!value->is_object()) bad_field("response_format", "'response_format' must be an object, not {}", value->type_name());
  const auto type = value->find("type");
  if (type == value->end() || !type->is_string())
    bad_field("response_format.type", "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"");
  const std::string t = type->get<std::string>();
  if (t == "text") return f;
  if (t == "json_object") {
    f.kind = ResponseFormat::Kind::kJsonObject;
    return f;
  }
  if (t != "json_schema")
    bad_field("response_format.type", "'response_format.type' is \"{}\"; use \"text\", \"json_object\" or \"json_schema\"", t);
  f.kind = ResponseFormat::Kind::kJsonSchema;
  const auto js = value->find("json_schema");
  if (js == value->end() || !js->is_object())
    bad_field("response_format.json_schema", "'response_format.json_schema' must be an object with a 'schema'");
  const auto schema = js->find("schema");
  if (schema != js->end() && !schema->is_object() && !schema->is_boolean())
    bad_field("response_format.json_schema.schema", "'response_format.json_schema.schema' must be a JSON Schema object");
  if (schema != js->end()) f.schema = *schema;
  const auto name = js->find("name");
  if (name != js->end() && !name->is_string())
    bad_field("response_format.json_schema.name", "'response_format.json_schema.name' must be a string");
  if (name != js->end()) f.name = name->get<std::string>();
  const auto strict = js->find("strict");
  if (strict != js->end() && !strict->is_null() && !strict->is_boolean())
    bad_field("response_format.json_schema.strict", "'response_format.json_schema.strict' must be a boolean");
  if (strict != js->end() && strict->is_boolean()) f.strict = strict->get<bool>();
  return f;
}

void apply_response_format(const ResponseFormat& format, engine::BatchRequest& request, const ResponseFormatHook& hook) {
  if (format.kind == ResponseFormat::Kind::kText) return;
  if (!hook)
    throw ApiError(400,
                   "response_format json_object and json_schema are not supported yet (grammar-constrained sampling "
                   "is being built); use {\"type\": \"text\"}",
                   "response_format", "unsupported");
  hook(format, request);
}

}  // namespace lathe::server
