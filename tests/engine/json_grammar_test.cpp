// The JSON recognizer byte by byte: valid documents are accepted at every prefix and complete at
// the end, invalid ones are refused somewhere or never complete, no accepted prefix is a dead end,
// and whatever it accepts nlohmann::json parses (and the schema validator passes). Then the schema
// compiler: conforming documents in, non-conforming out, unsupported keywords refused by name.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/grammar/json_grammar.h"
#include "engine/grammar/json_matcher.h"
#include "engine/schema_check.h"

namespace lathe::engine {
namespace {

using nlohmann::json;

// Feeds `text` byte by byte; true when every byte is accepted and the document is complete. Along
// the way every accepted prefix must be completable: complete already, or some byte continues it.
bool accepts(const std::shared_ptr<const JsonGrammar>& g, const std::string& text, bool check_dead_ends = true) {
  JsonMatcher m(g);
  for (size_t i = 0; i < text.size(); ++i) {
    if (m.terminated()) return false;
    if (!m.feed(uint8_t(text[i]))) return false;
    if (check_dead_ends && !m.accepting()) {
      bool any = false;
      for (int b = 0; b < 256 && !any; ++b) {
        JsonMatcher probe = m;
        any = probe.feed(uint8_t(b));
      }
      EXPECT_TRUE(any) << "dead end after " << text.substr(0, i + 1);
    }
  }
  return m.accepting();
}

TEST(JsonGrammar, AcceptsValidObjects) {
  const auto g = JsonGrammar::any_object();
  const std::vector<std::string> valid = {
      "{}",
      "{\"a\":1}",
      " {\"a\": [1, 2.5, -3e+10, 0, -0.0e0, 1E5, 12.75e-3], \"b\": {\"c\": null, \"d\": true, \"e\": false}}",
      "{\"s\":\"x\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00 \xC3\xA9 \xF0\x9F\x98\x80 \xE4\xB8\xAD\"}",
      "{\"\":\"\"}",
      "{\"a\":[[],[{}],{\"b\":[]}]}",
      "{\n  \"a\" : 1 ,\n  \"b\":2\n}",
      "{\"k\":\"\\u0000\\uFFFF\\uDBFF\\uDFFF\"}",
      "{\"a\":{\"a\":{\"a\":{\"a\":[\"deep\"]}}}}",
  };
  for (const auto& t : valid) {
    EXPECT_TRUE(accepts(g, t)) << t;
    EXPECT_TRUE(json::parse(t).is_object()) << t;
  }
}

TEST(JsonGrammar, RefusesInvalidText) {
  const auto g = JsonGrammar::any_object();
  const std::vector<std::string> invalid = {
      "[]", "1", "\"s\"", "{", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{\"a\":01}", "{\"a\":1.}", "{\"a\":.5}",
      "{\"a\":+1}", "{\"a\":tru}", "{\"a\":truee}", "{\"a\":\"\x01\"}", "{\"a\":\"\\q\"}", "{\"a\":\"\\ud800\"}",
      "{\"a\":\"\\ud800x\"}", "{\"a\":\"\\udc00\"}", "{\"a\":\"\\u12G4\"}", "{\"a\":\"\xC0\x80\"}",
      "{\"a\":\"\xED\xA0\x80\"}", "{\"a\":\"\xF4\x90\x80\x80\"}", "{\"a\":\"\x80\"}", "{\"a\":\"\xE4\xB8\"}",
      "{}x", "{}}", "{} ", "{\"a\":1}{}", "{'a':1}", "{a:1}", "{\"a\" 1}", "{,}", "{\"a\":[1,]}", "{\"a\":[,1]}",
      "{\"a\":1e}", "{\"a\":1e+}", "{\"a\":-}", "{\"a\":NaN}", "{\"a\":\"x}", std::string("{") + std::string(9, ' ') + "}",
      "{\"a\":12345678901234567}",  // 17 integer digits: past the bound
  };
  for (const auto& t : invalid) EXPECT_FALSE(accepts(g, t, /*check_dead_ends=*/true)) << t;
}

TEST(JsonGrammar, BoundsWhitespaceAndDepth) {
  const auto g = JsonGrammar::any_object({.max_whitespace = 2, .max_depth = 3});
  EXPECT_TRUE(accepts(g, "{  \"a\"  :  [  1  ,  {  }  ]  }"));
  EXPECT_FALSE(accepts(g, "{   }"));
  EXPECT_TRUE(accepts(g, "{\"a\":[{}]}"));
  EXPECT_FALSE(accepts(g, "{\"a\":[{\"b\":[]}]}"));  // depth 4
}

// Random documents, compact and pretty-printed (indent 2: whitespace runs stay under the bound).
json random_value(std::mt19937& rng, int depth) {
  const int kind = int(rng() % (depth > 2 ? 5 : 7));
  switch (kind) {
    case 0: return nullptr;
    case 1: return bool(rng() % 2);
    case 2: return int64_t(rng() % 2000000) - 1000000;
    case 3: return double(int64_t(rng() % 100000)) / 64.0 - 500;
    case 4: {
      std::string s;
      const char* pieces[] = {"a", "Z", " ", "\"", "\\", "\n", "\t", "\x01", "\xC3\xA9", "\xF0\x9F\x98\x80", "/", "\xE2\x82\xAC"};
      for (int i = int(rng() % 6); i > 0; --i) s += pieces[rng() % 12];
      return s;
    }
    case 5: {
      json a = json::array();
      for (int i = int(rng() % 4); i > 0; --i) a.push_back(random_value(rng, depth + 1));
      return a;
    }
    default: {
      json o = json::object();
      for (int i = int(rng() % 4); i > 0; --i) o["k" + std::to_string(rng() % 10)] = random_value(rng, depth + 1);
      return o;
    }
  }
}

TEST(JsonGrammar, PropertyRandomDocumentsAndMutations) {
  const auto g = JsonGrammar::any_object();
  std::mt19937 rng(7);
  for (int n = 0; n < 300; ++n) {
    json doc = json::object();
    for (int i = int(rng() % 4); i > 0; --i) doc["p" + std::to_string(i)] = random_value(rng, 1);
    for (const std::string& text : {doc.dump(), doc.dump(2)}) {
      ASSERT_TRUE(accepts(g, text, n < 40)) << text;
      // Mutations: whatever the recognizer still accepts must parse as an object.
      for (int k = 0; k < 20; ++k) {
        std::string t = text;
        const size_t at = rng() % t.size();
        switch (rng() % 3) {
          case 0: t[at] = char(" {}[],:\"\\01e.-tn\x80"[rng() % 17]); break;
          case 1: t.erase(at, 1); break;
          default: t.insert(at, 1, char(",]}\" 9"[rng() % 6])); break;
        }
        if (accepts(g, t, false)) {
          EXPECT_TRUE(json::parse(t).is_object()) << t;
        }
      }
    }
  }
}

// ---- Schemas ----

struct SchemaCase {
  json schema;
  std::vector<std::string> good, bad;
};

void check(const SchemaCase& c) {
  const auto g = JsonGrammar::from_schema(c.schema);
  for (const auto& t : c.good) {
    EXPECT_TRUE(accepts(g, t)) << c.schema.dump() << " should accept " << t;
    EXPECT_TRUE(testing::conforms(json::parse(t), c.schema)) << "test case itself: " << t;
  }
  for (const auto& t : c.bad) EXPECT_FALSE(accepts(g, t)) << c.schema.dump() << " should refuse " << t;
}

TEST(JsonSchema, RequiredPropertiesInOrder) {
  check({json::parse(R"({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},
                        "email":{"type":"string"}},"required":["name","age"]})"),
         {R"({"age":3,"email":"x","name":"a"})", R"({"age":-12,"name":"b"})", R"({ "age" : 0 , "name" : "" })"},
         {R"({"name":"a"})", R"({"age":1})", "{}", R"({"age":1.5,"name":"a"})", R"({"age":1,"name":2})",
          R"({"age":1,"name":"a","zzz":1})", R"({"name":"a","age":1})" /* out of (sorted) order */,
          R"({"age":1,"age":1,"name":"a"})"}});
}

TEST(JsonSchema, EnumsConstAndTypes) {
  check({json::parse(R"({"enum":["red","green",1,12,null,{"a":[1]}]})"),
         {R"("red")", R"("green")", "1", "12", "null", R"({"a":[1]})"},
         {R"("blue")", "2", "123", R"("re")", "true", R"({"a":[2]})"}});
  check({json::parse(R"({"const":"only"})"), {R"("only")"}, {R"("only2")", R"("onl")"}});
  check({json::parse(R"({"type":["integer","null"]})"), {"5", "-0", "null"}, {"5.5", "1e3", R"("5")"}});
  check({json::parse(R"({"type":"number"})"), {"5", "5.25", "-1e-7"}, {"05", R"("x")"}});
  check({json::parse(R"({"type":"boolean"})"), {"true", "false"}, {"null", "1"}});
  check({json::parse(R"({"type":"string","nullable":true,"minLength":2,"maxLength":3})"),
         {R"("ab")", R"("abc")", R"("\u00e9\n")", "null", "\"\xF0\x9F\x98\x80\xC3\xA9\""},
         {R"("a")", R"("abcd")", R"(1)"}});
}

// Complete and nothing can follow: the engine stops there (no EOS needed).
TEST(JsonSchema, TerminatesWhenNothingMayFollow) {
  auto after = [](const char* schema, const std::string& text) {
    JsonMatcher m(JsonGrammar::from_schema(json::parse(schema)));
    EXPECT_TRUE(m.feed(text)) << text;
    return std::pair(m.accepting(), m.terminated());
  };
  EXPECT_EQ(after(R"({"enum":[1,12]})", "1"), std::pair(true, false));  // "12" may still come
  EXPECT_EQ(after(R"({"enum":[1,12]})", "12"), std::pair(true, true));
  EXPECT_EQ(after(R"({"type":"integer"})", "123"), std::pair(true, false));
  EXPECT_EQ(after(R"({"type":"integer"})", "1234567890123456"), std::pair(true, true));  // the digit bound
  EXPECT_EQ(after(R"({"type":"object"})", "{}"), std::pair(true, true));
  EXPECT_EQ(after(R"({"type":"string"})", "\"ab"), std::pair(false, false));
}

TEST(JsonSchema, NestedArraysAndItemsBounds) {
  check({json::parse(R"({"type":"array","items":{"type":"array","items":{"type":"integer"},"maxItems":2},
                        "minItems":1,"maxItems":3})"),
         {"[[]]", "[[1,2],[3]]", "[[],[],[]]"},
         {"[]", "[[1,2,3]]", "[[],[],[],[]]", "[[1.5]]", R"([["a"]])"}});
}

