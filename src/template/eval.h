// The tree-walking interpreter. Scoping follows Jinja: a for-loop body gets a fresh scope on every
// iteration (so `set` inside a loop never leaks out; namespace() is the escape hatch), macros get
// their own scope chained to where they were defined, if-blocks share their parent's scope.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "template/ast.h"
#include "template/value.h"

namespace lathe::tmpl {

struct Frame {
  std::shared_ptr<Frame> parent;
  std::unordered_map<std::string, Value> vars;
  const Value* find(const std::string& name) const {
    for (const Frame* f = this; f; f = f->parent.get()) {
      auto it = f->vars.find(name);
      if (it != f->vars.end()) return &it->second;
    }
    return nullptr;
  }
};
using FramePtr = std::shared_ptr<Frame>;

class Evaluator {
 public:
  enum class Flow { kNormal, kBreak, kContinue };

  // Runs the program against `globals`; errors carry the template line.
  static std::string render(const Program& program, FramePtr globals);

  Flow exec(const Body& body, const FramePtr& frame, std::string& out);
  Value eval(const Expr& e, const FramePtr& frame);
  Value call(const Value& callee, CallArgs& args);

  // filters.cpp
  Value filter(const std::string& name, Value subject, CallArgs& args);
  bool test(const std::string& name, const Value& subject, CallArgs& args);
  bool has_test(const std::string& name) const;

  // methods.cpp: attribute access, item access and Python's str/list/dict methods.
  Value get_attr(const Value& obj, const std::string& name);
  Value get_item(const Value& obj, const Value& key);
  Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step);

  int line() const { return line_; }

 private:
  Flow exec_stmt(const Stmt& s, const FramePtr& frame, std::string& out);
  Flow exec_for(const Stmt& s, const FramePtr& frame, std::string& out);
  Value make_macro(const Stmt& s, const FramePtr& frame);
  Value binary(const std::string& op, const Value& a, const Value& b);
  bool compare_op(const std::string& op, const Value& a, const Value& b);
  void collect_args(const Expr& e, size_t first, const FramePtr& frame, CallArgs& args);
  void assign_targets(Frame& frame, const std::vector<std::string>& targets, const Value& v);

  int line_ = 0;
  int depth_ = 0;  // macro recursion guard
  std::vector<FramePtr> macro_frames_;  // frames holding macros, cleared after the render
};

// Global functions every template sees (range, namespace, dict, raise_exception, strftime_now, ...).
void install_globals(Frame& frame);

// Python's `str % args` string formatting (used by the % operator and the format filter).
std::string percent_format(const std::string& fmt, const Value& args);
// Python's str.format for the {} / {0} / {name} forms templates use.
std::string brace_format(const std::string& fmt, const CallArgs& args);
bool contains(const Value& container, const Value& item);

}  // namespace lathe::tmpl
