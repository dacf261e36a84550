// The parsed template: expression and statement trees. One node type per category with a kind tag
// keeps the evaluator a pair of switch statements instead of a visitor hierarchy.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "template/value.h"

namespace lathe::tmpl {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,   // value
    kName,      // name
    kList,      // args = items
    kTuple,     // args = items
    kDict,      // args = key0, value0, key1, value1, ...
    kGetAttr,   // args[0].name
    kGetItem,   // args[0][args[1]]
    kSlice,     // args[0][args[1]:args[2]:args[3]] (null parts omitted)
    kCall,      // args[0](args[1..], kwargs)
    kFilter,    // args[0] | name(args[1..], kwargs); args[0] null inside {% filter %}
    kTest,      // args[0] is [not] name(args[1..], kwargs)
    kNeg,       // -args[0]
    kPos,       // +args[0]
    kNot,       // not args[0]
    kBinary,    // args[0] name args[1] for + - * / // % ** ~
    kAnd,
    kOr,
    kCompare,   // args[0] ops[0] args[1] ops[1] args[2] ... (chained like Python)
    kCond,      // args[1] if args[0] else args[2] (args[2] may be null)
  };
  Kind kind;
  int line = 0, col = 0;
  Value value;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
  bool negated = false;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Param {
  std::string name;
  ExprPtr default_value;  // null: required
};

struct Stmt {
  enum class Kind {
    kText,         // text
    kOutput,       // {{ expr }}
    kIf,           // branches (cond, body); else_body
    kFor,          // for targets in expr [if cond] body [else else_body]
    kSet,          // set targets = expr, or set targets[0].attr = expr
    kSetBlock,     // {% set targets[0] %}body{% endset %}, optional filter in expr
    kMacro,        // macro text(params) body
    kCallBlock,    // {% call(params) expr %}body{% endcall %}
    kFilterBlock,  // {% filter expr %}body{% endfilter %}; expr is a filter chain over null
    kBreak,
    kContinue,
    kDo,           // {% do expr %}
    kWith,         // {% with a = 1 %}body{% endwith %}: a scope
    kBody,         // a plain body ({% generation %} renders its content as is)
  };
  Kind kind;
  int line = 0;
  std::string text;
  std::vector<std::string> targets;
  std::string attr;
  ExprPtr expr, cond;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body, else_body;
  std::vector<Param> params;
  std::vector<std::pair<std::string, ExprPtr>> assigns;  // with-statement bindings
};

struct Program {
  Body body;
};

// Parses the whole template; throws lathe::Error(kFormat) with line/column on bad syntax.
struct LexOptions;
std::shared_ptr<const Program> parse_program(std::string_view source, const LexOptions& options);

}  // namespace lathe::tmpl
