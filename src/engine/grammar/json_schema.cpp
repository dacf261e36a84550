// JSON Schema -> JsonGrammar nodes. The subset enforced: type (one or a list), properties +
// required (+ additionalProperties), items, enum, const, anyOf, oneOf (as anyOf), allOf of one
// schema, $ref to "#", "#/$defs/..." or "#/definitions/..." (recursion included), minItems,
// maxItems, minLength, maxLength, nullable (OpenAPI). Annotations (title, description, default,
// examples, ...) are ignored. Any other keyword changes which documents are valid, so it is refused
// with an error naming it rather than silently dropped.
//
// The grammar may accept fewer documents than the schema, never more: properties come in the
// schema's order (keep it by passing an ordered_json; nlohmann::json sorts keys), extra properties
// are never generated (additionalProperties true only matters for an object without properties),
// enum/const values are written in their compact form, "integer" has no fraction or exponent, and
// oneOf is not checked for exclusivity (as in other engines).
#include <set>
#include <string>
#include <unordered_map>

#include "core/error.h"
#include "engine/grammar/json_grammar.h"

namespace lathe::engine {

namespace {

using ojson = nlohmann::ordered_json;

const std::set<std::string>& annotations() {
  static const std::set<std::string> k{"title", "description", "default", "examples", "$schema", "$id", "$comment",
                                       "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "strict"};
  return k;
}

const std::set<std::string>& supported() {
  static const std::set<std::string> k{"type", "properties", "required", "additionalProperties", "items", "enum",
                                       "const", "anyOf", "oneOf", "allOf", "$ref", "minItems", "maxItems",
                                       "minLength", "maxLength", "nullable"};
  return k;
}

class SchemaCompiler {
 public:
  SchemaCompiler(const ojson& root, JsonGrammar& g) : root_(root), g_(g) {}

  int32_t compile(const ojson& s, const std::string& at) {
    if (++depth_ > 256) bad(at, "nests deeper than 256 schemas");
    const int32_t id = compile_inner(s, at);
    --depth_;
    return id;
  }

 private:
  [[noreturn]] void bad(const std::string& at, const std::string& what) const {
    fail(ErrorKind::kInvalidArgument, "json_schema at {}: {}", at.empty() ? "#" : at, what);
  }

  int32_t compile_inner(const ojson& s, const std::string& at) {
    if (s.is_boolean()) {
      if (!s.get<bool>()) bad(at, "the schema false accepts nothing");
      return JsonGrammar::kAnyValue;
    }
    if (!s.is_object()) bad(at, "a schema must be an object or a boolean");
    for (const auto& [key, value] : s.items()) {
      if (annotations().count(key) || key.rfind("x-", 0) == 0) continue;
      if (!supported().count(key))
        bad(at, "unsupported keyword '" + key +
                    "' (grammar-constrained output enforces type, properties, required, additionalProperties, items, "
                    "enum, const, anyOf, oneOf, allOf of one schema, $ref, minItems, maxItems, minLength, maxLength, "
                    "nullable)");
    }
    int32_t id = compile_nonnull(s, at);
    if (s.contains("nullable")) {
      if (!s["nullable"].is_boolean()) bad(at, "nullable must be a boolean");
      if (s["nullable"].get<bool>()) id = choice({id, JsonGrammar::kNull});
    }
    return id;
  }

  // Keywords that combine with others: only annotations may stand beside them (a sibling type or
  // properties would intersect with the branches, which this compiler does not do).
  void alone(const ojson& s, const char* keyword, const std::string& at) const {
    for (const auto& [key, value] : s.items())
      if (key != keyword && key != "nullable" && !annotations().count(key) && key.rfind("x-", 0) != 0)
        bad(at, std::string("'") + keyword + "' beside '" + key + "' is not supported (put '" + key +
                    "' inside each branch)");
  }

  int32_t compile_nonnull(const ojson& s, const std::string& at) {
    if (s.contains("$ref")) {
      alone(s, "$ref", at);
      return ref(s["$ref"], at);
    }
    for (const char* k : {"anyOf", "oneOf"}) {
      if (!s.contains(k)) continue;
      alone(s, k, at);
      const ojson& list = s[k];
      if (!list.is_array() || list.empty()) bad(at, std::string(k) + " must be a non-empty array");
      std::vector<int32_t> alts;
      for (size_t i = 0; i < list.size(); ++i) alts.push_back(compile(list[i], at + "/" + k + "/" + std::to_string(i)));
      return choice(std::move(alts));
    }
    if (s.contains("allOf")) {
      alone(s, "allOf", at);
      const ojson& list = s["allOf"];
      if (!list.is_array() || list.size() != 1) bad(at, "allOf is supported with exactly one schema");
      return compile(list[0], at + "/allOf/0");
    }
    if (s.contains("const")) return g_.literal(s["const"].dump());
    if (s.contains("enum")) {
      const ojson& list = s["enum"];
      if (!list.is_array() || list.empty()) bad(at, "enum must be a non-empty array");
      std::vector<int32_t> alts;
      for (const ojson& v : list) alts.push_back(g_.literal(v.dump()));
      return choice(std::move(alts));
    }
    if (!s.contains("type")) return typed(s, implied_type(s), at);
    const ojson& t = s["type"];
    if (t.is_string()) return typed(s, t.get<std::string>(), at);
    if (!t.is_array() || t.empty()) bad(at, "type must be a string or a non-empty array of strings");
    std::vector<int32_t> alts;
    for (const ojson& one : t) {
      if (!one.is_string()) bad(at, "type must be a string or a non-empty array of strings");
      alts.push_back(typed(s, one.get<std::string>(), at));
    }
    return choice(std::move(alts));
  }

  // Without "type", keywords of one type imply it (a document of another type would pass the
  // schema too, but generating only the implied type stays valid).
  static std::string implied_type(const ojson& s) {
    if (s.contains("properties") || s.contains("required") || s.contains("additionalProperties")) return "object";
    if (s.contains("items") || s.contains("minItems") || s.contains("maxItems")) return "array";
    if (s.contains("minLength") || s.contains("maxLength")) return "string";
    return "any";
  }

  uint32_t count(const ojson& s, const char* key, uint32_t fallback, const std::string& at) const {
    if (!s.contains(key)) return fallback;
    const ojson& v = s[key];
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > 1000000)
      bad(at, std::string(key) + " must be an integer in 0..1000000");
    return uint32_t(v.get<int64_t>());
  }

  int32_t typed(const ojson& s, const std::string& type, const std::string& at) {
    if (type == "any") return JsonGrammar::kAnyValue;
    if (type == "null") return JsonGrammar::kNull;
    if (type == "boolean") return choice({JsonGrammar::kTrue, JsonGrammar::kFalse});
    if (type == "number") return JsonGrammar::kAnyNumber;
    if (type == "integer") return g_.add({.kind = NodeKind::kInteger});
    if (type == "string") {
      GrammarNode n{.kind = NodeKind::kString};
      n.min = count(s, "minLength", 0, at);
      n.max = count(s, "maxLength", kUnbounded, at);
      if (n.min > n.max) bad(at, "minLength is above maxLength");
      return g_.add(std::move(n));
    }
    if (type == "array") {
      GrammarNode n{.kind = NodeKind::kArray, .values = JsonGrammar::kAnyValue};
      n.min = count(s, "minItems", 0, at);
      n.max = count(s, "maxItems", kUnbounded, at);
      if (n.min > n.max) bad(at, "minItems is above maxItems");
      if (s.contains("items")) {
        const ojson& items = s["items"];
        if (items.is_array()) bad(at, "items as an array (tuple validation) is not supported");
        if (items.is_boolean() && !items.get<bool>()) {
          if (n.min > 0) bad(at, "items false with minItems above 0 accepts nothing");
          n.max = 0;
        } else {
          n.values = compile(items, at + "/items");
        }
      }
      return g_.add(std::move(n));
    }
    if (type == "object") return object(s, at);
    bad(at, "unknown type '" + type + "'");
  }

  int32_t object(const ojson& s, const std::string& at) {
    GrammarNode n{.kind = NodeKind::kObject, .values = JsonGrammar::kAnyValue};
    std::vector<std::string> names;
    if (s.contains("properties")) {
      const ojson& props = s["properties"];
      if (!props.is_object()) bad(at, "properties must be an object");
      for (const auto& [key, sub] : props.items()) {
        names.push_back(key);
        n.properties.push_back({g_.literal(ojson(key).dump().substr(1)), compile(sub, at + "/properties/" + key), false});
      }
    }
    if (s.contains("required")) {
      const ojson& req = s["required"];
      if (!req.is_array()) bad(at, "required must be an array of strings");
      for (const ojson& r : req) {
        if (!r.is_string()) bad(at, "required must be an array of strings");
        const std::string key = r.get<std::string>();
        size_t i = 0;
        while (i < names.size() && names[i] != key) ++i;
        if (i == names.size()) {  // required but not described: any value
          names.push_back(key);
          n.properties.push_back({g_.literal(ojson(key).dump().substr(1)), JsonGrammar::kAnyValue, false});
        }
        n.properties[i].required = true;
        n.last_required = std::max(n.last_required, int32_t(i));
      }
    }
    if (s.contains("additionalProperties")) {
      const ojson& extra = s["additionalProperties"];
      if (extra.is_boolean()) n.values = extra.get<bool>() ? JsonGrammar::kAnyValue : -1;
      else n.values = compile(extra, at + "/additionalProperties");
    }
    // Declared properties only: extra keys would have to differ from every declared one, and leaving
    // them out keeps the document valid.
    if (!n.properties.empty()) n.values = -1;
    return g_.add(std::move(n));
  }

  int32_t ref(const ojson& r, const std::string& at) {
    if (!r.is_string()) bad(at, "$ref must be a string");
    const std::string target = r.get<std::string>();
    if (auto it = refs_.find(target); it != refs_.end()) return it->second;
    if (target != "#" && target.rfind("#/", 0) != 0)
      bad(at, "$ref '" + target + "' is not supported (only references inside the schema: #, #/$defs/..., #/definitions/...)");
    const ojson* found = &root_;
    if (target != "#") {
      try {
        found = &root_.at(ojson::json_pointer(target.substr(1)));
      } catch (const std::exception&) {
        bad(at, "$ref '" + target + "' points at nothing in the schema");
      }
    }
    // A placeholder first, so a recursive schema refers to itself; it becomes a one-way choice
    // (an alias) of the compiled target.
    const int32_t id = g_.add({.kind = NodeKind::kChoice});
    refs_[target] = id;
    const int32_t body = compile(*found, target);
    g_.mutable_node(id).alternatives = {body};
    return id;
  }

  int32_t choice(std::vector<int32_t> alts) {
    if (alts.size() == 1) return alts[0];
    return g_.add({.kind = NodeKind::kChoice, .alternatives = std::move(alts)});
  }

  const ojson& root_;
  JsonGrammar& g_;
  std::unordered_map<std::string, int32_t> refs_;
  int depth_ = 0;
};

// True when `id` can reach itself through choices alone (A: anyOf [A, ...] or a $ref loop): such a
// grammar would recurse forever without reading a byte.
bool loops_without_input(const JsonGrammar& g, int32_t id, std::vector<int>& mark) {
  if (g.node(id).kind != NodeKind::kChoice) return false;
  if (mark[size_t(id)] == 1) return true;
  if (mark[size_t(id)] == 2) return false;
  mark[size_t(id)] = 1;
  for (int32_t a : g.node(id).alternatives)
    if (loops_without_input(g, a, mark)) return true;
  mark[size_t(id)] = 2;
  return false;
}

}  // namespace

std::shared_ptr<const JsonGrammar> JsonGrammar::from_schema(const nlohmann::ordered_json& schema,
                                                            const GrammarOptions& options) {
  auto g = std::make_shared<JsonGrammar>(options);
  SchemaCompiler c(schema, *g);
  g->set_root(c.compile(schema, ""));
  std::vector<int> mark(g->size(), 0);
  for (int32_t id = 0; id < int32_t(g->size()); ++id)
    if (loops_without_input(*g, id, mark))
      fail(ErrorKind::kInvalidArgument, "json_schema: a $ref or anyOf refers back to itself without any value in between");
  return g;
}

std::shared_ptr<const JsonGrammar> JsonGrammar::from_schema(const nlohmann::json& schema, const GrammarOptions& options) {
  return from_schema(nlohmann::ordered_json::parse(schema.dump()), options);
}

}  // namespace lathe::engine
