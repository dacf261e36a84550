// Jinja's built-in filters and tests, with transformers' tojson override (json.dumps with
// ensure_ascii=False and Python's default separators). Argument names and defaults follow the
// Jinja 3.1 signatures so keyword calls like `indent(4, first=true)` bind the same way.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "template/eval.h"
#include "template/pystr.h"

namespace lathe::tmpl {

namespace {

bool flag(const CallArgs& a, size_t i, const char* name, bool def) {
  const Value* v = a.get(i, name);
  return v ? v->truthy() : def;
}

// `attribute="a.b.0"` as Jinja's make_attrgetter reads it: dotted parts, integer parts index.
Value lookup_attr(Evaluator& ev, Value v, const std::string& path) {
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
    v = ev.get_item(v, digits ? Value::integer(std::stoll(part)) : Value::string(part));
    if (dot == std::string::npos) return v;
    start = dot + 1;
  }
}

// The sort key Jinja uses: lowercased strings unless case_sensitive.
Value sort_key(Evaluator& ev, const Value& item, const Value* attribute, bool case_sensitive) {
  Value v = attribute && !attribute->is_none() ? lookup_attr(ev, item, attribute->str()) : item;
  if (!case_sensitive && v.is_string()) return Value::string(py::lower(v.s));
  return v;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// Python round(x, n): correctly rounded, ties to even (printf rounds the exact binary value the
// same way), and ints stay ints.
Value py_round(const Value& v, int64_t precision) {
  if (v.is_int() || v.is_bool()) return Value::integer(v.as_int());
  double x = v.as_double();
  if (!std::isfinite(x)) return v;
  if (precision == 0) return Value::number(std::nearbyint(x));
  if (precision < 0) {
    double p = std::pow(10.0, double(-precision));
    return Value::number(std::nearbyint(x / p) * p);
  }
  char buf[512];
  std::snprintf(buf, sizeof buf, "%.*f", int(precision), x);
  return Value::number(std::strtod(buf, nullptr));
}

Value to_int(const Value& v, const Value& def, int base) {
  switch (v.kind) {
    case Value::Kind::kBool:
    case Value::Kind::kInt:
    case Value::Kind::kFloat: return Value::integer(v.as_int());
    case Value::Kind::kString: {
      std::string s = py::strip(v.s, std::nullopt);
      std::string digits;
      for (char c : s)
        if (c != '_') digits += c;
      if (!digits.empty()) {
        char* end = nullptr;
        long long r = std::strtoll(digits.c_str(), &end, base);
        if (end && *end == '\0') return Value::integer(r);
        double d = std::strtod(digits.c_str(), &end);
        if (base == 10 && end && *end == '\0' && std::isfinite(d)) return Value::integer(int64_t(d));
      }
      return def;
    }
    default: return def;
  }
}

Value to_float(const Value& v, const Value& def) {
  if (v.is_number()) return Value::number(v.as_double());
  if (v.is_string()) {
    std::string s = py::strip(v.s, std::nullopt);
    char* end = nullptr;
    double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && end && *end == '\0') return Value::number(d);
  }
  return def;
}

std::string indent_text(const std::string& text, const Value* width_v, bool first, bool blank) {
  std::string unit = width_v && width_v->is_string() ? width_v->s : std::string(size_t(width_v ? width_v->as_int() : 4), ' ');
  std::vector<std::string> lines = py::splitlines(text + "\n");
  std::string rv;
  for (size_t k = 0; k < lines.size(); ++k) {
    if (k > 0) rv += "\n";
    bool indent = k > 0 && (blank || !lines[k].empty());
    rv += (indent ? unit : std::string()) + lines[k];
  }
  if (first) rv = unit + rv;
  return rv;
}

std::string striptags(const std::string& s) {
  std::string text;
  for (size_t k = 0; k < s.size(); ++k) {
    if (s.compare(k, 4, "<!--") == 0) {
      size_t e = s.find("-->", k);
      if (e == std::string::npos) break;
      k = e + 2;
    } else if (s[k] == '<') {
      size_t e = s.find('>', k);
      if (e == std::string::npos) { text += s.substr(k); break; }
      k = e;
    } else {
      text += s[k];
    }
  }
  auto words = py::split(text, std::nullopt);
  std::string out;
  for (size_t k = 0; k < words.size(); ++k) out += (k ? " " : "") + words[k];
  for (auto [ent, ch] : {std::pair{"&lt;", "<"}, {"&gt;", ">"}, {"&#34;", "\""}, {"&#39;", "'"}, {"&quot;", "\""}, {"&amp;", "&"}})
    out = py::replace(out, ent, ch);
  return out;
}

// Arguments after the first `skip` positionals, for filters/tests that forward them.
CallArgs rest_args(const CallArgs& a, size_t skip) {
  CallArgs r;
  for (size_t k = skip; k < a.positional.size(); ++k) r.positional.push_back(a.positional[k]);
  r.keyword = a.keyword;
  return r;
}

}  // namespace