TEST(JsonSchema, AnyOfOneOfAndRefs) {
  check({json::parse(R"({"anyOf":[{"type":"object","properties":{"kind":{"const":"a"},"x":{"type":"integer"}},
                                   "required":["kind","x"]},
                                  {"type":"object","properties":{"kind":{"const":"b"},"y":{"type":"string"}},
                                   "required":["kind"]}]})"),
         {R"({"kind":"a","x":1})", R"({"kind":"b","y":"s"})", R"({"kind":"b"})"},
         {R"({"kind":"a"})", R"({"kind":"a","y":"s"})", R"({"kind":"c"})"}});
  // Recursion through $defs and "#", oneOf with disjoint branches.
  check({json::parse(R"({"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer"},
                          "kids":{"type":"array","items":{"$ref":"#/$defs/node"}}},"required":["v"]}},
                          "oneOf":[{"$ref":"#/$defs/node"},{"type":"null"}]})"),
         {R"({"v":1})", R"({"kids":[{"v":2},{"kids":[],"v":3}],"v":1})", "null"},
         {R"({"kids":[{}],"v":1})", R"({"kids":[1],"v":1})", "[]"}});
  check({json::parse(R"({"definitions":{"s":{"type":"string","maxLength":1}},"type":"object",
                          "properties":{"a":{"$ref":"#/definitions/s"}},"required":["a"]})"),
         {R"({"a":"x"})"}, {R"({"a":"xy"})", "{}"}});
}

