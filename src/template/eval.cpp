// Statement execution and expression evaluation, with Python's operator semantics.
#include "template/eval.h"

#include <cmath>

#include "core/error.h"

namespace lathe::tmpl {

namespace {
constexpr int kMaxCallDepth = 200;  // a recursive macro without a base case must not blow the stack

[[noreturn]] void undefined_fail(const Value& v) {
  runtime_fail(v.s.empty() ? std::string("value is undefined") : v.s);
}
}  // namespace

std::string Evaluator::render(const Program& program, FramePtr globals) {
  Evaluator ev;
  // Break the frame <-> macro reference cycles however the render ends.
  struct Release {
    Evaluator& ev;
    ~Release() {
      for (auto& f : ev.macro_frames_) f->vars.clear();
    }
  } release{ev};
  std::string out;
  try {
    ev.exec(program.body, globals, out);
  } catch (const RuntimeFail& f) {
    fail(ErrorKind::kFormat, "template error at line {}: {}", ev.line_, f.message);
  }
  return out;
}

Evaluator::Flow Evaluator::exec(const Body& body, const FramePtr& frame, std::string& out) {
  for (const auto& s : body) {
    Flow f = exec_stmt(*s, frame, out);
    if (f != Flow::kNormal) return f;
  }
  return Flow::kNormal;
}

void Evaluator::assign_targets(Frame& frame, const std::vector<std::string>& targets, const Value& v) {
  if (targets.size() == 1) {
    frame.vars[targets[0]] = v;
    return;
  }
  std::vector<Value> items = iterate(v);
  if (items.size() != targets.size())
    runtime_fail(items.size() < targets.size()
                     ? "not enough values to unpack (expected " + std::to_string(targets.size()) + ", got " +
                           std::to_string(items.size()) + ")"
                     : "too many values to unpack (expected " + std::to_string(targets.size()) + ")");
  for (size_t k = 0; k < targets.size(); ++k) frame.vars[targets[k]] = items[k];
}

Evaluator::Flow Evaluator::exec_stmt(const Stmt& s, const FramePtr& frame, std::string& out) {
  line_ = s.line;
  switch (s.kind) {
    case Stmt::Kind::kText: out += s.text; return Flow::kNormal;
    case Stmt::Kind::kOutput: {
      Value v = eval(*s.expr, frame);
      out += v.str();
      return Flow::kNormal;
    }
    case Stmt::Kind::kIf:
      for (const auto& [cond, body] : s.branches) {
        if (eval(*cond, frame).truthy()) return exec(body, frame, out);
      }
      return exec(s.else_body, frame, out);
    case Stmt::Kind::kFor: return exec_for(s, frame, out);
    case Stmt::Kind::kSet: {
      Value v = eval(*s.expr, frame);
      if (!s.attr.empty()) {
        const Value* ns = frame->find(s.targets[0]);
        if (!ns || !ns->is_dict() || !ns->dict->is_namespace)
          runtime_fail("cannot assign attribute '" + s.attr + "' on '" + s.targets[0] +
                       "': it is not a namespace() object");
        ns->dict->set(s.attr, std::move(v));
      } else {
        assign_targets(*frame, s.targets, v);
      }
      return Flow::kNormal;
    }
    case Stmt::Kind::kSetBlock: {
      std::string captured;
      exec(s.body, frame, captured);
      Value v = Value::string(std::move(captured));
      if (s.expr) {
        // The filter chain was parsed over a null subject; walk it innermost-first.
        std::vector<const Expr*> chain;
        for (const Expr* e = s.expr.get(); e; e = e->args[0].get()) chain.push_back(e);
        for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
          CallArgs args;
          collect_args(**it, 1, frame, args);
          v = filter((*it)->name, std::move(v), args);
        }
      }
      frame->vars[s.targets[0]] = std::move(v);
      return Flow::kNormal;
    }
    case Stmt::Kind::kMacro: frame->vars[s.text] = make_macro(s, frame); return Flow::kNormal;
    case Stmt::Kind::kCallBlock: {
      // caller() renders the block body in the caller's scope, with the block's own parameters.
      const Stmt* stmt = &s;
      FramePtr defining = frame;
      Value caller = Value::function("caller", [stmt, defining](Evaluator& ev, CallArgs& args) {
        auto f = std::make_shared<Frame>();
        f->parent = defining;
        for (size_t k = 0; k < stmt->params.size(); ++k) {
          const Param& p = stmt->params[k];
          const Value* given = args.get(k, p.name);
          f->vars[p.name] = given ? *given : p.default_value ? ev.eval(*p.default_value, f) : Value::undefined();
        }
        std::string body;
        ev.exec(stmt->body, f, body);
        return Value::string(std::move(body));
      });
      const Expr& call_expr = *s.expr;
      Value callee = eval(*call_expr.args[0], frame);
      CallArgs args;
      collect_args(call_expr, 1, frame, args);
      args.keyword.emplace_back("caller", std::move(caller));
      out += call(callee, args).str();
      return Flow::kNormal;
    }
    case Stmt::Kind::kFilterBlock: {
      std::string captured;
      exec(s.body, frame, captured);
      Value v = Value::string(std::move(captured));
      std::vector<const Expr*> chain;
      for (const Expr* e = s.expr.get(); e; e = e->args[0].get()) chain.push_back(e);
      for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
        CallArgs args;
        collect_args(**it, 1, frame, args);
        v = filter((*it)->name, std::move(v), args);
      }
      out += v.str();
      return Flow::kNormal;
    }
    case Stmt::Kind::kBreak: return Flow::kBreak;
    case Stmt::Kind::kContinue: return Flow::kContinue;
    case Stmt::Kind::kDo: eval(*s.expr, frame); return Flow::kNormal;
    case Stmt::Kind::kWith: {
      auto inner = std::make_shared<Frame>();
      inner->parent = frame;
      for (const auto& [name, e] : s.assigns) inner->vars[name] = eval(*e, frame);
      return exec(s.body, inner, out);
    }
    case Stmt::Kind::kBody: return exec(s.body, frame, out);
  }
  return Flow::kNormal;
}

