// Error reporting: syntax errors name line, column and what was expected; runtime errors name the
// line and say what went wrong in Python's words.
#include "template_test_util.h"

namespace lathe::tmpl::testing {
namespace {

std::string parse_error(const char* tpl, ErrorKind* kind = nullptr) {
  try {
    Template::parse(tpl);
  } catch (const Error& e) {
    if (kind) *kind = e.kind();
    return e.what();
  }
  return "";
}

TEST(TemplateErrors, SyntaxErrorsHaveLineColumnAndExpectation) {
  ErrorKind kind = ErrorKind::kInternal;
  EXPECT_EQ(parse_error("{% for x in %}", &kind),
            "template syntax error at line 1, column 13: expected an expression, got '%}'");
  EXPECT_EQ(kind, ErrorKind::kFormat);
  EXPECT_EQ(parse_error("a\nb\n{{ 1 + }}"), "template syntax error at line 3, column 8: expected an expression, got '}}'");
  EXPECT_EQ(parse_error("{% if x %}no end"),
            "template syntax error at line 1, column 17: unexpected end of template: expected 'elif' or 'else' or 'endif'");
  EXPECT_EQ(parse_error("{% for a in b %}\n{% endif %}"),
            "template syntax error at line 2, column 4: unexpected 'endif', expected 'else' or 'endfor'");
  EXPECT_EQ(parse_error("{% endfor %}"), "template syntax error at line 1, column 4: unexpected 'endfor'");
  EXPECT_EQ(parse_error("{{ x "), "template syntax error at line 1, column 1: unexpected end of template: missing '}}'");
  EXPECT_EQ(parse_error("{% frobnicate %}"),
            "template syntax error at line 1, column 4: unknown or unsupported statement 'frobnicate'");
  EXPECT_EQ(parse_error("{{ 'abc }}"), "template syntax error at line 1, column 4: unterminated string literal");
  EXPECT_EQ(parse_error("{# never closed"), "template syntax error at line 1, column 1: unterminated comment: missing '#}'");
  EXPECT_EQ(parse_error("{{ f(a=1, 2) }}"), "template syntax error at line 1, column 11: positional argument after keyword argument");
  EXPECT_EQ(parse_error("{% set x %}body"),
            "template syntax error at line 1, column 16: unexpected end of template: expected 'endset'");
  EXPECT_EQ(parse_error("{{ a ? b }}"), "template syntax error at line 1, column 6: unexpected character '?' in tag");
}

TEST(TemplateErrors, RuntimeErrorsHaveLine) {
  ErrorKind kind = ErrorKind::kInternal;
  EXPECT_EQ(render_error("line1\nline2 {{ x.y.z }}", &kind, {{"x", nlohmann::ordered_json::object()}}),
            "template error at line 2: 'dict object' has no attribute 'y'");
  EXPECT_EQ(kind, ErrorKind::kFormat);
  EXPECT_EQ(render_error("{{ x.y }}"), "template error at line 1: 'x' is undefined");
  EXPECT_EQ(render_error("\n\n{{ 'a' + 1 }}"), "template error at line 3: can only concatenate str (not \"int\") to str");
  EXPECT_EQ(render_error("{{ 1 + none }}"), "template error at line 1: unsupported operand type(s) for +: 'int' and 'NoneType'");
  EXPECT_EQ(render_error("{{ 'a' < 1 }}"), "template error at line 1: '<' not supported between instances of 'str' and 'int'");
  EXPECT_EQ(render_error("{% for x in none %}{% endfor %}"), "template error at line 1: 'NoneType' object is not iterable");
  EXPECT_EQ(render_error("{{ 1 / 0 }}"), "template error at line 1: division by zero");
  EXPECT_EQ(render_error("{{ foo() }}"), "template error at line 1: 'foo' is undefined");
  EXPECT_EQ(render_error("{{ 'x' | nosuchfilter }}"), "template error at line 1: no filter named 'nosuchfilter'");
  EXPECT_EQ(render_error("{{ 1 is nosuchtest }}"), "template error at line 1: no test named 'nosuchtest'");
  EXPECT_EQ(render_error("{% set a, b = [1] %}"), "template error at line 1: not enough values to unpack (expected 2, got 1)");
  EXPECT_EQ(render_error("{% set x = 1 %}{% set x.a = 2 %}"),
            "template error at line 1: cannot assign attribute 'a' on 'x': it is not a namespace() object");
  EXPECT_EQ(render_error("{{ 'a' in none }}"), "template error at line 1: argument of type 'NoneType' is not iterable");
  EXPECT_EQ(render_error("{{ range(1000000) }}"), "template error at line 1: range too big (more than 100000 items)");
  EXPECT_EQ(render_error("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"),
            "template error at line 1: macro 'f' recursed too deeply");
}

TEST(TemplateErrors, ContextMustBeAnObject) {
  EXPECT_THROW(Template::parse("x").render(nlohmann::json::array()), Error);
  EXPECT_EQ(Template::parse("x").render(nlohmann::json(nullptr)), "x");  // null: no variables
}

}  // namespace
}  // namespace lathe::tmpl::testing