TEST(JsonSchema, AdditionalPropertiesAndMaps) {
  check({json::parse(R"({"type":"object","additionalProperties":{"type":"integer"}})"),
         {"{}", R"({"x":1,"y":2})"}, {R"({"x":"s"})"}});
  check({json::parse(R"({"type":"object","additionalProperties":false})"), {"{}"}, {R"({"x":1})"}});
  check({json::parse(R"({"type":"object"})"), {"{}", R"({"x":[1,{"y":null}]})"}, {"[]"}});
  check({json::parse(R"({"type":"object","properties":{"a":{"type":"integer"}},"additionalProperties":true})"),
         {"{}", R"({"a":1})"}, {R"({"a":1,"b":2})"}});  // extra keys are allowed by the schema, never generated
}

TEST(JsonSchema, OrderedJsonKeepsPropertyOrder) {
  const auto g = JsonGrammar::from_schema(nlohmann::ordered_json::parse(
      R"({"type":"object","properties":{"zeta":{"type":"integer"},"alpha":{"type":"integer"}},"required":["zeta","alpha"]})"));
  EXPECT_TRUE(accepts(g, R"({"zeta":1,"alpha":2})"));
  EXPECT_FALSE(accepts(g, R"({"alpha":2,"zeta":1})"));
}

TEST(JsonSchema, RefusesWhatItCannotEnforce) {
  auto refused = [](const char* schema, const char* word) {
    try {
      JsonGrammar::from_schema(json::parse(schema));
      ADD_FAILURE() << "accepted " << schema;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
  };
  refused(R"({"type":"string","pattern":"^a+$"})", "'pattern'");
  refused(R"({"type":"string","format":"date-time"})", "'format'");
  refused(R"({"type":"integer","minimum":0})", "'minimum'");
  refused(R"({"type":"object","properties":{"a":{"type":"number","multipleOf":2}}})", "/properties/a");
  refused(R"({"type":"array","uniqueItems":true})", "'uniqueItems'");
  refused(R"({"type":"array","items":[{"type":"string"}]})", "tuple");
  refused(R"({"not":{"type":"string"}})", "'not'");
  refused(R"({"type":"strng"})", "unknown type");
  refused(R"({"$ref":"https://example.com/s.json"})", "$ref");
  refused(R"({"$ref":"#/$defs/missing"})", "points at nothing");
  refused(R"({"$defs":{"a":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"})", "refers back to itself");
  refused(R"({"enum":[]})", "enum");
  refused(R"({"type":"string","minLength":5,"maxLength":2})", "minLength");
  refused(R"({"anyOf":[{"type":"string"}],"type":"string"})", "beside");
  refused(R"({"allOf":[{"type":"string"},{"maxLength":3}]})", "allOf");
  refused("false", "accepts nothing");
  // Annotations are fine.
  EXPECT_NO_THROW(JsonGrammar::from_schema(json::parse(
      R"({"title":"T","description":"d","type":"object","properties":{"a":{"type":"string","default":"x","examples":["y"]}}})")));
}

}  // namespace
}  // namespace lathe::engine
