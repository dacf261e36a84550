// OpenAI request bodies -> engine requests, without HTTP: typed field reads, defaults (the model's
// generation_config, OpenAI's 16-token completions), limits against the context, response_format.
#include <gtest/gtest.h>

#include "server/openai_protocol.h"
#include "server/request_fields.h"
#include "test_paths.h"
#include "test_server.h"

namespace lathe::server {
namespace {

using nlohmann::json;

int status_of(const std::function<void()>& f, std::string* param = nullptr) {
  try {
    f();
  } catch (const ApiError& e) {
    if (param) *param = e.param();
    return e.status();
  }
  return 0;
}

TEST(RequestFields, TypesRangesAndNulls) {
  const json body = {{"i", 5}, {"f", 2.0}, {"frac", 2.5}, {"neg", -3}, {"big", uint64_t(-1)}, {"s", "x"},
                     {"b", true}, {"nul", nullptr}, {"arr", {"a", "b"}}};
  const RequestFields f(body);
  EXPECT_EQ(f.integer("i", 0, 10), 5);
  EXPECT_EQ(f.integer("f", 0, 10), 2);  // an integral float passes
  EXPECT_FALSE(f.integer("nul", 0, 10).has_value());
  EXPECT_FALSE(f.integer("absent", 0, 10).has_value());
  std::string param;
  EXPECT_EQ(status_of([&] { f.integer("frac", 0, 10); }, &param), 400);
  EXPECT_EQ(param, "frac");
  EXPECT_EQ(status_of([&] { f.integer("neg", 0, 10); }), 400);
  EXPECT_EQ(status_of([&] { f.integer("big", 0, INT64_MAX); }), 400);
  EXPECT_EQ(status_of([&] { f.number("s", 0, 1); }), 400);
  EXPECT_EQ(status_of([&] { f.boolean("i"); }), 400);
  EXPECT_EQ(f.strings("arr", 4), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(f.strings("s", 4), (std::vector<std::string>{"x"}));
  EXPECT_EQ(status_of([&] { f.strings("arr", 1); }), 400);
  EXPECT_EQ(status_of([] { RequestFields g(json::array()); }), 400);
}

TEST(RequestParsing, CompletionDefaultsAndLimits) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  testing::TestServer s(dir);
  const ServedModel& m = s.model();
  const GenerationJob j = parse_completion_request({{"prompt", "Hello"}}, m);
  EXPECT_EQ(j.request.max_new_tokens, 16);  // OpenAI's completions default
  EXPECT_EQ(j.request.sampler.temperature, 1.f);
  ASSERT_EQ(j.prompts.size(), 1u);
  EXPECT_EQ(j.prompts[0].ids, s.fixture().tokenizer.encode("Hello", true, true));
  EXPECT_EQ(j.request_for(0).prompt, j.prompts[0].ids);
  EXPECT_EQ(j.request.prompt_logprobs, -1);
  const GenerationJob e = parse_completion_request({{"prompt", "Hello"}, {"echo", true}, {"logprobs", 2}}, m);
  EXPECT_EQ(e.request.prompt_logprobs, 2);
  EXPECT_EQ(e.request.logprobs, 2);
  const GenerationJob c = parse_chat_request({{"messages", {{{"role", "user"}, {"content", "Hi"}}}}}, m);
  EXPECT_EQ(c.request.max_new_tokens, m.context - int64_t(c.prompts[0].ids.size()));  // the room left
  // A batch of prompts: strings and id arrays; the default limit is the smallest room any leaves.
  const GenerationJob b = parse_completion_request({{"prompt", {"Hello", std::vector<int32_t>{1, 2, 3}}}}, m);
  ASSERT_EQ(b.prompts.size(), 2u);
  EXPECT_EQ(b.prompts[1].ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(b.prompt_tokens(), int64_t(b.prompts[0].ids.size()) + 3);
  EXPECT_EQ(status_of([&] { parse_completion_request({{"prompt", {"Hello", 5}}}, m); }), 400);
  EXPECT_EQ(status_of([&] { parse_completion_request({{"prompt", json::array()}}, m); }), 400);
  EXPECT_EQ(status_of([&] { parse_completion_request({{"prompt", {"Hello", ""}}}, m); }), 400);
  EXPECT_EQ(status_of([&] { parse_completion_request({{"prompt", std::vector<std::string>(65, "a")}}, m); }), 400);
  EXPECT_EQ(status_of([&] { parse_completion_request({{"prompt", "Hello"}, {"max_tokens", 2000}}, m); }), 400);
  EXPECT_EQ(status_of([&] { parse_completion_request({{"prompt", "Hello"}, {"top_k", -1}}, m); }), 0);  // vLLM's "off"
  // A KV cache smaller than the context is the limit, and the error says which it is.
  ServedModel small = m;
  small.kv_positions = 8;
  try {
    parse_completion_request({{"prompt", std::vector<int32_t>(10, 5)}}, small);
    ADD_FAILURE() << "a 10-token prompt passed an 8-token cache";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_NE(std::string(e.what()).find("KV cache holds 8 tokens"), std::string::npos) << e.what();
    EXPECT_EQ(e.code(), "context_length_exceeded");
  }
}

TEST(RequestParsing, ResponseFormatBecomesAGrammar) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  testing::TestServer s(dir);
  auto chat = [](json format) {
    return json{{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"response_format", std::move(format)}};
  };
  EXPECT_EQ(parse_chat_request(chat({{"type", "text"}}), s.model()).request.response_format, nullptr);
  EXPECT_NE(parse_chat_request(chat({{"type", "json_object"}}), s.model()).request.response_format, nullptr);
  const json schema = {{"type", "json_schema"},
                       {"json_schema", {{"name", "p"}, {"schema", {{"type", "object"}, {"properties", {{"a", {{"type", "integer"}}}}}}}}}};
  EXPECT_NE(parse_chat_request(chat(schema), s.model()).request.response_format, nullptr);
  // Shapes and schemas it cannot enforce: 400 naming the field.
  for (const json& bad : {json("json"), json{{"type", "xml"}}, json{{"type", "json_schema"}},
                          json{{"type", "json_schema"}, {"json_schema", {{"schema", {{"type", "string"}, {"pattern", "a+"}}}}}}}) {
    std::string param;
    EXPECT_EQ(status_of([&] { parse_chat_request(chat(bad), s.model()); }, &param), 400) << bad.dump();
    EXPECT_EQ(param.rfind("response_format", 0), 0u) << bad.dump();
  }
}

}  // namespace
}  // namespace lathe::server
