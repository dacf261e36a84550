// A small JSON Schema validator for the grammar tests: the subset the grammar compiler takes, written
// from the specification independently of json_schema.cpp, so a document the grammar lets through
// is checked by a second reading of the schema.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace lathe::engine::testing {

inline size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

inline bool has_type(const nlohmann::json& v, const std::string& t) {
  if (t == "object") return v.is_object();
  if (t == "array") return v.is_array();
  if (t == "string") return v.is_string();
  if (t == "number") return v.is_number();
  if (t == "integer") return v.is_number_integer() || (v.is_number_float() && v.get<double>() == double(int64_t(v.get<double>())));
  if (t == "boolean") return v.is_boolean();
  if (t == "null") return v.is_null();
  return false;
}

inline bool conforms(const nlohmann::json& v, const nlohmann::json& s, const nlohmann::json& root) {
  using nlohmann::json;
  if (s.is_boolean()) return s.get<bool>();
  if (s.value("nullable", false) && v.is_null()) return true;
  if (s.contains("$ref")) {
    const std::string r = s["$ref"];
    return conforms(v, r == "#" ? root : root.at(json::json_pointer(r.substr(1))), root);
  }
  if (s.contains("anyOf")) {
    bool any = false;
    for (const auto& b : s["anyOf"]) any |= conforms(v, b, root);
    if (!any) return false;
  }
  if (s.contains("oneOf")) {
    int n = 0;
    for (const auto& b : s["oneOf"]) n += conforms(v, b, root);
    if (n != 1) return false;
  }
  if (s.contains("allOf"))
    for (const auto& b : s["allOf"])
      if (!conforms(v, b, root)) return false;
  if (s.contains("const") && v != s["const"]) return false;
  if (s.contains("enum")) {
    bool in = false;
    for (const auto& e : s["enum"]) in |= v == e;
    if (!in) return false;
  }
  if (s.contains("type")) {
    bool ok = false;
    if (s["type"].is_string()) ok = has_type(v, s["type"]);
    else
      for (const auto& t : s["type"]) ok |= has_type(v, t);
    if (!ok) return false;
  }
  if (v.is_object()) {
    for (const auto& r : s.value("required", json::array()))
      if (!v.contains(r.get<std::string>())) return false;
    const json props = s.value("properties", json::object());
    for (const auto& [k, x] : v.items()) {
      if (props.contains(k)) {
        if (!conforms(x, props[k], root)) return false;
      } else if (s.contains("additionalProperties") && !conforms(x, s["additionalProperties"], root)) {
        return false;
      }
    }
  }
  if (v.is_array()) {
    if (v.size() < s.value("minItems", size_t(0)) || v.size() > s.value("maxItems", size_t(-1))) return false;
    if (s.contains("items"))
      for (const auto& x : v)
        if (!conforms(x, s["items"], root)) return false;
  }
  if (v.is_string()) {
    const size_t n = code_points(v.get<std::string>());
    if (n < s.value("minLength", size_t(0)) || n > s.value("maxLength", size_t(-1))) return false;
  }
  return true;
}

inline bool conforms(const nlohmann::json& v, const nlohmann::json& schema) { return conforms(v, schema, schema); }

}  // namespace lathe::engine::testing