Value Evaluator::filter(const std::string& name, Value v, CallArgs& a) {
  auto arg = [&](size_t i, const char* n) { return a.get(i, n); };
  if (name == "trim") {
    const Value* chars = arg(0, "chars");
    return Value::string(py::strip(v.str(), chars && !chars->is_none() ? std::optional<std::string>(chars->str()) : std::nullopt));
  }
  if (name == "tojson") {
    // transformers: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
    JsonDumpOptions o;
    o.ensure_ascii = flag(a, 0, "ensure_ascii", false);
    const Value* indent = arg(1, "indent");
    if (indent && indent->is_string()) o.indent_str = indent->s;
    else if (indent && !indent->is_none()) o.indent = int(indent->as_int());
    bool pretty = o.indent >= 0 || !o.indent_str.empty();
    o.item_sep = pretty ? "," : ", ";
    o.key_sep = ": ";
    if (const Value* seps = arg(2, "separators"); seps && seps->is_list() && seps->list->items.size() == 2) {
      o.item_sep = seps->list->items[0].str();
      o.key_sep = seps->list->items[1].str();
    }
    o.sort_keys = flag(a, 3, "sort_keys", false);
    return Value::string(json_dumps(v, o));
  }
  if (name == "length" || name == "count") return Value::integer(length(v));
  if (name == "upper") return Value::string(py::upper(v.str()));
  if (name == "lower") return Value::string(py::lower(v.str()));
  if (name == "capitalize") return Value::string(py::capitalize(v.str()));
  if (name == "title") {
    // Jinja's title: each run after [-\s({[<] starts a word; first char upper, rest lower.
    std::u32string u = utf8_decode(v.str());
    std::string out;
    bool start = true;
    for (char32_t c : u) {
      bool sep = is_py_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
      std::string one;
      utf8_append(one, c);
      out += sep ? one : start ? py::upper(one) : py::lower(one);
      start = sep;
    }
    return Value::string(std::move(out));
  }
  if (name == "replace") {
    const Value* count = arg(2, "count");
    return Value::string(py::replace(v.str(), arg(0, "old") ? arg(0, "old")->str() : "",
                                     arg(1, "new") ? arg(1, "new")->str() : "",
                                     count && !count->is_none() ? count->as_int() : -1));
  }
  if (name == "default" || name == "d") {
    const Value* def = arg(0, "default_value");
    bool boolean = flag(a, 1, "boolean", false);
    if (v.is_undefined() || (boolean && !v.truthy())) return def ? *def : Value::string("");
    return v;
  }
  if (name == "first" || name == "last") {
    std::vector<Value> items = iterate(v);
    if (items.empty()) return Value::undefined("no " + name + " item, sequence was empty");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "join") {
    const Value* sep = arg(0, "d");
    const Value* attribute = arg(1, "attribute");
    std::string out;
    bool first = true;
    for (const auto& item : iterate(v)) {
      if (!first) out += sep ? sep->str() : "";
      first = false;
      out += (attribute && !attribute->is_none() ? lookup_attr(*this, item, attribute->str()) : item).str();
    }
    return Value::string(std::move(out));
  }
  if (name == "list") return Value::new_list(iterate(v));
  if (name == "map") {
    std::vector<Value> out;
    if (const Value* attribute = a.find_kw("attribute")) {
      const Value* def = a.find_kw("default");
      for (const auto& item : iterate(v)) {
        Value r = lookup_attr(*this, item, attribute->str());
        out.push_back(r.is_undefined() && def ? *def : r);
      }
    } else {
      if (a.positional.empty()) runtime_fail("map requires a filter name or attribute=");
      std::string fname = a.positional[0].str();
      for (const auto& item : iterate(v)) {
        CallArgs fa = rest_args(a, 1);
        out.push_back(filter(fname, item, fa));
      }
    }
    return Value::new_list(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    bool attr_form = name == "selectattr" || name == "rejectattr";
    bool want = name == "select" || name == "selectattr";
    size_t skip = attr_form ? 1 : 0;
    if (attr_form && a.positional.empty()) runtime_fail(name + " requires an attribute name");
    std::vector<Value> out;
    for (const auto& item : iterate(v)) {
      Value subject = attr_form ? lookup_attr(*this, item, a.positional[0].str()) : item;
      bool ok;
      if (a.positional.size() > skip) {
        CallArgs ta = rest_args(a, skip + 1);
        ok = test(a.positional[skip].str(), subject, ta);
      } else {
        ok = subject.truthy();
      }
      if (ok == want) out.push_back(item);
    }
    return Value::new_list(std::move(out));
  }
  if (name == "items") {
    if (v.is_undefined()) return Value::new_list();
    if (!v.is_dict()) runtime_fail(std::string("items filter expects a mapping, got ") + v.type_name());
    return get_attr(v, "items").fn->fn(*this, a);
  }
  if (name == "dictsort") {
    if (!v.is_dict()) runtime_fail(std::string("dictsort expects a mapping, got ") + v.type_name());
    bool case_sensitive = flag(a, 0, "case_sensitive", false);
    const Value* by = arg(1, "by");
    int pos = by && by->str() == "value" ? 1 : 0;
    bool reverse = flag(a, 2, "reverse", false);
    std::vector<Value> items;
    for (const auto& [k, x] : v.dict->items) items.push_back(Value::new_list({Value::string(k), x}, true));
    std::stable_sort(items.begin(), items.end(), [&](const Value& l, const Value& r) {
      Value kl = sort_key(*this, l.list->items[size_t(pos)], nullptr, case_sensitive);
      Value kr = sort_key(*this, r.list->items[size_t(pos)], nullptr, case_sensitive);
      return reverse ? compare(kr, kl) < 0 : compare(kl, kr) < 0;
    });
    return Value::new_list(std::move(items));
  }
  if (name == "indent")
    return Value::string(indent_text(v.str(), arg(0, "width"), flag(a, 1, "first", false), flag(a, 2, "blank", false)));
  if (name == "string") return Value::string(v.str());
  if (name == "int") {
    const Value* def = arg(0, "default");
    const Value* base = arg(1, "base");
    return to_int(v, def ? *def : Value::integer(0), base ? int(base->as_int()) : 10);
  }
  if (name == "float") {
    const Value* def = arg(0, "default");
    return to_float(v, def ? *def : Value::number(0.0));
  }
  if (name == "round") {
    const Value* p = arg(0, "precision");
    int64_t precision = p ? p->as_int() : 0;
    std::string method = arg(1, "method") ? arg(1, "method")->str() : "common";
    if (!v.is_number()) runtime_fail(std::string("round expects a number, got ") + v.type_name());
    if (method == "common") return py_round(v, precision);
    if (method != "ceil" && method != "floor") runtime_fail("method must be common, ceil or floor");
    double scale = std::pow(10.0, double(precision));
    double x = v.as_double() * scale;
    return Value::number((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
  }
  if (name == "safe") return v;
  if (name == "e" || name == "escape" || name == "forceescape") return Value::string(html_escape(v.str()));
  if (name == "unique") {
    bool case_sensitive = flag(a, 0, "case_sensitive", false);
    const Value* attribute = arg(1, "attribute");
    std::vector<Value> out, seen;
    for (const auto& item : iterate(v)) {
      Value key = sort_key(*this, item, attribute, case_sensitive);
      if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, key); })) continue;
      seen.push_back(key);
      out.push_back(item);
    }
    return Value::new_list(std::move(out));
  }
  if (name == "abs") {
    if (v.is_float()) return Value::number(std::fabs(v.f));
    if (v.is_number()) return Value::integer(std::llabs(v.as_int()));
    runtime_fail(std::string("bad operand type for abs(): '") + v.type_name() + "'");
  }
  if (name == "sum") {
    const Value* attribute = arg(0, "attribute");
    Value total = arg(1, "start") ? *arg(1, "start") : Value::integer(0);
    for (const auto& item : iterate(v))
      total = binary("+", total, attribute && !attribute->is_none() ? lookup_attr(*this, item, attribute->str()) : item);
    return total;
  }
  if (name == "min" || name == "max") {
    bool case_sensitive = flag(a, 0, "case_sensitive", false);
    const Value* attribute = arg(1, "attribute");
    std::vector<Value> items = iterate(v);
    if (items.empty()) return Value::undefined("no " + name + " item, sequence was empty");
    size_t best = 0;
    for (size_t k = 1; k < items.size(); ++k) {
      int c = compare(sort_key(*this, items[k], attribute, case_sensitive), sort_key(*this, items[best], attribute, case_sensitive));
      if (name == "min" ? c < 0 : c > 0) best = k;
    }
    return items[best];
  }
  if (name == "sort") {
    bool reverse = flag(a, 0, "reverse", false);
    bool case_sensitive = flag(a, 1, "case_sensitive", false);
    const Value* attribute = arg(2, "attribute");
    std::vector<Value> items = iterate(v);
    std::vector<std::pair<Value, Value>> keyed;
    for (auto& item : items) keyed.emplace_back(sort_key(*this, item, attribute, case_sensitive), item);
    std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& l, const auto& r) {
      return reverse ? compare(r.first, l.first) < 0 : compare(l.first, r.first) < 0;
    });
    std::vector<Value> out;
    for (auto& kv : keyed) out.push_back(std::move(kv.second));
    return Value::new_list(std::move(out));
  }
  if (name == "reverse") {
    if (v.is_string()) {
      std::u32string u = utf8_decode(v.s);
      std::reverse(u.begin(), u.end());
      return Value::string(utf8_encode(u));
    }
    std::vector<Value> items = iterate(v);
    std::reverse(items.begin(), items.end());
    return Value::new_list(std::move(items));
  }
  if (name == "batch") {
    int64_t n = arg(0, "linecount") ? arg(0, "linecount")->as_int() : 1;
    if (n <= 0) runtime_fail("batch size must be positive");
    const Value* fill = arg(1, "fill_with");
    std::vector<Value> out, cur;
    for (auto& item : iterate(v)) {
      cur.push_back(item);
      if (int64_t(cur.size()) == n) {
        out.push_back(Value::new_list(std::move(cur)));
        cur.clear();
      }
    }
    if (!cur.empty()) {
      if (fill && !fill->is_none())
        while (int64_t(cur.size()) < n) cur.push_back(*fill);
      out.push_back(Value::new_list(std::move(cur)));
    }
    return Value::new_list(std::move(out));
  }
  if (name == "wordcount") {
    int64_t n = 0;
    bool in_word = false;
    for (char32_t c : utf8_decode(v.str())) {
      std::string one;
      utf8_append(one, c);
      bool w = c == '_' || py::is_class(one, py::CharClass::kAlnum);
      if (w && !in_word) ++n;
      in_word = w;
    }
    return Value::integer(n);
  }
  if (name == "striptags") return Value::string(striptags(v.str()));
  if (name == "center") {
    CallArgs ca;
    ca.positional.push_back(arg(0, "width") ? *arg(0, "width") : Value::integer(80));
    return get_attr(Value::string(v.str()), "center").fn->fn(*this, ca);
  }
  if (name == "format") {
    if (!a.keyword.empty()) {
      Value d = Value::new_dict();
      for (const auto& [k, x] : a.keyword) d.dict->set(k, x);
      return Value::string(percent_format(v.str(), d));
    }
    return Value::string(percent_format(v.str(), Value::new_list(a.positional, true)));
  }
  if (name == "attr") return get_attr(v, arg(0, "name") ? arg(0, "name")->str() : "");
  if (name == "pprint") return Value::string(v.repr());
  runtime_fail("no filter named '" + name + "'");
}

