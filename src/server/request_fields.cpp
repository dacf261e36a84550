#include "server/request_fields.h"

#include <cmath>

#include "server/api_error.h"

namespace lathe::server {

namespace {
const char* type_name(const nlohmann::json& v) { return v.type_name(); }
}  // namespace

RequestFields::RequestFields(const nlohmann::json& body) : body_(body) {
  if (!body.is_object()) bad_field("", "the request body must be a JSON object, not {}", type_name(body));
}

const nlohmann::json* RequestFields::get(const std::string& name) const {
  const auto it = body_.find(name);
  if (it == body_.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<bool> RequestFields::boolean(const std::string& name) const {
  const nlohmann::json* v = get(name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) bad_field(name, "'{}' must be a boolean, not {}", name, type_name(*v));
  return v->get<bool>();
}

int64_t integer_value(const nlohmann::json& v, const std::string& name, int64_t min, int64_t max) {
  // Integral floats (3.0) pass, as Python's validators let them; anything else must fit in range.
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(max) || (min > 0 && u < uint64_t(min))) bad_field(name, "'{}' is {}; it must be within {}..{}", name, u, min, max);
    return int64_t(u);
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < min || i > max) bad_field(name, "'{}' is {}; it must be within {}..{}", name, i, min, max);
    return i;
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (!std::isfinite(d) || d != std::floor(d)) bad_field(name, "'{}' must be an integer, not {}", name, v.dump());
    if (d < double(min) || d > double(max)) bad_field(name, "'{}' is {}; it must be within {}..{}", name, d, min, max);
    return int64_t(d);
  }
  bad_field(name, "'{}' must be an integer, not {}", name, type_name(v));
}

std::optional<int64_t> RequestFields::integer(const std::string& name, int64_t min, int64_t max) const {
  const nlohmann::json* v = get(name);
  if (!v) return std::nullopt;
  return integer_value(*v, name, min, max);
}

std::optional<double> RequestFields::number(const std::string& name, double min, double max) const {
  const nlohmann::json* v = get(name);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad_field(name, "'{}' must be a number, not {}", name, type_name(*v));
  const double d = v->get<double>();
  if (!std::isfinite(d) || d < min || d > max) bad_field(name, "'{}' is {}; it must be within {}..{}", name, d, min, max);
  return d;
}

std::optional<std::string> RequestFields::string(const std::string& name) const {
  const nlohmann::json* v = get(name);
  if (!v) return std::nullopt;
  if (!v->is_string()) bad_field(name, "'{}' must be a string, not {}", name, type_name(*v));
  return v->get<std::string>();
}

std::vector<std::string> RequestFields::strings(const std::string& name, size_t max_items) const {
  const nlohmann::json* v = get(name);
  if (!v) return {};
  if (v->is_string()) return {v->get<std::string>()};
  if (!v->is_array()) bad_field(name, "'{}' must be a string or an array of strings, not {}", name, type_name(*v));
  if (v->size() > max_items) bad_field(name, "'{}' has {} entries; at most {} are allowed", name, v->size(), max_items);
  std::vector<std::string> out;
  for (const auto& s : *v) {
    if (!s.is_string()) bad_field(name, "'{}' must hold strings only, not {}", name, type_name(s));
    out.push_back(s.get<std::string>());
  }
  return out;
}

std::vector<int32_t> RequestFields::token_ids(const std::string& name, int64_t vocab) const {
  const nlohmann::json* v = get(name);
  if (!v) return {};
  if (!v->is_array()) bad_field(name, "'{}' must be an array of token ids, not {}", name, type_name(*v));
  std::vector<int32_t> ids;
  ids.reserve(v->size());
  for (const auto& t : *v) ids.push_back(int32_t(integer_value(t, name, 0, vocab - 1)));
  return ids;
}

}  // namespace lathe::server
