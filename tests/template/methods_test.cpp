// Python methods on str, dict and list, and the global functions.
#include <ctime>

#include "template_test_util.h"

namespace lathe::tmpl::testing {
namespace {

TEST(TemplateMethods, StringStripAndAffixes) {
  run_cases({
      {"[{{ '  x  '.strip() }}][{{ 'xxaxx'.strip('x') }}][{{ '  x'.lstrip() }}][{{ 'x\n\n'.rstrip('\n') }}]",
       "[x][a][x][x]"},
      {"{{ 'hello'.startswith('he') }}{{ 'hello'.endswith(('lo', 'x')) }}{{ 'hello'.startswith(('x', 'y')) }}",
       "TrueTrueFalse"},
      {"{{ c.split('</think>')[-1].lstrip('\n') }}|{{ c.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') }}",
       "answer|hmm", R"({"c": "<think>\nhmm\n</think>\n\nanswer"})"},
  });
}

TEST(TemplateMethods, StringSplitJoinFind) {
  run_cases({
      {"{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a,b,c'.split(',', 1) }}|{{ 'a b c'.rsplit(' ', 1) }}",
       "['a', 'b', '', 'c']|['a', 'b']|['a', 'b,c']|['a b', 'c']"},
      {"{{ 'a\nb\r\nc'.splitlines() }}", "['a', 'b', 'c']"},
      {"{{ '-'.join(['a', 'b']) }}|{{ '\n'.join(['a', 'b']) }}", "a-b|a\nb"},
      {"{{ 'hello'.find('l') }} {{ 'hello'.find('z') }} {{ 'hello'.rfind('l') }} {{ 'hello'.count('l') }} {{ 'hello'.index('e') }}",
       "2 -1 3 2 1"},
  });
}

TEST(TemplateMethods, StringCaseAndClasses) {
  run_cases({
      {"{{ 'ab'.upper() }}|{{ 'AB'.lower() }}|{{ 'hello world'.title() }}|{{ 'hELLO'.capitalize() }}|{{ 'aBc'.swapcase() }}",
       "AB|ab|Hello World|Hello|AbC"},
      {"{{ \"they're bill's\".title() }}", "They'Re Bill'S"},  // Python's str.title, not Jinja's filter
      // Case mapping is Unicode-aware, including the sharp s upper-casing to "SS".
      {"{{ 'Ünïcödé straße'.upper() }}|{{ 'ÀÉ'.lower() }}", "ÜNÏCÖDÉ STRASSE|àé"},
      {"{{ '123'.isdigit() }}{{ '12a'.isdigit() }}{{ 'abc'.isalpha() }}{{ '  '.isspace() }}{{ 'ab1'.isalnum() }}",
       "TrueFalseTrueTrueTrue"},
      {"{{ 'abc'.islower() }}{{ 'ABC'.isupper() }}{{ ''.isdigit() }}", "TrueTrueFalse"},
  });
}

TEST(TemplateMethods, StringReplaceAndFormat) {
  run_cases({
      {"{{ 'aaa'.replace('a', 'b') }} {{ 'aaa'.replace('a', 'b', 1) }}", "bbb baa"},
      {"{{ '{} is {}'.format('x', 1) }}|{{ '{0}{1}{0}'.format('a', 'b') }}|{{ '{name}!'.format(name='n') }}",
       "x is 1|aba|n!"},
      {"{{ '{:>5}'.format('a') }}|{{ '{:.2f}'.format(3.14159) }}|{{ '{:<4}|'.format('x') }}|{{ '{{}}'.format() }}",
       "    a|3.14|x   ||{}"},
      {"{{ '42'.zfill(5) }} {{ 'x'.center(5, '*') }}", "00042 **x**"},
  });
}

TEST(TemplateMethods, DictMethods) {
  const char* d = R"({"d": {"a": 1, "b": [1, 2]}})";
  run_cases({
      {"{{ d.get('a') }}|{{ d.get('z') }}|{{ d.get('z', 'dflt') }}", "1|None|dflt", d},
      {"{{ d.keys() | list }}|{{ d.values() | list }}|{{ d.items() | list }}",
       "['a', 'b']|[1, [1, 2]]|[('a', 1), ('b', [1, 2])]", d},
      {"{% for k, v in d.items() %}{{ k }}:{{ v | length if v is sequence else v }} {% endfor %}", "a:1 b:2 ", d},
  });
}

TEST(TemplateMethods, ListMethods) {
  run_cases({
      {"{% set l = [] %}{% set _ = l.append(1) %}{% do l.append(2) %}{{ l }}", "[1, 2]"},
      {"{{ [1, 2, 3].index(2) }} {{ [1, 2, 2].count(2) }}", "1 2"},
      {"{% set l = [1, 2, 3] %}{{ l.pop() }}{{ l }}{{ l.pop(0) }}{{ l }}", "3[1, 2]1[2]"},
  });
}

TEST(TemplateGlobals, RangeNamespaceDictAndTokens) {
  run_cases({
      {"{{ range(0) | list }} {{ range(2, 5) | list }}", "[] [2, 3, 4]"},
      {"{{ namespace(a=1, b=2) }}", "<Namespace {'a': 1, 'b': 2}>"},
      {"{% set ns = namespace(d) %}{{ ns.x }}", "1", R"({"d": {"x": 1}})"},
      {"{{ dict(x=1) }} {{ dict({'a': 1}, b=2) }}", "{'x': 1} {'a': 1, 'b': 2}"},
      {"{{ bos_token }}|{{ eos_token }}|{{ custom_var }}", "<s>|</s>|42",
       R"({"bos_token": "<s>", "eos_token": "</s>", "custom_var": 42})"},
  });
}

TEST(TemplateGlobals, StrftimeNow) {
  std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char year[8];
  std::strftime(year, sizeof year, "%Y", &local);
  std::string out = render("{{ strftime_now('%Y') }}|{{ strftime_now('%d %b %Y') | length }}");
  // The year can only differ if the test straddles New Year's midnight.
  EXPECT_EQ(out.substr(0, 4), year);
  EXPECT_EQ(out.substr(4), "|11");
}

TEST(TemplateGlobals, RaiseException) {
  ErrorKind kind = ErrorKind::kInternal;
  std::string msg = render_error("{{ raise_exception('Conversation roles must alternate user/assistant') }}", &kind);
  EXPECT_EQ(kind, ErrorKind::kInvalidArgument);
  EXPECT_EQ(msg, "Conversation roles must alternate user/assistant");
  // Raised from inside a macro and a loop too.
  msg = render_error("{% macro check(m) %}{% if m != 'ok' %}{{ raise_exception('bad: ' ~ m) }}{% endif %}{% endmacro %}"
                     "{% for m in ['ok', 'no'] %}{{ check(m) }}{% endfor %}",
                     &kind);
  EXPECT_EQ(msg, "bad: no");
}

}  // namespace
}  // namespace lathe::tmpl::testing
