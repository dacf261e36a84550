// Global functions: Jinja's (range, namespace, dict, cycler-free subset) plus the two transformers
// adds for chat templates (raise_exception, strftime_now).
#include <ctime>

#include "core/error.h"
#include "template/eval.h"

namespace lathe::tmpl {

namespace {
constexpr int64_t kMaxRange = 100000;  // Jinja's sandbox refuses larger ranges too
}

void install_globals(Frame& frame) {
  frame.vars["range"] = Value::function("range", [](Evaluator&, CallArgs& a) {
    if (a.positional.empty() || a.positional.size() > 3) runtime_fail("range expected 1 to 3 arguments");
    int64_t start = 0, stop, step = 1;
    if (a.positional.size() == 1) {
      stop = a.positional[0].as_int();
    } else {
      start = a.positional[0].as_int();
      stop = a.positional[1].as_int();
      if (a.positional.size() == 3) step = a.positional[2].as_int();
    }
    if (step == 0) runtime_fail("range() arg 3 must not be zero");
    std::vector<Value> out;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
      if (int64_t(out.size()) >= kMaxRange) runtime_fail("range too big (more than 100000 items)");
      out.push_back(Value::integer(k));
    }
    return Value::new_list(std::move(out));
  });
  auto make_dict = [](CallArgs& a, bool is_namespace) {
    Value d = Value::new_dict();
    d.dict->is_namespace = is_namespace;
    for (const auto& p : a.positional) {
      if (!p.is_dict()) runtime_fail("expected a mapping as positional argument");
      for (const auto& [k, v] : p.dict->items) d.dict->set(k, v);
    }
    for (const auto& [k, v] : a.keyword) d.dict->set(k, v);
    return d;
  };
  frame.vars["namespace"] = Value::function("namespace", [make_dict](Evaluator&, CallArgs& a) { return make_dict(a, true); });
  frame.vars["dict"] = Value::function("dict", [make_dict](Evaluator&, CallArgs& a) { return make_dict(a, false); });
  frame.vars["raise_exception"] = Value::function("raise_exception", [](Evaluator&, CallArgs& a) -> Value {
    // The template's own message, verbatim: it is written for the end user ("roles must alternate").
    const Value* msg = a.get(0, "message");
    throw Error(ErrorKind::kInvalidArgument, msg ? msg->str() : std::string("raise_exception called"));
  });
  frame.vars["strftime_now"] = Value::function("strftime_now", [](Evaluator&, CallArgs& a) {
    const Value* fmt = a.get(0, "format");
    if (!fmt || !fmt->is_string()) runtime_fail("strftime_now expects a format string");
    std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char buf[256];
    size_t n = std::strftime(buf, sizeof buf, fmt->s.c_str(), &local);
    return Value::string(std::string(buf, n));
  });
}

}  // namespace lathe::tmpl
