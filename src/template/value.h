// The template engine's runtime value: a small Python-like object model. Chat templates are written
// against Python semantics (None vs undefined, int vs float, shared mutable lists, insertion-ordered
// dicts, repr() when printing containers), so the engine needs its own type rather than raw JSON.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lathe::tmpl {

class Evaluator;
struct Value;

// Thrown by filters, methods and operators that know what went wrong but not where; the evaluator
// adds the template line before it leaves the engine as a lathe::Error.
struct RuntimeFail {
  std::string message;
};
[[noreturn]] void runtime_fail(std::string message);

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
  const Value* find_kw(std::string_view name) const;
  // Positional i, else keyword `name`, else nullptr: how Python binds a parameter.
  const Value* get(size_t i, std::string_view name) const;
};

struct Function {
  std::string name;
  std::function<Value(Evaluator&, CallArgs&)> fn;
};

struct ListData {
  std::vector<Value> items;
  bool tuple = false;  // prints as (a, b); otherwise behaves like a list
};

// Insertion-ordered like a Python dict. Keys are strings: chat templates never key by anything else.
struct DictData {
  std::vector<std::pair<std::string, Value>> items;
  bool is_namespace = false;  // namespace(): the one object templates may assign attributes on
  Value* find(std::string_view key);
  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value v);
};

struct Value {
  enum class Kind : uint8_t { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kFunction };
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // the string, or for undefined the name that was missing (for error messages)
  std::shared_ptr<ListData> list;
  std::shared_ptr<DictData> dict;
  std::shared_ptr<Function> fn;

  Value() = default;
  static Value undefined(std::string hint = {});
  static Value none();
  static Value boolean(bool v);
  static Value integer(int64_t v);
  static Value number(double v);
  static Value string(std::string v);
  static Value new_list(std::vector<Value> items = {}, bool tuple = false);
  static Value new_dict();
  static Value function(std::string name, std::function<Value(Evaluator&, CallArgs&)> fn);
  static Value from_json(const nlohmann::ordered_json& j);
  static Value from_json(const nlohmann::json& j);

  bool is_undefined() const { return kind == Kind::kUndefined; }
  bool is_none() const { return kind == Kind::kNone; }
  bool is_bool() const { return kind == Kind::kBool; }
  bool is_int() const { return kind == Kind::kInt; }
  bool is_float() const { return kind == Kind::kFloat; }
  bool is_number() const { return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool; }
  bool is_string() const { return kind == Kind::kString; }
  bool is_list() const { return kind == Kind::kList; }
  bool is_dict() const { return kind == Kind::kDict; }
  bool is_function() const { return kind == Kind::kFunction; }

  bool truthy() const;
  double as_double() const;   // numbers and bools only
  int64_t as_int() const;     // ints and bools; floats truncate
  // Python's str(): what `{{ x }}` prints (undefined prints nothing).
  std::string str() const;
  // Python's repr(): how values appear inside printed lists and dicts.
  std::string repr() const;
  // The Python type name, for error messages ("'NoneType' object is not iterable").
  const char* type_name() const;
  nlohmann::ordered_json to_json() const;
};

// Python ==, and the ordering comparisons (which fail on mismatched types, as Python's do).
bool equals(const Value& a, const Value& b);
int compare(const Value& a, const Value& b);  // <0, 0, >0

// Iterating a value the way a Python for-loop does (dict -> keys, string -> characters).
std::vector<Value> iterate(const Value& v);
// Python len(): code points for strings.
int64_t length(const Value& v);

// Python float repr (shortest round-trip, "1.0", "1e+16", "inf", "nan").
std::string format_float(double v);
// json.dumps(x, ensure_ascii=False, indent=..., separators=..., sort_keys=...), the way
// transformers overrides Jinja's tojson filter.
struct JsonDumpOptions {
  int indent = -1;              // <0: one line
  std::string indent_str;       // used when non-empty (indent given as a string)
  std::string item_sep, key_sep;
  bool sort_keys = false;
  bool ensure_ascii = false;    // escape non-ASCII as \uXXXX (surrogate pairs above the BMP)
};
std::string json_dumps(const Value& v, const JsonDumpOptions& options);

// UTF-8 helpers: Python indexes strings by code point.
std::u32string utf8_decode(std::string_view s);
std::string utf8_encode(std::u32string_view s);
void utf8_append(std::string& out, char32_t c);
bool is_py_space(char32_t c);  // str.isspace() / str.strip() whitespace

}  // namespace lathe::tmpl