Evaluator::Flow Evaluator::exec_for(const Stmt& s, const FramePtr& frame, std::string& out) {
  Value seq = eval(*s.expr, frame);
  std::vector<Value> items = iterate(seq);
  if (s.cond) {
    // The inline `if` filters before the loop object exists, so loop.length/index count only
    // the kept items (Jinja semantics).
    std::vector<Value> kept;
    for (auto& item : items) {
      auto f = std::make_shared<Frame>();
      f->parent = frame;
      assign_targets(*f, s.targets, item);
      if (eval(*s.cond, f).truthy()) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    auto f = std::make_shared<Frame>();
    f->parent = frame;
    exec(s.else_body, f, out);
    return Flow::kNormal;
  }
  const int64_t n = int64_t(items.size());
  auto items_ptr = std::make_shared<std::vector<Value>>(std::move(items));
  for (int64_t k = 0; k < n; ++k) {
    auto f = std::make_shared<Frame>();
    f->parent = frame;
    assign_targets(*f, s.targets, (*items_ptr)[size_t(k)]);
    Value loop = Value::new_dict();
    auto& d = *loop.dict;
    d.set("index", Value::integer(k + 1));
    d.set("index0", Value::integer(k));
    d.set("revindex", Value::integer(n - k));
    d.set("revindex0", Value::integer(n - k - 1));
    d.set("first", Value::boolean(k == 0));
    d.set("last", Value::boolean(k == n - 1));
    d.set("length", Value::integer(n));
    d.set("depth", Value::integer(1));
    d.set("depth0", Value::integer(0));
    d.set("previtem", k > 0 ? (*items_ptr)[size_t(k - 1)] : Value::undefined("there is no previous item"));
    d.set("nextitem", k + 1 < n ? (*items_ptr)[size_t(k + 1)] : Value::undefined("there is no next item"));
    d.set("cycle", Value::function("cycle", [k](Evaluator&, CallArgs& args) {
      if (args.positional.empty()) runtime_fail("no items for cycling given");
      return args.positional[size_t(k) % args.positional.size()];
    }));
    f->vars["loop"] = std::move(loop);
    line_ = s.line;
    Flow flow = exec(s.body, f, out);
    if (flow == Flow::kBreak) break;
  }
  return Flow::kNormal;
}

Value Evaluator::make_macro(const Stmt& s, const FramePtr& frame) {
  const Stmt* stmt = &s;
  // The macro is stored in the frame it captures: a shared_ptr cycle that render() breaks when it
  // finishes (see macro_frames_).
  macro_frames_.push_back(frame);
  FramePtr defining = frame;
  return Value::function(s.text, [stmt, defining](Evaluator& ev, CallArgs& args) {
    if (++ev.depth_ > kMaxCallDepth) runtime_fail("macro '" + stmt->text + "' recursed too deeply");
    auto f = std::make_shared<Frame>();
    f->parent = defining;
    size_t npos = 0;
    for (size_t k = 0; k < stmt->params.size(); ++k) {
      const Param& p = stmt->params[k];
      const Value* given = args.get(k, p.name);
      if (k < args.positional.size()) ++npos;
      if (given) f->vars[p.name] = *given;
      else if (p.default_value) f->vars[p.name] = ev.eval(*p.default_value, f);
      else f->vars[p.name] = Value::undefined("'" + p.name + "' is undefined");
    }
    std::vector<Value> extra(args.positional.begin() + long(std::min(npos, args.positional.size())),
                             args.positional.end());
    f->vars["varargs"] = Value::new_list(std::move(extra), true);
    Value kwargs = Value::new_dict();
    for (const auto& [k, v] : args.keyword) {
      if (k == "caller") {
        f->vars["caller"] = v;
        continue;
      }
      bool is_param = false;
      for (const auto& p : stmt->params) is_param |= p.name == k;
      if (!is_param) kwargs.dict->set(k, v);
    }
    f->vars["kwargs"] = std::move(kwargs);
    std::string out;
    ev.exec(stmt->body, f, out);
    --ev.depth_;
    return Value::string(std::move(out));
  });
}

void Evaluator::collect_args(const Expr& e, size_t first, const FramePtr& frame, CallArgs& args) {
  for (size_t k = first; k < e.args.size(); ++k) args.positional.push_back(eval(*e.args[k], frame));
  for (const auto& [name, x] : e.kwargs) args.keyword.emplace_back(name, eval(*x, frame));
}

Value Evaluator::call(const Value& callee, CallArgs& args) {
  if (callee.is_undefined()) undefined_fail(callee);
  if (!callee.is_function()) runtime_fail(std::string("'") + callee.type_name() + "' object is not callable");
  return callee.fn->fn(*this, args);
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind) {
    case Value::Kind::kString:
      if (!item.is_string())
        runtime_fail(std::string("'in <string>' requires string as left operand, not ") + item.type_name());
      return container.s.find(item.s) != std::string::npos;
    case Value::Kind::kList:
      for (const auto& e : container.list->items)
        if (equals(e, item)) return true;
      return false;
    case Value::Kind::kDict: return item.is_string() && container.dict->find(item.s) != nullptr;
    case Value::Kind::kUndefined: return false;
    default: runtime_fail(std::string("argument of type '") + container.type_name() + "' is not iterable");
  }
}

