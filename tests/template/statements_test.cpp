// Statements and whitespace handling. Expected strings are what Jinja2 3.1 produces with
// transformers' settings (trim_blocks=True, lstrip_blocks=True) unless a test says otherwise.
#include "template_test_util.h"

namespace lathe::tmpl::testing {
namespace {

TEST(TemplateStatements, ForLoopVariables) {
  run_cases({
      {"{% for m in xs %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/"
       "{{ loop.first }}/{{ loop.last }}/{{ loop.length }};{% endfor %}",
       "1/0/3/2/True/False/3;2/1/2/1/False/False/3;3/2/1/0/False/True/3;", R"({"xs": ["a", "b", "c"]})"},
      // previtem/nextitem are undefined (print nothing) at the ends.
      {"{% for x in xs %}[{{ loop.previtem }}|{{ loop.nextitem }}]{% endfor %}", "[|b][a|c][b|]",
       R"({"xs": ["a", "b", "c"]})"},
      {"{% for x in xs %}{{ loop.cycle('odd', 'even') }} {% endfor %}", "odd even odd ", R"({"xs": [1, 2, 3]})"},
      // Nested loops: `loop` is the innermost one.
      {"{% for a in [1, 2] %}{% for b in [3, 4] %}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{% endfor %}",
       "113 214 123 224 "},
  });
}

TEST(TemplateStatements, ForElseUnpackingAndInlineFilter) {
  run_cases({
      {"{% for x in [] %}x{% else %}empty{% endfor %}", "empty"},
      {"{% for x in [1] %}x{% else %}empty{% endfor %}", "x"},
      {"{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}", "b=1,a=2,", R"({"d": {"b": 1, "a": 2}})"},
      {"{% for a, b in [[1, 2], [3, 4]] %}{{ a * b }} {% endfor %}", "2 12 "},
      {"{% for k in {'b': 1, 'a': 2} %}{{ k }}{% endfor %}", "ba"},  // dicts iterate keys, in order
      {"{% for c in 'ab' %}{{ c }}-{% endfor %}", "a-b-"},
      // The inline `if` filters first, so loop.length and loop.index count only kept items.
      {"{% for x in [1, 2, 3, 4] if x is even %}{{ x }}:{{ loop.index }}/{{ loop.length }} {% endfor %}",
       "2:1/2 4:2/2 "},
      {"{% for x in [1, 3] if x is even %}x{% else %}none kept{% endfor %}", "none kept"},
      {"{% for x in missing %}x{% endfor %}ok", "ok"},  // undefined iterates as empty
      {"{% for m in messages[::-1] %}{{ m }}{% endfor %}", "321", R"({"messages": [1, 2, 3]})"},
  });
}

TEST(TemplateStatements, LoopControls) {
  run_cases({
      {"{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x > 5 %}{% break %}{% endif %}"
       "{{ x }}{% endfor %}",
       "01345"},
      {"{% for a in [1, 2] %}{% for b in [1, 2, 3] %}{% if b == 2 %}{% break %}{% endif %}{{ a }}{{ b }} "
       "{% endfor %}{% endfor %}",
       "11 21 "},  // break leaves only the inner loop
  });
}

TEST(TemplateStatements, IfElifElse) {
  run_cases({
      {"{% if x == 1 %}one{% elif x == 2 %}two{% elif x == 3 %}three{% else %}other{% endif %}", "two",
       R"({"x": 2})"},
      {"{% if x == 1 %}one{% elif x == 2 %}two{% else %}other{% endif %}", "other", R"({"x": 9})"},
      {"{% if missing %}yes{% else %}no{% endif %}", "no"},
      {"{% if [] %}a{% elif {} %}b{% elif '' %}c{% elif 0.0 %}d{% elif none %}e{% else %}falsy{% endif %}", "falsy"},
  });
}

TEST(TemplateStatements, SetAndScoping) {
  run_cases({
      {"{% set x = 1 %}{% set x = x + 1 %}{{ x }}", "2"},
      {"{% set a, b = 1, 2 %}{{ a }}{{ b }}", "12"},
      {"{% set t = (3, 4) %}{% set c, d = t %}{{ c + d }}", "7"},
      // A set inside a for body is local to that iteration and never leaks out (Jinja scoping).
      {"{% set x = 1 %}{% for i in range(2) %}{% set x = x + 1 %}{{ x }}{% endfor %}{{ x }}", "221"},
      {"{% for i in range(3) %}{% if i == 0 %}{% set y = 5 %}{% endif %}[{{ y }}]{% endfor %}", "[5][][]"},
      // if-blocks do not create a scope.
      {"{% set x = 1 %}{% if true %}{% set x = 10 %}{% endif %}{{ x }}", "10"},
      // namespace() is the way to carry state out of a loop.
      {"{% set ns = namespace(c=0, seen=false) %}{% for i in range(4) %}{% set ns.c = ns.c + i %}{% endfor %}"
       "{{ ns.c }} {{ ns.seen }}",
       "6 False"},
      {"{% set ns = namespace(items=[]) %}{% for i in range(3) %}{% set _ = ns.items.append(i * 2) %}{% endfor %}"
       "{{ ns.items }}",
       "[0, 2, 4]"},
      {"{% set ns = namespace() %}{% set ns.a = 'x' %}{{ ns.a }}", "x"},
      {"{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}[{{ a }}]", "3[]"},
      {"{% set d = {'a': 1} %}{% do d.update({'b': 2}) %}{{ d }}", "{'a': 1, 'b': 2}"},
  });
}

TEST(TemplateStatements, BlockSet) {
  run_cases({
      {"{% set block %}  Hello {{ name }}  {% endset %}[{{ block }}]", "[  Hello w  ]", R"({"name": "w"})"},
      {"{% set up | upper %}abc{% endset %}{{ up }}", "ABC"},
      {"{% set s | trim | upper %}  x y  {% endset %}[{{ s }}]", "[X Y]"},
  });
}

TEST(TemplateStatements, Macros) {
  run_cases({
      {"{% macro greet(name, greeting='Hi') %}{{ greeting }}, {{ name }}!{% endmacro %}"
       "{{ greet('Bob') }} {{ greet('Al', greeting='Yo') }} {{ greet(name='Z') }}",
       "Hi, Bob! Yo, Al! Hi, Z!"},
      // Extra positional arguments land in varargs (a tuple), unknown keywords in kwargs.
      {"{% macro m(a, b=2) %}{{ a }}{{ b }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 3, 4, z=5) }}|{{ m(1) }}",
       "13(4,){'z': 5}|12(){}"},
      {"{% macro rec(n) %}{% if n > 0 %}{{ n }}{{ rec(n - 1) }}{% endif %}{% endmacro %}{{ rec(3) }}", "321"},
      // A default may refer to an earlier parameter.
      {"{% macro m(a, b=a * 2) %}{{ b }}{% endmacro %}{{ m(4) }}", "8"},
      {"{% macro m() %}{{ top }}{% endmacro %}{% set top = 'seen' %}{{ m() }}", "seen"},
      {"{% macro m(x) %}[{{ x }}]{% endmacro %}{% for i in [1, 2] %}{{ m(i) }}{% endfor %}", "[1][2]"},
  });
}

TEST(TemplateStatements, CallAndFilterBlocks) {
  run_cases({
      {"{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}"
       "{% call wrap('b') %}bold {{ 1 + 1 }}{% endcall %}",
       "<b>bold 2</b>"},
      {"{% macro each(items) %}{% for i in items %}{{ caller(i) }}{% endfor %}{% endmacro %}"
       "{% call(x) each([1, 2]) %}[{{ x }}]{% endcall %}",
       "[1][2]"},
      {"{% filter upper %}hello {{ 'x' }}{% endfilter %}", "HELLO X"},
      {"{% filter replace('a', 'b') | upper %}banana{% endfilter %}", "BBNBNB"},
  });
}

TEST(TemplateStatements, GenerationRawAndComments) {
  run_cases({
      // transformers' {% generation %} only marks assistant spans; the body renders as is.
      {"{% for x in [1] %}{% generation %}gen {{ x }}{% endgeneration %}{% endfor %}", "gen 1"},
      {"{% raw %}{{ not rendered }} {% if %}{% endraw %}", "{{ not rendered }} {% if %}"},
      {"{%- raw -%}   {{ x }}   {%- endraw -%}  |", "{{ x }}|"},
      // trim_blocks does not apply after `{% raw %}` (Jinja's raw rule), but does after endraw.
      {"a\n{% raw %}\n  {{ raw }}\n{% endraw %}\nb", "a\n\n  {{ raw }}\nb"},
      {"a {# comment #} b {#- trimmed -#} c", "a  bc"},
      {"text\n{# c #}\nmore\n    {# indented comment #}\ntail", "text\nmore\ntail"},
  });
}

TEST(TemplateWhitespace, DashMarkers) {
  run_cases({
      {"    {{- 'a' -}}    \n    {{ 'b' }}   {{- 'c' }}", "abc"},
      {"a  {{- 'b' }}  c", "ab  c"},
      {"x  {%- if true %} y {% endif -%}  z", "x y z"},
      {"{% for i in [1, 2] -%}\n  {{ i }}\n{%- endfor %}", "12"},
      {"{%- for m in ms -%}\n{%- if m == 'u' -%}\nU\n{% else -%}\nA\n{% endif -%}\n{%- endfor -%}", "U\nA\n",
       R"({"ms": ["u", "a"]})"},
      {"{% if true -%}\n   \n   x   \n  {%- endif %}|", "x|"},
      {"{#- leading comment -#}\n   hello", "hello"},
  });
}

TEST(TemplateWhitespace, TrimAndLstripBlocks) {
  run_cases({
      // lstrip_blocks removes the indentation before block tags; trim_blocks the newline after.
      {"  {% if true %}\n  a\n  {% endif %}\n  b", "  a\n  b"},
      {"<ul>\n    {% for i in [1, 2] %}\n    <li>{{ i }}</li>\n    {% endfor %}\n</ul>",
       "<ul>\n    <li>1</li>\n    <li>2</li>\n</ul>"},
      // Variable tags are never lstripped or trimmed.
      {"  {{ 'v' }}\nx", "  v\nx"},
      // `{%+` turns lstrip off for that tag; `+%}` turns trim_blocks off.
      {"  {%+ if true %}x{% endif %}", "  x"},
      {"{% if true +%}\nx{% endif %}", "\nx"},
      // Text before a tag on the same line is not whitespace-only, so nothing is stripped.
      {"a  {% if true %}b{% endif %}", "a  b"},
      {"   {# c #}   after", "   after"},
      // Jinja drops a single trailing newline of the template (keep_trailing_newline=False).
      {"x\n", "x"},
      {"x\n\n", "x\n"},
  });
}

TEST(TemplateWhitespace, OptionsOffMatchPlainJinja) {
  TemplateOptions plain{false, false};
  auto r = [&](const char* tpl) { return Template::parse(tpl, plain).render(nlohmann::json::object()); };
  EXPECT_EQ(r("  {% if true %}\n  a\n  {% endif %}\n  b"), "  \n  a\n  \n  b");
  EXPECT_EQ(r("{% for i in [1, 2] %}\n{{ i }}{% endfor %}"), "\n1\n2");
  EXPECT_EQ(r("{% for i in [1, 2] -%}\n{{ i }}{% endfor %}"), "12");
}

TEST(TemplateWhitespace, CrLfIsNormalized) {
  // Jinja turns every \r\n into \n before lexing, so trim_blocks still eats the line break.
  EXPECT_EQ(render("{% if true %}\r\na\r\n{% endif %}\r\nb"), "a\nb");
}

}  // namespace
}  // namespace lathe::tmpl::testing
