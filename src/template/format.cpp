// Python string formatting: `"%s: %d" % (a, b)` (printf-style) and `"{} {name}".format(...)`.
// Only the conversions templates use are supported; anything else fails loudly.
#include <cctype>
#include <cstdio>

#include "template/eval.h"

namespace lathe::tmpl {

namespace {

struct Spec {
  std::string flags;
  int width = -1, precision = -1;
  char type = 's';
};

std::string pad(std::string s, const Spec& spec, bool numeric) {
  int64_t n = length(Value::string(s));
  if (spec.width < 0 || n >= spec.width) return s;
  size_t fill = size_t(spec.width - n);
  if (spec.flags.find('-') != std::string::npos) return s + std::string(fill, ' ');
  if (numeric && spec.flags.find('0') != std::string::npos) {
    size_t sign = (!s.empty() && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
    return s.substr(0, sign) + std::string(fill, '0') + s.substr(sign);
  }
  return std::string(fill, ' ') + s;
}

std::string convert(const Value& v, const Spec& spec) {
  char buf[512];
  std::string cflags;
  for (char c : spec.flags)
    if (c == '+' || c == ' ' || c == '#') cflags += c;
  switch (spec.type) {
    case 's': {
      std::string s = v.str();
      if (spec.precision >= 0) s = utf8_encode(utf8_decode(s).substr(0, size_t(spec.precision)));
      return pad(s, spec, false);
    }
    case 'r': return pad(v.repr(), spec, false);
    case 'd':
    case 'i':
    case 'u': {
      if (!v.is_number()) runtime_fail(std::string("%d format: a real number is required, not ") + v.type_name());
      std::snprintf(buf, sizeof buf, ("%" + cflags + "lld").c_str(), (long long)v.as_int());
      return pad(buf, spec, true);
    }
    case 'f':
    case 'F':
    case 'e':
    case 'E':
    case 'g':
    case 'G': {
      if (!v.is_number()) runtime_fail(std::string("must be real number, not ") + v.type_name());
      int prec = spec.precision >= 0 ? spec.precision : 6;
      std::snprintf(buf, sizeof buf, ("%" + cflags + "." + std::to_string(prec) + spec.type).c_str(), v.as_double());
      return pad(buf, spec, true);
    }
    case 'x':
    case 'X':
    case 'o': {
      if (!v.is_int() && !v.is_bool()) runtime_fail(std::string("%x format: an integer is required, not ") + v.type_name());
      long long x = v.as_int();
      std::snprintf(buf, sizeof buf, (std::string("%") + cflags + "ll" + spec.type).c_str(), x < 0 ? -x : x);
      return pad((x < 0 ? "-" : "") + std::string(buf), spec, true);
    }
    case 'c': {
      std::string out;
      if (v.is_string()) out = v.s;
      else utf8_append(out, char32_t(v.as_int()));
      return pad(out, spec, false);
    }
    default: runtime_fail(std::string("unsupported format character '") + spec.type + "'");
  }
}

}  // namespace

std::string percent_format(const std::string& fmt, const Value& args) {
  std::vector<Value> positional;
  const Value* mapping = nullptr;
  if (args.is_list() && args.list->tuple) positional = args.list->items;
  else if (args.is_dict()) mapping = &args;
  else positional.push_back(args);
  size_t next = 0;
  std::string out;
  for (size_t k = 0; k < fmt.size(); ++k) {
    if (fmt[k] != '%') {
      out += fmt[k];
      continue;
    }
    ++k;
    if (k >= fmt.size()) runtime_fail("incomplete format");
    if (fmt[k] == '%') {
      out += '%';
      continue;
    }
    const Value* arg = nullptr;
    if (fmt[k] == '(') {
      size_t close = fmt.find(')', k);
      if (close == std::string::npos || !mapping) runtime_fail("format requires a mapping");
      arg = mapping->dict->find(fmt.substr(k + 1, close - k - 1));
      if (!arg) runtime_fail("KeyError: '" + fmt.substr(k + 1, close - k - 1) + "'");
      k = close + 1;
    }
    Spec spec;
    while (k < fmt.size() && std::string("-+ #0").find(fmt[k]) != std::string::npos) spec.flags += fmt[k++];
    auto number = [&](int& dst) {
      if (k < fmt.size() && fmt[k] == '*') {
        if (next >= positional.size()) runtime_fail("not enough arguments for format string");
        dst = int(positional[next++].as_int());
        ++k;
        return;
      }
      int v = -1;
      while (k < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[k]))) v = (v < 0 ? 0 : v * 10) + (fmt[k++] - '0');
      dst = v;
    };
    number(spec.width);
    if (k < fmt.size() && fmt[k] == '.') {
      ++k;
      number(spec.precision);
      if (spec.precision < 0) spec.precision = 0;
    }
    while (k < fmt.size() && (fmt[k] == 'l' || fmt[k] == 'h' || fmt[k] == 'L')) ++k;
    if (k >= fmt.size()) runtime_fail("incomplete format");
    spec.type = fmt[k];
    if (!arg) {
      if (mapping) arg = mapping;
      else if (next < positional.size()) arg = &positional[next++];
      else runtime_fail("not enough arguments for format string");
    }
    out += convert(*arg, spec);
  }
  if (!mapping && next < positional.size()) runtime_fail("not all arguments converted during string formatting");
  return out;
}