bool Evaluator::has_test(const std::string& name) const {
  static const std::set<std::string> tests = {
      "defined", "undefined", "none", "string", "number", "integer", "float", "mapping", "iterable",
      "sequence", "boolean", "eq", "equalto", "==", "ne", "!=", "gt", ">", "greaterthan", "ge", ">=",
      "lt", "<", "lessthan", "le", "<=", "true", "false", "in", "odd", "even", "divisibleby", "callable",
      "sameas", "lower", "upper", "filter", "test", "escaped"};
  return tests.count(name) > 0;
}

bool Evaluator::test(const std::string& name, const Value& v, CallArgs& a) {
  const Value* other = a.get(0, "");
  auto need_other = [&]() -> const Value& {
    if (!other) runtime_fail("test '" + name + "' needs an argument");
    return *other;
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.b;
  if (name == "false") return v.is_bool() && !v.b;
  if (name == "mapping") return v.is_dict() && !v.dict->is_namespace;
  // Jinja's Undefined is iterable (empty) and has __len__/__getitem__, so both tests accept it.
  if (name == "iterable") return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
  if (name == "sequence") return v.is_string() || v.is_list() || (v.is_dict() && !v.dict->is_namespace) || v.is_undefined();
  if (name == "callable") return v.is_function();
  if (name == "eq" || name == "equalto" || name == "==") return equals(v, need_other());
  if (name == "ne" || name == "!=") return !equals(v, need_other());
  if (name == "gt" || name == ">" || name == "greaterthan") return compare(v, need_other()) > 0;
  if (name == "ge" || name == ">=") return compare(v, need_other()) >= 0;
  if (name == "lt" || name == "<" || name == "lessthan") return compare(v, need_other()) < 0;
  if (name == "le" || name == "<=") return compare(v, need_other()) <= 0;
  if (name == "in") return contains(need_other(), v);
  if (name == "odd" || name == "even") {
    if (!v.is_int() && !v.is_bool()) runtime_fail(std::string("test '") + name + "' needs an integer, got " + v.type_name());
    int64_t r = v.as_int() % 2;
    return name == "odd" ? r != 0 : r == 0;
  }
  if (name == "divisibleby") {
    int64_t d = need_other().as_int();
    if (d == 0) runtime_fail("integer division or modulo by zero");
    return v.as_int() % d == 0;
  }
  if (name == "sameas") {
    const Value& o = need_other();
    if (v.kind != o.kind) return false;
    if (v.is_list()) return v.list == o.list;
    if (v.is_dict()) return v.dict == o.dict;
    if (v.is_function()) return v.fn == o.fn;
    return equals(v, o);
  }
  if (name == "lower") return v.is_string() && py::is_class(v.s, py::CharClass::kLower);
  if (name == "upper") return v.is_string() && py::is_class(v.s, py::CharClass::kUpper);
  if (name == "test") return v.is_string() && has_test(v.s);
  if (name == "filter") {
    static const std::set<std::string> filters = {
        "trim", "tojson", "length", "count", "upper", "lower", "capitalize", "title", "replace", "default", "d",
        "first", "last", "join", "list", "map", "select", "reject", "selectattr", "rejectattr", "items",
        "dictsort", "indent", "string", "int", "float", "round", "safe", "e", "escape", "forceescape", "unique",
        "abs", "sum", "min", "max", "sort", "reverse", "batch", "wordcount", "striptags", "center", "format",
        "attr", "pprint"};
    return v.is_string() && filters.count(v.s) > 0;
  }
  if (name == "escaped") return false;
  runtime_fail("no test named '" + name + "'");
}

}  // namespace lathe::tmpl
