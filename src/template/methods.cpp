// Attribute and item access, slicing, and the Python methods templates call on str, list and dict.
// Lookup order follows Jinja's: `x.name` tries the Python attribute (a method) first, then the
// item; `x[key]` tries the item. Missing things are undefined, not errors, until used.
#include <algorithm>
#include <cstdio>
#include <set>

#include "template/eval.h"
#include "template/pystr.h"

namespace lathe::tmpl {

namespace {

std::optional<std::string> opt_str(const Value* v) {
  if (!v || v->is_none()) return std::nullopt;
  if (!v->is_string()) runtime_fail(std::string("expected a string argument, got ") + v->type_name());
  return v->s;
}

const std::string& need_str(const Value* v, const char* what) {
  if (!v || !v->is_string()) runtime_fail(std::string(what) + " expects a string argument");
  return v->s;
}

Value str_list(const std::vector<std::string>& parts) {
  std::vector<Value> items;
  items.reserve(parts.size());
  for (const auto& p : parts) items.push_back(Value::string(p));
  return Value::new_list(std::move(items));
}

// Python's startswith/endswith: prefix may be a tuple of alternatives.
bool affix_match(const std::string& s, const Value& affix, bool end) {
  if (affix.is_list()) {
    for (const auto& a : affix.list->items)
      if (affix_match(s, a, end)) return true;
    return false;
  }
  if (!affix.is_string()) runtime_fail("startswith/endswith expects a string or tuple of strings");
  const std::string& a = affix.s;
  if (a.size() > s.size()) return false;
  return end ? s.compare(s.size() - a.size(), a.size(), a) == 0 : s.compare(0, a.size(), a) == 0;
}

Value string_method(const std::string& s, const std::string& name, CallArgs& a) {
  using py::CharClass;
  if (name == "strip") return Value::string(py::strip(s, opt_str(a.get(0, "chars"))));
  if (name == "lstrip") return Value::string(py::strip(s, opt_str(a.get(0, "chars")), py::Side::kLeft));
  if (name == "rstrip") return Value::string(py::strip(s, opt_str(a.get(0, "chars")), py::Side::kRight));
  if (name == "startswith" || name == "endswith") {
    const Value* affix = a.get(0, "");
    if (!affix) runtime_fail(name + "() takes at least 1 argument");
    return Value::boolean(affix_match(s, *affix, name == "endswith"));
  }
  if (name == "split" || name == "rsplit") {
    const Value* maxv = a.get(1, "maxsplit");
    long long maxsplit = maxv ? maxv->as_int() : -1;
    auto sep = opt_str(a.get(0, "sep"));
    return str_list(name == "split" ? py::split(s, sep, maxsplit) : py::rsplit(s, sep, maxsplit));
  }
  if (name == "splitlines") {
    const Value* keep = a.get(0, "keepends");
    return str_list(py::splitlines(s, keep && keep->truthy()));
  }
  if (name == "upper") return Value::string(py::upper(s));
  if (name == "lower") return Value::string(py::lower(s));
  if (name == "title") return Value::string(py::title(s));
  if (name == "capitalize") return Value::string(py::capitalize(s));
  if (name == "swapcase") return Value::string(py::swapcase(s));
  if (name == "replace") {
    const Value* count = a.get(2, "count");
    return Value::string(py::replace(s, need_str(a.get(0, "old"), "replace"), need_str(a.get(1, "new"), "replace"),
                                     count ? count->as_int() : -1));
  }
  if (name == "format") return Value::string(brace_format(s, a));
  if (name == "join") {
    const Value* seq = a.get(0, "iterable");
    if (!seq) runtime_fail("join() takes exactly one argument");
    std::string out;
    bool first = true;
    for (const auto& item : iterate(*seq)) {
      if (!item.is_string())
        runtime_fail(std::string("sequence item: expected str instance, ") + item.type_name() + " found");
      if (!first) out += s;
      first = false;
      out += item.s;
    }
    return Value::string(std::move(out));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex") {
    long long at = py::find(s, need_str(a.get(0, "sub"), name.c_str()), name[0] == 'r');
    if (at < 0 && (name == "index" || name == "rindex")) runtime_fail("substring not found");
    return Value::integer(at);
  }
  if (name == "count") return Value::integer(py::count(s, need_str(a.get(0, "sub"), "count")));
  static const std::pair<const char*, CharClass> classes[] = {
      {"isdigit", CharClass::kDigit},     {"isalpha", CharClass::kAlpha},   {"isalnum", CharClass::kAlnum},
      {"isspace", CharClass::kSpace},     {"islower", CharClass::kLower},   {"isupper", CharClass::kUpper},
      {"isdecimal", CharClass::kDecimal}, {"isnumeric", CharClass::kNumeric}, {"istitle", CharClass::kTitle}};
  for (const auto& [n, c] : classes)
    if (name == n) return Value::boolean(py::is_class(s, c));
  if (name == "zfill") {
    int64_t width = a.get(0, "width") ? a.get(0, "width")->as_int() : 0;
    int64_t n = length(Value::string(s));
    if (n >= width) return Value::string(s);
    size_t sign = (!s.empty() && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
    return Value::string(s.substr(0, sign) + std::string(size_t(width - n), '0') + s.substr(sign));
  }
  if (name == "center" || name == "ljust" || name == "rjust") {
    int64_t width = a.get(0, "width") ? a.get(0, "width")->as_int() : 0;
    std::string fill = a.get(1, "fillchar") ? need_str(a.get(1, "fillchar"), name.c_str()) : " ";
    int64_t n = length(Value::string(s));
    if (n >= width) return Value::string(s);
    int64_t pad = width - n;
    int64_t left = name == "ljust" ? 0 : name == "rjust" ? pad : pad / 2 + (pad & width & 1);
    std::string out;
    for (int64_t k = 0; k < left; ++k) out += fill;
    out += s;
    for (int64_t k = 0; k < pad - left; ++k) out += fill;
    return Value::string(std::move(out));
  }
  runtime_fail("'str' object has no attribute '" + name + "'");
}

Value list_method(const Value& self, const std::string& name, CallArgs& a) {
  auto& items = self.list->items;
  if (name == "append") {
    if (!a.get(0, "")) runtime_fail("append() takes exactly one argument");
    items.push_back(*a.get(0, ""));
    return Value::none();
  }
  if (name == "extend") {
    for (auto& v : iterate(*a.get(0, "iterable"))) items.push_back(v);
    return Value::none();
  }
  if (name == "insert") {
    int64_t at = a.get(0, "index")->as_int(), n = int64_t(items.size());
    if (at < 0) at = std::max<int64_t>(0, at + n);
    items.insert(items.begin() + std::min(at, n), *a.get(1, "object"));
    return Value::none();
  }
  if (name == "pop") {
    if (items.empty()) runtime_fail("pop from empty list");
    int64_t at = a.get(0, "index") ? a.get(0, "index")->as_int() : -1, n = int64_t(items.size());
    if (at < 0) at += n;
    if (at < 0 || at >= n) runtime_fail("pop index out of range");
    Value v = items[size_t(at)];
    items.erase(items.begin() + at);
    return v;
  }
  if (name == "index" || name == "count" || name == "remove") {
    const Value* x = a.get(0, "value");
    if (!x) runtime_fail(name + "() takes exactly one argument");
    int64_t n = 0;
    for (size_t k = 0; k < items.size(); ++k) {
      if (!equals(items[k], *x)) continue;
      if (name == "index") return Value::integer(int64_t(k));
      if (name == "remove") {
        items.erase(items.begin() + long(k));
        return Value::none();
      }
      ++n;
    }
    if (name == "count") return Value::integer(n);
    runtime_fail(name == "index" ? x->repr() + " is not in list" : "list.remove(x): x not in list");
  }
  if (name == "reverse") {
    std::reverse(items.begin(), items.end());
    return Value::none();
  }
  if (name == "copy") return Value::new_list(items, self.list->tuple);
  runtime_fail(std::string("'") + self.type_name() + "' object has no attribute '" + name + "'");
}

Value dict_method(const Value& self, const std::string& name, CallArgs& a) {
  auto& d = *self.dict;
  if (name == "get") {
    const Value* key = a.get(0, "key");
    if (!key) runtime_fail("get expected at least 1 argument");
    const Value* def = a.get(1, "default");
    const Value* found = d.find(key->str());
    return found ? *found : def ? *def : Value::none();
  }
  if (name == "items") {
    std::vector<Value> out;
    for (const auto& [k, v] : d.items) out.push_back(Value::new_list({Value::string(k), v}, true));
    return Value::new_list(std::move(out));
  }
  if (name == "keys") return Value::new_list(iterate(self));
  if (name == "values") {
    std::vector<Value> out;
    for (const auto& kv : d.items) out.push_back(kv.second);
    return Value::new_list(std::move(out));
  }
  if (name == "pop") {
    const Value* key = a.get(0, "key");
    if (!key) runtime_fail("pop expected at least 1 argument");
    for (auto it = d.items.begin(); it != d.items.end(); ++it) {
      if (it->first != key->str()) continue;
      Value v = it->second;
      d.items.erase(it);
      return v;
    }
    if (const Value* def = a.get(1, "default")) return *def;
    runtime_fail("KeyError: " + key->repr());
  }
  if (name == "setdefault") {
    const Value* key = a.get(0, "key");
    if (const Value* found = d.find(key->str())) return *found;
    Value def = a.get(1, "default") ? *a.get(1, "default") : Value::none();
    d.set(key->str(), def);
    return def;
  }
  if (name == "update") {
    if (const Value* other = a.get(0, "")) {
      if (!other->is_dict()) runtime_fail("dict.update expects a mapping");
      for (const auto& [k, v] : other->dict->items) d.set(k, v);
    }
    for (const auto& [k, v] : a.keyword) d.set(k, v);
    return Value::none();
  }
  if (name == "copy") {
    Value c = Value::new_dict();
    c.dict->items = d.items;
    return c;
  }
  runtime_fail("'dict' object has no attribute '" + name + "'");
}

const std::set<std::string>& string_methods() {
  static const std::set<std::string> m = {
      "strip", "lstrip", "rstrip", "startswith", "endswith", "split", "rsplit", "splitlines", "upper",
      "lower", "title", "capitalize", "swapcase", "replace", "format", "join", "find", "rfind", "index",
      "rindex", "count", "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper", "isdecimal",
      "isnumeric", "istitle", "zfill", "center", "ljust", "rjust"};
  return m;
}
const std::set<std::string>& list_methods() {
  static const std::set<std::string> m = {"append", "extend", "insert", "pop", "index", "count",
                                          "remove", "reverse", "copy"};
  return m;
}
const std::set<std::string>& dict_methods() {
  static const std::set<std::string> m = {"get", "items", "keys", "values", "pop", "setdefault", "update", "copy"};
  return m;
}

std::string describe_obj(const Value& v) {
  if (v.is_none()) return "'None'";
  return std::string("'") + v.type_name() + " object'";
}

int64_t norm_index(int64_t k, int64_t n) { return k < 0 ? k + n : k; }

}  // namespace

Value Evaluator::get_attr(const Value& obj, const std::string& name) {
  switch (obj.kind) {
    case Value::Kind::kUndefined: runtime_fail(obj.s.empty() ? "value is undefined" : obj.s);
    case Value::Kind::kString:
      if (string_methods().count(name)) {
        std::string s = obj.s;
        return Value::function(name, [s, name](Evaluator&, CallArgs& a) { return string_method(s, name, a); });
      }
      break;
    case Value::Kind::kList:
      if (list_methods().count(name)) {
        Value self = obj;
        return Value::function(name, [self, name](Evaluator&, CallArgs& a) { return list_method(self, name, a); });
      }
      break;
    case Value::Kind::kDict:
      if (!obj.dict->is_namespace && dict_methods().count(name)) {
        Value self = obj;
        return Value::function(name, [self, name](Evaluator&, CallArgs& a) { return dict_method(self, name, a); });
      }
      if (const Value* v = obj.dict->find(name)) return *v;
      break;
    default: break;
  }
  return Value::undefined(describe_obj(obj) + " has no attribute '" + name + "'");
}

Value Evaluator::get_item(const Value& obj, const Value& key) {
  switch (obj.kind) {
    case Value::Kind::kUndefined: runtime_fail(obj.s.empty() ? "value is undefined" : obj.s);
    case Value::Kind::kDict:
      if (key.is_string() || key.is_number()) {
        if (const Value* v = obj.dict->find(key.str())) return *v;
      }
      break;
    case Value::Kind::kList:
      if (key.is_int() || key.is_bool()) {
        int64_t n = int64_t(obj.list->items.size()), k = norm_index(key.as_int(), n);
        if (k >= 0 && k < n) return obj.list->items[size_t(k)];
      }
      break;
    case Value::Kind::kString:
      if (key.is_int() || key.is_bool()) {
        std::u32string u = utf8_decode(obj.s);
        int64_t n = int64_t(u.size()), k = norm_index(key.as_int(), n);
        if (k >= 0 && k < n) {
          std::string out;
          utf8_append(out, u[size_t(k)]);
          return Value::string(std::move(out));
        }
      }
      break;
    default: break;
  }
  if (key.is_string()) return get_attr(obj, key.s);
  return Value::undefined(describe_obj(obj) + " has no element " + key.repr());
}

Value Evaluator::slice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v) {
  if (obj.is_undefined()) runtime_fail(obj.s.empty() ? "value is undefined" : obj.s);
  std::u32string u;
  int64_t n;
  if (obj.is_string()) {
    u = utf8_decode(obj.s);
    n = int64_t(u.size());
  } else if (obj.is_list()) {
    n = int64_t(obj.list->items.size());
  } else {
    runtime_fail(std::string("'") + obj.type_name() + "' object is not subscriptable");
  }
  int64_t step = step_v.is_none() ? 1 : step_v.as_int();
  if (step == 0) runtime_fail("slice step cannot be zero");
  // Python's PySlice_AdjustIndices.
  auto adjust = [&](const Value& v, int64_t def) {
    if (v.is_none()) return def;
    int64_t k = v.as_int();
    if (k < 0) {
      k += n;
      if (k < 0) k = step < 0 ? -1 : 0;
    } else if (k >= n) {
      k = step < 0 ? n - 1 : n;
    }
    return k;
  };
  int64_t start = adjust(start_v, step < 0 ? n - 1 : 0);
  int64_t stop = adjust(stop_v, step < 0 ? -1 : n);
  std::vector<int64_t> picks;
  for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) picks.push_back(k);
  if (obj.is_string()) {
    std::u32string out;
    for (int64_t k : picks) out += u[size_t(k)];
    return Value::string(utf8_encode(out));
  }
  std::vector<Value> out;
  for (int64_t k : picks) out.push_back(obj.list->items[size_t(k)]);
  return Value::new_list(std::move(out), obj.list->tuple);
}

}  // namespace lathe::tmpl
