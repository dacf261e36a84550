// Expressions: literals, operators with Python semantics, access, slicing, conditionals, printing.
#include "template_test_util.h"

namespace lathe::tmpl::testing {
namespace {

TEST(TemplateExpressions, Literals) {
  run_cases({
      {R"({{ 'a' "b" }})", "ab"},  // adjacent string literals concatenate
      {R"({{ "\u00e9\t\\x" }}|{{ '\x41' }}|{{ 'it\'s' }})", "\xC3\xA9\t\\x|A|it's"},
      {"{{ 42 }} {{ -7 }} {{ 1_000 }} {{ 1.5 }} {{ 1e3 }} {{ 2.5e-3 }}", "42 -7 1000 1.5 1000.0 0.0025"},
      {"{{ true }} {{ True }} {{ false }} {{ none }} {{ None }}", "True True False None None"},
      {"{{ [1, 'a', none, true, 1.0, (1, 2), {'k': \"it's\"}] }}",
       "[1, 'a', None, True, 1.0, (1, 2), {'k': \"it's\"}]"},  // Python repr picks "..." around a '
      {"{{ (1,) }} {{ () }} {{ {} }} {{ [] }}", "(1,) () {} []"},
      {"{{ {'a': {'b': 1}} }}", "{'a': {'b': 1}}"},  // `}}` inside a dict literal does not end the tag
      {"{{ missing }}|{{ none }}", "|None"},  // undefined prints nothing, None prints "None"
  });
}

TEST(TemplateExpressions, FloatPrinting) {
  // Python's float repr: shortest round-trip, ".0" on integral values, exponent outside [1e-4, 1e16).
  run_cases({
      {"{{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ 1.5e-10 }} {{ -0.0 }}",
       "1.0 0.30000000000000004 1e+16 1000000000000000.0 0.0001 1e-05 1.5e-10 -0.0"},
      {"{{ 123456789.123 }} {{ 1e100 }}", "123456789.123 1e+100"},
  });
}

TEST(TemplateExpressions, Arithmetic) {
  run_cases({
      {"{{ 1 + 2 }} {{ 7 / 2 }} {{ 6 / 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }}", "3 3.5 2.0 3 -4 1 2"},
      {"{{ 2 ** 10 }} {{ 2 ** -1 }} {{ 1.5 * 2 }} {{ 10 - 2.5 }} {{ 10.0 // 4 }} {{ 10 % 4.5 }}",
       "1024 0.5 3.0 7.5 2.0 1.0"},
      {"{{ 'ab' * 3 }} {{ 3 * 'x' }} {{ [1] * 2 }}", "ababab xxx [1, 1]"},
      {"{{ [1, 2] + [3] }} {{ (1, 2) + (3,) }} {{ 'a' + 'b' }}", "[1, 2, 3] (1, 2, 3) ab"},
      {"{{ 'a' ~ 1 ~ none ~ true ~ missing }}", "a1NoneTrue"},  // ~ stringifies, undefined as ""
      {"{{ true + 1 }}", "2"},  // bool is an int in Python
      // Precedence: unlike Python, Jinja binds unary minus tighter than ** (-2 ** 2 is 4); filters
      // bind tighter than every binary operator.
      {"{{ -2 ** 2 }} {{ (-2) ** 2 }} {{ 2 ** 3 ** 2 }} {{ 1 + 2 * 3 }} {{ 10 - 3 - 2 }} {{ 2 * 3 ~ 4 }}",
       "4 4 64 7 5 64"},
      {"{{ 'a' + ' b ' | trim + 'c' }}", "abc"},
      {"{{ -1 | abs }} {{ -x | abs }}", "1 3", R"({"x": 3})"},  // the filter applies to -x
  });
}

TEST(TemplateExpressions, ComparisonsAndLogic) {
  run_cases({
      {"{{ 1 == 1.0 }} {{ 1 != 2 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ true == 1 }} {{ none == none }}",
       "True True True True True True"},
      {"{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }}", "True False"},  // chained like Python
      {"{{ (1, 2) == [1, 2] }} {{ {'a': 1} == {'a': 1} }} {{ 1 == '1' }}", "False True False"},
      {"{{ 'a' in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'abc' }} {{ 'x' in missing }}",
       "True True True True False"},
      // and/or return an operand, not a bool.
      {"{{ x and y }}|{{ x or y }}|{{ not x }}|{{ 0 or 'd' }}|{{ '' and 1 }}|{{ [] or none }}",
       "yes|1|False|d||None", R"({"x": 1, "y": "yes"})"},
      {"{{ true and 'x' or 'y' }} {{ not 1 == 2 }}", "x True"},
  });
}

TEST(TemplateExpressions, ConditionalExpression) {
  run_cases({
      {"{{ 'yes' if c else 'no' }}", "no", R"({"c": false})"},
      {"[{{ 'yes' if c }}]", "[]", R"({"c": false})"},  // no else -> undefined -> prints nothing
      {"{{ a if a is defined else 'dflt' }}", "dflt"},
      {"{{ 1 if x else 2 if y else 3 }}", "2", R"({"y": 1})"},
  });
}

TEST(TemplateExpressions, AttributeItemAndSlice) {
  const char* msgs = R"({"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]})";
  run_cases({
      {"{{ messages[0]['content'] }} {{ messages[0].content }} {{ messages[-1].role }}", "sys sys user", msgs},
      {"{{ messages[1:] | length }} {{ messages[::-1][0].role }} {{ messages.0.role }}", "1 user system", msgs},
      {"{{ 'hello'[1:3] }} {{ 'hello'[::-1] }} {{ 'hello'[-3:] }} {{ 'hello'[0] }} {{ 'hello'[-1] }}",
       "el olleh llo h o"},
      {"{{ [1, 2, 3, 4, 5][::2] }} {{ [1, 2, 3, 4, 5][4:1:-1] }} {{ [1, 2, 3][10:] }} {{ [1, 2, 3][::-2] }}",
       "[1, 3, 5] [5, 4, 3] [] [3, 1]"},
      {"{{ 'abcdef'[-1:-4:-1] }}", "fed"},
      // Strings index by code point, not byte.
      {"{{ 'h\xC3\xA9llo w\xC3\xB6rld'[1:8] }}", "\xC3\xA9llo w\xC3\xB6"},
      // Missing keys and out-of-range indexes are undefined, not errors.
      {"{{ d.zz is defined }} {{ d['zz'] is defined }} {{ [1][5] is defined }} {{ none.x is defined }}",
       "False False False False", R"({"d": {}})"},
      // x.items is the dict method even when a key of that name exists (Jinja tries attributes first).
      {"{{ d.items() | list }} {{ d['items'] }}", "[('items', 1)] 1", R"({"d": {"items": 1}})"},
  });
}

TEST(TemplateExpressions, CallsWithKeywords) {
  run_cases({
      {"{{ range(3) | list }} {{ range(1, 4) | list }} {{ range(5, 0, -2) | list }}", "[0, 1, 2] [1, 2, 3] [5, 3, 1]"},
      {"{{ dict(a=1, b='x') }} {{ namespace(a=1).a }}", "{'a': 1, 'b': 'x'} 1"},
      {"{{ 'x'.center(5) }}|", "  x  |"},
  });
}

TEST(TemplateExpressions, PercentFormatting) {
  run_cases({
      {"{{ '%s and %s' % ('a', 'b') }}|{{ '%d%%' % 50 }}|{{ '%.2f' % 3.14159 }}", "a and b|50%|3.14"},
      {"{{ '%5s|%-5s|' % ('a', 'b') }}{{ '%(x)s' % {'x': 1} }}|{{ '%r' % 'q' }}|{{ '%03d' % 7 }}",
       "    a|b    |1|'q'|007"},
      {"{{ '%s' % [1, 2] }}|{{ '%s %s' % (1, none) }}|{{ '%x' % 255 }}", "[1, 2]|1 None|ff"},
  });
}

}  // namespace
}  // namespace lathe::tmpl::testing
