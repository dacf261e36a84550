// Recursive-descent parser with Jinja's precedence: conditional < or < and < not < comparisons <
// + - < ~ < * / // % < ** < unary minus < postfix (. [] ()) and filters/tests. Filters bind
// tighter than every binary operator, so `'a' + x | trim` trims only x, as in Jinja.
#include <set>

#include "template/ast.h"
#include "template/lexer.h"

namespace lathe::tmpl {
namespace {

using T = Token::Type;

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : toks_(std::move(tokens)) {}

  std::shared_ptr<const Program> run() {
    auto program = std::make_shared<Program>();
    std::string end = parse_body(program->body, {});
    if (!end.empty()) error(end_tok_, "unexpected '" + end + "'");
    return program;
  }

 private:
  const Token& cur() const { return toks_[pos_]; }
  const Token& peek(size_t n = 1) const { return toks_[std::min(pos_ + n, toks_.size() - 1)]; }
  const Token& next() { return toks_[pos_ < toks_.size() - 1 ? pos_++ : pos_]; }

  [[noreturn]] void error(const Token& t, const std::string& what) const { syntax_error(t.line, t.col, what); }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case T::kText: return "text";
      case T::kVarBegin: return "'{{'";
      case T::kVarEnd: return "'}}'";
      case T::kBlockBegin: return "'{%'";
      case T::kBlockEnd: return "'%}'";
      case T::kName: return "'" + t.text + "'";
      case T::kString: return "a string";
      case T::kInt:
      case T::kFloat: return "a number";
      case T::kOp: return "'" + t.text + "'";
      case T::kEof: return "end of template";
    }
    return "token";
  }

  bool is_op(const char* op) const { return cur().type == T::kOp && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == T::kName && cur().text == name; }
  bool accept_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool accept_name(const char* name) {
    if (!is_name(name)) return false;
    next();
    return true;
  }
  void expect_op(const char* op) {
    if (!accept_op(op)) error(cur(), std::string("expected '") + op + "', got " + describe(cur()));
  }
  void expect_name(const char* name) {
    if (!accept_name(name)) error(cur(), std::string("expected '") + name + "', got " + describe(cur()));
  }
  std::string expect_identifier(const char* what) {
    if (cur().type != T::kName) error(cur(), std::string("expected ") + what + ", got " + describe(cur()));
    return next().text;
  }
  void expect_block_end() {
    if (cur().type != T::kBlockEnd) error(cur(), "expected end of statement '%}', got " + describe(cur()));
    next();
  }

  ExprPtr make(Expr::Kind kind, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = at.line;
    e->col = at.col;
    return e;
  }

  // Parses statements until a block tag whose keyword is in `ends` (returned, tag left open after
  // the keyword) or end of input (returns "").
  std::string parse_body(Body& body, const std::set<std::string>& ends) {
    while (true) {
      const Token& t = cur();
      if (t.type == T::kEof) {
        if (!ends.empty()) {
          std::string list;
          for (const auto& e : ends) list += (list.empty() ? "'" : " or '") + e + "'";
          error(t, "unexpected end of template: expected " + list);
        }
        return "";
      }
      if (t.type == T::kText) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kText;
        s->line = t.line;
        s->text = t.text;
        body.push_back(std::move(s));
        next();
      } else if (t.type == T::kVarBegin) {
        next();
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kOutput;
        s->line = t.line;
        s->expr = parse_tuple();
        if (cur().type != T::kVarEnd) error(cur(), "expected end of print statement '}}', got " + describe(cur()));
        next();
        body.push_back(std::move(s));
      } else if (t.type == T::kBlockBegin) {
        const Token& kw = peek();
        if (kw.type != T::kName) error(kw, "expected a statement keyword, got " + describe(kw));
        if (!ends.count(kw.text) && (kw.text.rfind("end", 0) == 0 || kw.text == "elif" || kw.text == "else")) {
          std::string list;
          for (const auto& e : ends) list += (list.empty() ? "'" : " or '") + e + "'";
          error(kw, "unexpected '" + kw.text + "'" + (list.empty() ? std::string() : ", expected " + list));
        }
        if (ends.count(kw.text)) {
          end_tok_ = kw;
          next();
          next();
          return kw.text;
        }
        next();
        parse_statement(body);
      } else {
        error(t, "unexpected " + describe(t));
      }
    }
  }

  void parse_statement(Body& body) {
    const Token kw = next();
    auto s = std::make_unique<Stmt>();
    s->line = kw.line;
    const std::string& k = kw.text;
    if (k == "if") {
      s->kind = Stmt::Kind::kIf;
      ExprPtr cond = parse_tuple();
      expect_block_end();
      while (true) {
        Body b;
        std::string end = parse_body(b, {"elif", "else", "endif"});
        s->branches.emplace_back(std::move(cond), std::move(b));
        if (end == "elif") {
          cond = parse_tuple();
          expect_block_end();
          continue;
        }
        if (end == "else") {
          expect_block_end();
          parse_body(s->else_body, {"endif"});
        }
        expect_block_end();
        break;
      }
    } else if (k == "for") {
      s->kind = Stmt::Kind::kFor;
      do {
        s->targets.push_back(expect_identifier("a loop variable name"));
      } while (accept_op(","));
      expect_name("in");
      s->expr = parse_tuple(/*allow_cond=*/false);
      if (accept_name("if")) s->cond = parse_expression();
      if (accept_name("recursive")) error(kw, "recursive for-loops are not supported");
      expect_block_end();
      std::string end = parse_body(s->body, {"else", "endfor"});
      if (end == "else") {
        expect_block_end();
        parse_body(s->else_body, {"endfor"});
      }
      expect_block_end();
    } else if (k == "set") {
      std::string first = expect_identifier("a variable name");
      s->targets.push_back(first);
      if (accept_op(".")) {
        s->attr = expect_identifier("an attribute name");
      } else {
        while (accept_op(",")) s->targets.push_back(expect_identifier("a variable name"));
      }
      if (accept_op("=")) {
        s->kind = Stmt::Kind::kSet;
        s->expr = parse_tuple();
        expect_block_end();
      } else {
        if (s->targets.size() != 1 || !s->attr.empty()) error(cur(), "expected '=' in set statement");
        s->kind = Stmt::Kind::kSetBlock;
        if (is_op("|")) s->expr = parse_filter_chain(nullptr);
        expect_block_end();
        parse_body(s->body, {"endset"});
        expect_block_end();
      }
    } else if (k == "macro") {
      s->kind = Stmt::Kind::kMacro;
      s->text = expect_identifier("a macro name");
      parse_params(s->params);
      expect_block_end();
      parse_body(s->body, {"endmacro"});
      if (cur().type == T::kName) next();  // {% endmacro name %}
      expect_block_end();
    } else if (k == "call") {
      s->kind = Stmt::Kind::kCallBlock;
      if (is_op("(")) parse_params(s->params);
      s->expr = parse_expression();
      if (s->expr->kind != Expr::Kind::kCall) error(kw, "expected a macro call after 'call'");
      expect_block_end();
      parse_body(s->body, {"endcall"});
      expect_block_end();
    } else if (k == "filter") {
      s->kind = Stmt::Kind::kFilterBlock;
      s->expr = parse_filter_chain(nullptr, /*leading_pipe=*/false);
      expect_block_end();
      parse_body(s->body, {"endfilter"});
      expect_block_end();
    } else if (k == "break" || k == "continue") {
      s->kind = k == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
      expect_block_end();
    } else if (k == "do") {
      s->kind = Stmt::Kind::kDo;
      s->expr = parse_tuple();
      expect_block_end();
    } else if (k == "with") {
      s->kind = Stmt::Kind::kWith;
      while (cur().type == T::kName) {
        std::string name = next().text;
        expect_op("=");
        s->assigns.emplace_back(name, parse_expression());
        if (!accept_op(",")) break;
      }
      expect_block_end();
      parse_body(s->body, {"endwith"});
      expect_block_end();
    } else if (k == "generation") {
      // transformers' AssistantTracker marks assistant spans; for rendering it is a plain body.
      s->kind = Stmt::Kind::kBody;
      expect_block_end();
      parse_body(s->body, {"endgeneration"});
      expect_block_end();
    } else {
      error(kw, "unknown or unsupported statement '" + k + "'");
    }
    body.push_back(std::move(s));
  }

  void parse_params(std::vector<Param>& params) {
    expect_op("(");
    while (!is_op(")")) {
      Param p;
      p.name = expect_identifier("a parameter name");
      if (accept_op("=")) p.default_value = parse_expression();
      params.push_back(std::move(p));
      if (!accept_op(",")) break;
    }
    expect_op(")");
  }

  // An expression, or a bare tuple `a, b` (print, set and for-iterables allow those).
  ExprPtr parse_tuple(bool allow_cond = true) {
    const Token& at = cur();
    ExprPtr first = allow_cond ? parse_expression() : parse_or();
    if (!is_op(",")) return first;
    auto t = make(Expr::Kind::kTuple, at);
    t->args.push_back(std::move(first));
    while (accept_op(",")) {
      if (cur().type == T::kBlockEnd || cur().type == T::kVarEnd || is_name("if")) break;
      t->args.push_back(allow_cond ? parse_expression() : parse_or());
    }
    return t;
  }

  ExprPtr parse_expression() {
    ExprPtr e = parse_or();
    while (is_name("if")) {
      const Token& at = next();
      auto c = make(Expr::Kind::kCond, at);
      c->args.push_back(parse_or());
      c->args.push_back(std::move(e));
      c->args.push_back(accept_name("else") ? parse_expression() : nullptr);
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(Expr::Kind kind, const Token& at, ExprPtr l, ExprPtr r, std::string op = {}) {
    auto e = make(kind, at);
    e->name = std::move(op);
    e->args.push_back(std::move(l));
    e->args.push_back(std::move(r));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      const Token at = next();
      e = binary(Expr::Kind::kOr, at, std::move(e), parse_and());
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      const Token at = next();
      e = binary(Expr::Kind::kAnd, at, std::move(e), parse_not());
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      const Token at = next();
      auto e = make(Expr::Kind::kNot, at);
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const Token at = cur();
    ExprPtr first = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == T::kOp && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                   cur().text == "<=" || cur().text == ">" || cur().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && peek().type == T::kName && peek().text == "in") {
        next();
        next();
        op = "notin";
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Kind::kCompare, at);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token at = next();
      e = binary(Expr::Kind::kBinary, at, std::move(e), parse_concat(), at.text);
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      const Token at = next();
      e = binary(Expr::Kind::kBinary, at, std::move(e), parse_math2(), "~");
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token at = next();
      e = binary(Expr::Kind::kBinary, at, std::move(e), parse_pow(), at.text);
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary();
    while (is_op("**")) {
      const Token at = next();
      e = binary(Expr::Kind::kBinary, at, std::move(e), parse_unary(), "**");
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter = true) {
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token at = next();
      e = make(at.text == "-" ? Expr::Kind::kNeg : Expr::Kind::kPos, at);
      e->args.push_back(parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token t = cur();
    switch (t.type) {
      case T::kName: {
        next();
        static const std::set<std::string> kTrue = {"true", "True"}, kFalse = {"false", "False"},
                                           kNone = {"none", "None"};
        auto e = make(Expr::Kind::kLiteral, t);
        if (kTrue.count(t.text)) e->value = Value::boolean(true);
        else if (kFalse.count(t.text)) e->value = Value::boolean(false);
        else if (kNone.count(t.text)) e->value = Value::none();
        else {
          e->kind = Expr::Kind::kName;
          e->name = t.text;
        }
        return e;
      }
      case T::kString: {
        std::string s;
        while (cur().type == T::kString) s += next().text;  // adjacent literals concatenate
        auto e = make(Expr::Kind::kLiteral, t);
        e->value = Value::string(std::move(s));
        return e;
      }
      case T::kInt: {
        next();
        auto e = make(Expr::Kind::kLiteral, t);
        e->value = Value::integer(t.int_value);
        return e;
      }
      case T::kFloat: {
        next();
        auto e = make(Expr::Kind::kLiteral, t);
        e->value = Value::number(t.float_value);
        return e;
      }
      case T::kOp:
        if (t.text == "(") {
          next();
          if (accept_op(")")) return make(Expr::Kind::kTuple, t);
          ExprPtr first = parse_expression();
          if (accept_op(")")) return first;  // parenthesized expression
          auto tup = make(Expr::Kind::kTuple, t);
          tup->args.push_back(std::move(first));
          while (accept_op(",")) {
            if (is_op(")")) break;
            tup->args.push_back(parse_expression());
          }
          expect_op(")");
          return tup;
        }
        if (t.text == "[") {
          next();
          auto e = make(Expr::Kind::kList, t);
          while (!is_op("]")) {
            e->args.push_back(parse_expression());
            if (!accept_op(",")) break;
          }
          expect_op("]");
          return e;
        }
        if (t.text == "{") {
          next();
          auto e = make(Expr::Kind::kDict, t);
          while (!is_op("}")) {
            e->args.push_back(parse_expression());
            expect_op(":");
            e->args.push_back(parse_expression());
            if (!accept_op(",")) break;
          }
          expect_op("}");
          return e;
        }
        break;
      default: break;
    }
    error(t, "expected an expression, got " + describe(t));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        const Token at = next();
        auto g = make(Expr::Kind::kGetAttr, at);
        if (cur().type == T::kName) {
          g->name = next().text;
        } else if (cur().type == T::kInt) {
          // x.0 is item access in Jinja
          g->kind = Expr::Kind::kGetItem;
          auto idx = make(Expr::Kind::kLiteral, cur());
          idx->value = Value::integer(next().int_value);
          g->args.push_back(std::move(e));
          g->args.push_back(std::move(idx));
          e = std::move(g);
          continue;
        } else {
          error(cur(), "expected an attribute name after '.', got " + describe(cur()));
        }
        g->args.push_back(std::move(e));
        e = std::move(g);
      } else if (is_op("[")) {
        const Token at = next();
        e = parse_subscript(std::move(e), at);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj, const Token& at) {
    ExprPtr parts[3];
    bool slice = false;
    for (int k = 0; k < 3; ++k) {
      if (!is_op(":") && !is_op("]")) parts[k] = parse_expression();
      if (k < 2 && accept_op(":")) {
        slice = true;
        continue;
      }
      break;
    }
    expect_op("]");
    auto e = make(slice ? Expr::Kind::kSlice : Expr::Kind::kGetItem, at);
    e->args.push_back(std::move(obj));
    if (!slice && !parts[0]) error(at, "expected an index inside '[]'");
    e->args.push_back(std::move(parts[0]));
    if (slice) {
      e->args.push_back(std::move(parts[1]));
      e->args.push_back(std::move(parts[2]));
    }
    return e;
  }

  void parse_args(Expr& call) {
    expect_op("(");
    while (!is_op(")")) {
      if (cur().type == T::kName && peek().type == T::kOp && peek().text == "=") {
        std::string name = next().text;
        next();
        call.kwargs.emplace_back(name, parse_expression());
      } else {
        if (!call.kwargs.empty()) error(cur(), "positional argument after keyword argument");
        call.args.push_back(parse_expression());
      }
      if (!accept_op(",")) break;
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto c = make(Expr::Kind::kCall, cur());
    c->args.push_back(std::move(callee));
    parse_args(*c);
    return c;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        e = parse_filter_chain(std::move(e));
      } else if (is_name("is")) {
        e = parse_test(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  // `| f(args) | g` applied to `subject` (null in {% filter %} and block set, filled in at run time).
  ExprPtr parse_filter_chain(ExprPtr subject, bool leading_pipe = true) {
    bool first = true;
    while ((first && !leading_pipe) || accept_op("|")) {
      first = false;
      const Token at = cur();
      std::string name = expect_identifier("a filter name");
      while (accept_op(".")) name += "." + expect_identifier("a filter name");
      auto f = make(Expr::Kind::kFilter, at);
      f->name = name;
      f->args.push_back(std::move(subject));
      if (is_op("(")) parse_args(*f);
      subject = std::move(f);
    }
    return subject;
  }

  ExprPtr parse_test(ExprPtr subject) {
    const Token at = next();  // 'is'
    auto t = make(Expr::Kind::kTest, at);
    t->negated = accept_name("not");
    t->name = expect_identifier("a test name");
    t->args.push_back(std::move(subject));
    if (is_op("(")) {
      parse_args(*t);
    } else {
      // One bare argument (`x is divisibleby 3`, `x is sameas none`), as Jinja allows.
      const Token& c = cur();
      bool starts_arg = c.type == T::kString || c.type == T::kInt || c.type == T::kFloat ||
                        (c.type == T::kOp && (c.text == "[" || c.text == "{")) ||
                        (c.type == T::kName && c.text != "else" && c.text != "or" && c.text != "and" &&
                         c.text != "if" && c.text != "is" && c.text != "in" && c.text != "not");
      if (starts_arg) t->args.push_back(parse_postfix(parse_primary()));
    }
    return t;
  }

  std::vector<Token> toks_;
  size_t pos_ = 0;
  Token end_tok_{};
};

}  // namespace

std::shared_ptr<const Program> parse_program(std::string_view source, const LexOptions& options) {
  return Parser(tokenize(source, options)).run();
}

}  // namespace lathe::tmpl