bool Evaluator::compare_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equals(a, b);
  if (op == "!=") return !equals(a, b);
  if (op == "in") return contains(b, a);
  if (op == "notin") return !contains(b, a);
  if (a.is_undefined()) undefined_fail(a);
  if (b.is_undefined()) undefined_fail(b);
  int c = compare(a, b);
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  return c >= 0;
}

namespace {

Value repeat(const Value& seq, int64_t times) {
  if (seq.is_string()) {
    std::string out;
    for (int64_t k = 0; k < times; ++k) out += seq.s;
    return Value::string(std::move(out));
  }
  std::vector<Value> out;
  for (int64_t k = 0; k < times; ++k) out.insert(out.end(), seq.list->items.begin(), seq.list->items.end());
  return Value::new_list(std::move(out), seq.list->tuple);
}

double py_fmod(double a, double b) {
  double m = std::fmod(a, b);
  if (m != 0 && ((m < 0) != (b < 0))) m += b;
  return m;
}

}  // namespace

Value Evaluator::binary(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") return Value::string(a.str() + b.str());
  if (a.is_undefined()) undefined_fail(a);
  if (b.is_undefined()) undefined_fail(b);
  auto type_error = [&]() -> Value {
    if (op == "+" && a.is_string())
      runtime_fail(std::string("can only concatenate str (not \"") + b.type_name() + "\") to str");
    runtime_fail("unsupported operand type(s) for " + op + ": '" + a.type_name() + "' and '" + b.type_name() + "'");
  };
  bool nums = a.is_number() && b.is_number();
  bool ints = nums && !a.is_float() && !b.is_float();
  if (op == "+") {
    if (ints) return Value::integer(a.as_int() + b.as_int());
    if (nums) return Value::number(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) return Value::string(a.s + b.s);
    if (a.is_list() && b.is_list() && a.list->tuple == b.list->tuple) {
      std::vector<Value> items = a.list->items;
      items.insert(items.end(), b.list->items.begin(), b.list->items.end());
      return Value::new_list(std::move(items), a.list->tuple);
    }
    return type_error();
  }
  if (op == "-") {
    if (ints) return Value::integer(a.as_int() - b.as_int());
    if (nums) return Value::number(a.as_double() - b.as_double());
    return type_error();
  }
  if (op == "*") {
    if (ints) return Value::integer(a.as_int() * b.as_int());
    if (nums) return Value::number(a.as_double() * b.as_double());
    if ((a.is_string() || a.is_list()) && (b.is_int() || b.is_bool())) return repeat(a, b.as_int());
    if ((b.is_string() || b.is_list()) && (a.is_int() || a.is_bool())) return repeat(b, a.as_int());
    return type_error();
  }
  if (op == "/") {
    if (!nums) return type_error();
    if (b.as_double() == 0) runtime_fail("division by zero");
    return Value::number(a.as_double() / b.as_double());
  }
  if (op == "//") {
    if (!nums) return type_error();
    if (b.as_double() == 0) runtime_fail("integer division or modulo by zero");
    if (ints) {
      int64_t x = a.as_int(), y = b.as_int(), q = x / y;
      if ((x % y != 0) && ((x < 0) != (y < 0))) --q;  // Python floors toward -infinity
      return Value::integer(q);
    }
    return Value::number(std::floor(a.as_double() / b.as_double()));
  }
  if (op == "%") {
    if (a.is_string()) return Value::string(percent_format(a.s, b));
    if (!nums) return type_error();
    if (b.as_double() == 0) runtime_fail("integer division or modulo by zero");
    if (ints) {
      int64_t x = a.as_int(), y = b.as_int(), m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) m += y;
      return Value::integer(m);
    }
    return Value::number(py_fmod(a.as_double(), b.as_double()));
  }
  if (op == "**") {
    if (!nums) return type_error();
    if (ints && b.as_int() >= 0) {
      int64_t r = 1, base = a.as_int();
      for (int64_t k = 0; k < b.as_int(); ++k) r *= base;
      return Value::integer(r);
    }
    return Value::number(std::pow(a.as_double(), b.as_double()));
  }
  runtime_fail("unknown operator " + op);
}

