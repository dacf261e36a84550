// Filters and tests, with Jinja 3.1's argument names and defaults, and transformers' tojson.
#include "template_test_util.h"

namespace lathe::tmpl::testing {
namespace {

TEST(TemplateFilters, Strings) {
  run_cases({
      {"[{{ '  hi \n' | trim }}] [{{ 'xxhixx' | trim('x') }}]", "[hi] [hi]"},
      // trim strips Unicode whitespace like Python's str.strip (here U+3000 ideographic space).
      {"[{{ '\xE3\x80\x80 x \xE3\x80\x80' | trim }}]", "[x]"},
      {"{{ 'Hello' | upper }} {{ 'Hello' | lower }}", "HELLO hello"},
      // Jinja's title starts words after spaces and -({[< only; str.title() would give "Bill'S".
      {"{{ \"hello world-foo (bar bill's\" | title }}", "Hello World-Foo (Bar Bill's"},
      {"{{ 'hELLO wORLD' | capitalize }}", "Hello world"},
      {"{{ 'aaa' | replace('a', 'b') }} {{ 'aaa' | replace('a', 'b', 2) }}", "bbb bba"},
      {"{{ 3 | string }}{{ [1] | string }} {{ none | string }}", "3[1] None"},
      {"{{ '<a href=\"x\">&\\'</a>' | e }} {{ '<b>' | escape }} {{ '<b>' | safe }}",
       "&lt;a href=&#34;x&#34;&gt;&amp;&#39;&lt;/a&gt; &lt;b&gt; <b>"},
      {"{{ '<p>Hi <b>there</b></p>' | striptags }}|{{ 'one two  three' | wordcount }}", "Hi there|3"},
      {"{{ '%s-%s' | format(1, 2) }}|{{ 'abc' | center(9) }}|", "1-2|   abc   |"},
  });
}

TEST(TemplateFilters, Indent) {
  run_cases({
      {"{{ 'a\nb\n\nc' | indent }}", "a\n    b\n\n    c"},  // blank lines stay empty by default
      {"{{ 'a\nb' | indent(2, true) }}", "  a\n  b"},
      {"{{ 'a\n\nb' | indent(2, blank=true) }}", "a\n  \n  b"},
      {"{{ 'x\ny' | indent('> ') }}", "x\n> y"},
      {"{{ 'a\nb' | indent(width=1, first=true) }}", " a\n b"},
  });
}

TEST(TemplateFilters, Default) {
  run_cases({
      {"{{ x | default('d') }}|{{ none | default('d') }}|{{ 0 | default(5) }}", "d|None|0"},
      {"{{ '' | default('d', true) }}|{{ '' | d('e', boolean=true) }}|{{ x | d }}|", "d|e||"},
      {"{{ (x | default(none)) is none }}", "True"},
  });
}

TEST(TemplateFilters, Sequences) {
  const char* users = R"({"users": [{"name": "a", "admin": true, "n": 3}, {"name": "b", "n": 1}]})";
  run_cases({
      {"{{ [3, 1, 2] | first }}|{{ [3, 1, 2] | last }}|{{ 'abc' | first }}|{{ [] | first is defined }}", "3|2|a|False"},
      {"{{ [1, 2] | join('-') }}|{{ [1, 2] | join }}|{{ users | join(', ', attribute='name') }}", "1-2|12|a, b", users},
      {"{{ 'abc' | list }}|{{ {'a': 1} | list }}|{{ (1, 2) | list }}", "['a', 'b', 'c']|['a']|[1, 2]"},
      {"{{ [1, 2, 3] | length }} {{ 'h\xC3\xA9' | length }} {{ {'a': 1} | count }} {{ missing | length }}", "3 2 1 0"},
      {"{{ users | map(attribute='name') | list }}|{{ ['a', 'b'] | map('upper') | join }}", "['a', 'b']|AB", users},
      {"{{ [1, 2, 3] | map('string') | join(', ') }}|{{ ['1', '2'] | map('int') | sum }}", "1, 2, 3|3"},
      {"{{ [{'x': 1}, {}] | map(attribute='x', default='?') | list }}", "[1, '?']"},
      {"{{ [1, 2, 3, 4] | select('odd') | list }}|{{ [1, 2, 3, 4] | reject('even') | list }}", "[1, 3]|[1, 3]"},
      {"{{ [1, 2, 3] | select('gt', 1) | list }}|{{ [none, 'a', 0] | select | list }}", "[2, 3]|['a']"},
      {"{{ users | selectattr('admin') | map(attribute='name') | list }}|{{ users | rejectattr('admin') | list | length }}",
       "['a']|1", users},
      {"{{ users | selectattr('name', 'equalto', 'b') | map(attribute='n') | first }}", "1", users},
      {"{{ [3, 1, 2] | sort }}|{{ [3, 1, 2] | sort(reverse=true) }}", "[1, 2, 3]|[3, 2, 1]"},
      // Sorting, unique, min and max ignore case by default.
      {"{{ ['b', 'A', 'c'] | sort }}|{{ ['b', 'A', 'c'] | sort(case_sensitive=true) }}", "['A', 'b', 'c']|['A', 'b', 'c']"},
      {"{{ ['b', 'a', 'C'] | sort(case_sensitive=true) }}", "['C', 'a', 'b']"},
      {"{{ users | sort(attribute='n') | map(attribute='name') | join }}", "ba", users},
      {"{{ ['a', 'A', 'b'] | unique | list }}|{{ [1, 2, 1] | unique | list }}", "['a', 'b']|[1, 2]"},
      {"{{ [3, 1, 2] | min }}|{{ [3, 1, 2] | max }}|{{ ['b', 'A', 'c'] | max }}|{{ users | max(attribute='n') }}",
       "1|3|c|{'name': 'a', 'admin': True, 'n': 3}", users},
      {"{{ [1, 2, 3] | sum }}|{{ users | sum(attribute='n') }}|{{ [1, 2] | sum(start=10) }}", "6|4|13", users},
      {"{{ [1, 2, 3] | reverse | list }}|{{ 'abc' | reverse }}", "[3, 2, 1]|cba"},
      {"{{ [1, 2, 3, 4, 5] | batch(2) | list }}|{{ [1, 2, 3] | batch(2, 'x') | list }}",
       "[[1, 2], [3, 4], [5]]|[[1, 2], [3, 'x']]"},
  });
}

TEST(TemplateFilters, Mappings) {
  const char* d = R"({"d": {"b": 1, "A": 3, "c": 2}})";
  run_cases({
      {"{{ d | items | list }}", "[('b', 1), ('A', 3), ('c', 2)]", d},
      {"{{ d | dictsort }}", "[('A', 3), ('b', 1), ('c', 2)]", d},
      {"{{ d | dictsort(by='value', reverse=true) }}", "[('A', 3), ('c', 2), ('b', 1)]", d},
      {"{% for k, v in d | dictsort %}{{ k }}{{ v }}{% endfor %}", "A3b1c2", d},
      {"{{ missing | items | list }}", "[]"},
  });
}

TEST(TemplateFilters, Numbers) {
  run_cases({
      {"{{ '42' | int }}|{{ '4.7' | int }}|{{ 'x' | int }}|{{ 'x' | int(7) }}|{{ 3.9 | int }}|{{ '0x1A' | int(0, 16) }}",
       "42|4|0|7|3|26"},
      {"{{ '3.5' | float }}|{{ 'a' | float }}|{{ 2 | float }}", "3.5|0.0|2.0"},
      // round: Python's round (ties to even, on the exact binary value), ints stay ints.
      {"{{ 2.5 | round }}|{{ 3.5 | round }}|{{ 3 | round }}|{{ 1.2345 | round(2) }}|{{ 2.675 | round(2) }}",
       "2.0|4.0|3|1.23|2.67"},
      {"{{ 1.2 | round(0, 'ceil') }}|{{ 1.8 | round(method='floor') }}", "2.0|1.0"},
      {"{{ -3 | abs }}|{{ -2.5 | abs }}", "3|2.5"},
  });
}

TEST(TemplateFilters, ToJsonMatchesPythonJsonDumps) {
  const char* tool = R"({"t": {"name": "get_weather", "description": "Get it \ud83d\ude00", "parameters": )"
                     R"({"type": "object", "properties": {"loc": {"type": "string"}}, "required": ["loc"]}}})";
  run_cases({
      // Default separators (', ', ': '), keys in insertion order, non-ASCII kept (ensure_ascii=False).
      {"{{ t | tojson }}",
       "{\"name\": \"get_weather\", \"description\": \"Get it \xF0\x9F\x98\x80\", \"parameters\": {\"type\": "
       "\"object\", \"properties\": {\"loc\": {\"type\": \"string\"}}, \"required\": [\"loc\"]}}",
       tool},
      {"{{ t.parameters | tojson(indent=2) }}",
       "{\n  \"type\": \"object\",\n  \"properties\": {\n    \"loc\": {\n      \"type\": \"string\"\n    }\n  },\n"
       "  \"required\": [\n    \"loc\"\n  ]\n}",
       tool},
      {"{{ {'b': 1, 'a': 2} | tojson }}|{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}",
       "{\"b\": 1, \"a\": 2}|{\"a\": 2, \"b\": 1}"},
      {"{{ \"\xC3\xA9\n\\\"<>&\" | tojson }}", "\"\xC3\xA9\\n\\\"<>&\""},  // no HTML escaping (unlike Jinja's own)
      {"{{ [1.0, 2, none, true] | tojson }}|{{ {} | tojson }}|{{ [] | tojson(indent=2) }}",
       "[1.0, 2, null, true]|{}|[]"},
      {"{{ {'a': [1, 2]} | tojson(separators=(',', ':')) }}", "{\"a\":[1,2]}"},
      {"{{ '\xC3\xA9' | tojson(ensure_ascii=true) }}", "\"\\u00e9\""},
  });
}

TEST(TemplateTests, TypeTests) {
  run_cases({
      {"{{ x is defined }}{{ y is undefined }}{{ none is none }}{{ x is not none }}", "TrueTrueTrueTrue", R"({"x": 1})"},
      {"{{ 'a' is string }}{{ 1 is string }}{{ 1 is number }}{{ 1.5 is number }}{{ 'a' is number }}", "TrueFalseTrueTrueFalse"},
      // bool is a Number in Python but Jinja's integer test excludes it.
      {"{{ 1 is integer }}{{ 1.0 is integer }}{{ 1.0 is float }}{{ true is number }}{{ true is integer }}",
       "TrueFalseTrueTrueFalse"},
      {"{{ true is boolean }}{{ 1 is boolean }}{{ true is true }}{{ 1 is true }}{{ false is false }}{{ 0 is false }}",
       "TrueFalseTrueFalseTrueFalse"},
      {"{{ {} is mapping }}{{ [] is mapping }}{{ [] is iterable }}{{ 'a' is iterable }}{{ 1 is iterable }}",
       "TrueFalseTrueTrueFalse"},
      {"{{ [] is sequence }}{{ 'a' is sequence }}{{ 1 is sequence }}{{ range is callable }}{{ 1 is callable }}",
       "TrueTrueFalseTrueFalse"},
  });
}

TEST(TemplateTests, ComparisonTests) {
  run_cases({
      {"{{ 1 is eq 1 }}{{ 1 is equalto 2 }}{{ 1 is ne 2 }}{{ 1 is sameas 1 }}", "TrueFalseTrueTrue"},
      {"{{ 3 is gt 2 }}{{ 3 is ge 3 }}{{ 1 is lt 2 }}{{ 1 is le 0 }}", "TrueTrueTrueFalse"},
      {"{{ 2 is in [1, 2] }}{{ 'a' is in 'bcd' }}", "TrueFalse"},
      {"{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 9 is divisibleby(4) }}", "TrueTrueTrueFalse"},
      {"{{ 'ab' is lower }}{{ 'AB' is upper }}{{ none is sameas none }}{{ 5 is divisibleby 5 and true }}",
       "TrueTrueTrueTrue"},
      {"{{ x is defined and x }}|{{ not x is defined }}", "False|True"},
  });
}

}  // namespace
}  // namespace lathe::tmpl::testing