std::string brace_format(const std::string& fmt, const CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t k = 0; k < fmt.size(); ++k) {
    char c = fmt[k];
    if (c == '}' ) {
      if (k + 1 < fmt.size() && fmt[k + 1] == '}') ++k;
      out += '}';
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (k + 1 < fmt.size() && fmt[k + 1] == '{') {
      out += '{';
      ++k;
      continue;
    }
    size_t close = fmt.find('}', k);
    if (close == std::string::npos) runtime_fail("Single '{' encountered in format string");
    std::string field = fmt.substr(k + 1, close - k - 1);
    std::string spec_text;
    if (size_t colon = field.find(':'); colon != std::string::npos) {
      spec_text = field.substr(colon + 1);
      field = field.substr(0, colon);
    }
    const Value* arg = nullptr;
    if (field.empty()) {
      arg = args.get(auto_index++, "");
    } else if (std::isdigit(static_cast<unsigned char>(field[0]))) {
      arg = args.get(size_t(std::stoul(field)), "");
    } else {
      arg = args.find_kw(field);
    }
    if (!arg) runtime_fail("format(): no argument for field '{" + field + "}'");
    if (spec_text.empty()) {
      out += arg->str();
    } else {
      // [[fill]align][sign][0][width][.precision][type], mapped onto the printf-style converter.
      Spec spec;
      size_t p = 0;
      char align = 0, fill = ' ';
      if (spec_text.size() >= 2 && std::string("<>^").find(spec_text[1]) != std::string::npos) {
        fill = spec_text[0];
        align = spec_text[1];
        p = 2;
      } else if (!spec_text.empty() && std::string("<>^").find(spec_text[0]) != std::string::npos) {
        align = spec_text[p++];
      }
      while (p < spec_text.size() && std::string("+- 0").find(spec_text[p]) != std::string::npos) spec.flags += spec_text[p++];
      int width = -1;
      while (p < spec_text.size() && std::isdigit(static_cast<unsigned char>(spec_text[p]))) width = (width < 0 ? 0 : width * 10) + (spec_text[p++] - '0');
      if (p < spec_text.size() && spec_text[p] == '.') {
        ++p;
        spec.precision = 0;
        while (p < spec_text.size() && std::isdigit(static_cast<unsigned char>(spec_text[p]))) spec.precision = spec.precision * 10 + (spec_text[p++] - '0');
      }
      spec.type = p < spec_text.size() ? spec_text[p] : (arg->is_number() && !arg->is_bool() ? (arg->is_float() ? 'g' : 'd') : 's');
      if (spec.type == 'g' && spec.precision < 0 && arg->is_float()) spec.type = 'r';
      std::string body = spec.type == 'r' ? arg->str() : convert(*arg, spec);
      int64_t n = length(Value::string(body));
      if (width > n) {
        size_t padn = size_t(width - n);
        if (!align) align = arg->is_number() ? '>' : '<';
        std::string fills(padn, fill);
        if (align == '<') body += fills;
        else if (align == '>') body = fills + body;
        else body = std::string(padn / 2, fill) + body + std::string(padn - padn / 2, fill);
      }
      out += body;
    }
    k = close;
  }
  return out;
}

}  // namespace lathe::tmpl