Value Evaluator::eval(const Expr& e, const FramePtr& frame) {
  line_ = e.line;
  switch (e.kind) {
    case Expr::Kind::kLiteral: return e.value;
    case Expr::Kind::kName: {
      const Value* v = frame->find(e.name);
      return v ? *v : Value::undefined("'" + e.name + "' is undefined");
    }
    case Expr::Kind::kList:
    case Expr::Kind::kTuple: {
      std::vector<Value> items;
      for (const auto& a : e.args) items.push_back(eval(*a, frame));
      return Value::new_list(std::move(items), e.kind == Expr::Kind::kTuple);
    }
    case Expr::Kind::kDict: {
      Value d = Value::new_dict();
      for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
        Value key = eval(*e.args[k], frame);
        d.dict->set(key.str(), eval(*e.args[k + 1], frame));
      }
      return d;
    }
    case Expr::Kind::kGetAttr: {
      Value obj = eval(*e.args[0], frame);
      line_ = e.line;
      return get_attr(obj, e.name);
    }
    case Expr::Kind::kGetItem: {
      Value obj = eval(*e.args[0], frame);
      Value key = eval(*e.args[1], frame);
      line_ = e.line;
      return get_item(obj, key);
    }
    case Expr::Kind::kSlice: {
      Value obj = eval(*e.args[0], frame);
      Value parts[3];
      for (int k = 0; k < 3; ++k)
        parts[k] = e.args[size_t(k) + 1] ? eval(*e.args[size_t(k) + 1], frame) : Value::none();
      line_ = e.line;
      return slice(obj, parts[0], parts[1], parts[2]);
    }
    case Expr::Kind::kCall: {
      Value callee = eval(*e.args[0], frame);
      CallArgs args;
      collect_args(e, 1, frame, args);
      line_ = e.line;
      return call(callee, args);
    }
    case Expr::Kind::kFilter: {
      Value subject = e.args[0] ? eval(*e.args[0], frame) : Value::undefined();
      CallArgs args;
      collect_args(e, 1, frame, args);
      line_ = e.line;
      return filter(e.name, std::move(subject), args);
    }
    case Expr::Kind::kTest: {
      Value subject = eval(*e.args[0], frame);
      CallArgs args;
      collect_args(e, 1, frame, args);
      line_ = e.line;
      return Value::boolean(test(e.name, subject, args) != e.negated);
    }
    case Expr::Kind::kNeg:
    case Expr::Kind::kPos: {
      Value v = eval(*e.args[0], frame);
      if (v.is_undefined()) undefined_fail(v);
      if (!v.is_number()) runtime_fail(std::string("bad operand type for unary -: '") + v.type_name() + "'");
      if (e.kind == Expr::Kind::kPos) return v.is_bool() ? Value::integer(v.as_int()) : v;
      return v.is_float() ? Value::number(-v.f) : Value::integer(-v.as_int());
    }
    case Expr::Kind::kNot: return Value::boolean(!eval(*e.args[0], frame).truthy());
    case Expr::Kind::kAnd: {
      Value a = eval(*e.args[0], frame);
      return a.truthy() ? eval(*e.args[1], frame) : a;
    }
    case Expr::Kind::kOr: {
      Value a = eval(*e.args[0], frame);
      return a.truthy() ? a : eval(*e.args[1], frame);
    }
    case Expr::Kind::kBinary: {
      Value a = eval(*e.args[0], frame);
      Value b = eval(*e.args[1], frame);
      line_ = e.line;
      return binary(e.name, a, b);
    }
    case Expr::Kind::kCompare: {
      Value left = eval(*e.args[0], frame);
      for (size_t k = 0; k < e.ops.size(); ++k) {
        Value right = eval(*e.args[k + 1], frame);
        line_ = e.line;
        if (!compare_op(e.ops[k], left, right)) return Value::boolean(false);
        left = std::move(right);
      }
      return Value::boolean(true);
    }
    case Expr::Kind::kCond: {
      if (eval(*e.args[0], frame).truthy()) return eval(*e.args[1], frame);
      if (e.args[2]) return eval(*e.args[2], frame);
      return Value::undefined("the inline if-expression evaluated to false and has no else");
    }
  }
  return Value::undefined();
}

}  // namespace lathe::tmpl
