// lathe's OpenAI-compatible server over loopback with httplib's client (and raw sockets where a
// client must misbehave), on the llama fixture model (CPU): greedy output equals transformers',
// streams concatenate to the whole response, usage, n > 1, stop strings, logprobs, echo with prompt
// logprobs, tokenize/detokenize, every error's status and shape, disconnects and a full queue, the
// API key, /metrics, and draining.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <future>
#include <regex>
#include <sstream>
#include <thread>
#include <vector>

#include "engine/scoring.h"
#include "server/openai_protocol.h"
#include "test_paths.h"
#include "test_server.h"

namespace lathe::server {
namespace {

using nlohmann::json;
using testing::RawConnection;
using testing::TestServer;

#define REQUIRE_LLAMA(dir) LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama")

json parse(const httplib::Result& r) {
  EXPECT_TRUE(r) << "no response";
  if (!r) return json();
  return json::parse(r->body);
}

// The JSON payloads of an SSE body; *done: it ended with [DONE].
std::vector<json> sse_chunks(const std::string& body, bool* done) {
  std::vector<json> out;
  *done = false;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("data: ", 0) != 0) continue;
    const std::string payload = line.substr(6);
    if (payload == "[DONE]") {
      *done = true;
      continue;
    }
    EXPECT_FALSE(*done) << "a chunk after [DONE]";
    out.push_back(json::parse(payload));
  }
  return out;
}

void expect_error(const httplib::Result& r, int status, const std::string& param = "", const std::string& what = "") {
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, status) << r->body;
  const json j = json::parse(r->body);
  ASSERT_TRUE(j.contains("error")) << r->body;
  const json& e = j["error"];
  for (const char* key : {"message", "type", "param", "code"}) EXPECT_TRUE(e.contains(key)) << key << " in " << r->body;
  EXPECT_TRUE(e["message"].is_string());
  if (!param.empty()) {
    EXPECT_EQ(e["param"], param) << r->body;
  }
  if (!what.empty()) {
    EXPECT_NE(e["message"].get<std::string>().find(what), std::string::npos) << r->body;
  }
}

std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> golden_cases(TestServer& s) {
  std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> cases;
  for (const auto& c : s.fixture().golden["cases"])
    cases.emplace_back(c["ids"].get<std::vector<int32_t>>(), c["greedy_ids"].get<std::vector<int32_t>>());
  return cases;
}

// logit_bias: +100 forces a token at every step, -100 bans the greedy choice (the next-best one is
// taken instead), for greedy and sampled requests alike.
TEST(Server, LogitBiasForcesAndBansTokens) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir);
  const auto cases = golden_cases(s);
  ASSERT_GE(cases.size(), 1u);
  const auto& [prompt, greedy] = cases[0];
  const int32_t forced = greedy[0] == 300 ? 301 : 300;
  for (double temperature : {0.0, 1.0}) {
    const json r = parse(s.post("/v1/completions", {{"prompt", prompt}, {"max_tokens", 4}, {"temperature", temperature},
                                                    {"ignore_eos", true}, {"logit_bias", {{std::to_string(forced), 100}}}}));
    EXPECT_EQ(r["choices"][0]["text"], s.fixture().tokenizer.decode(std::vector<int32_t>(4, forced), true)) << r.dump();
  }
  const json banned = parse(s.post("/v1/completions", {{"prompt", prompt}, {"max_tokens", 1}, {"temperature", 0},
                                                        {"ignore_eos", true}, {"logprobs", 2},
                                                        {"logit_bias", {{std::to_string(greedy[0]), -100}}}}));
  const json& top = banned["choices"][0]["logprobs"]["top_logprobs"][0];
  ASSERT_EQ(top.size(), 2u) << banned.dump();
  // The unbiased distribution's second choice is what greedy takes once the first is banned.
  std::string second;
  double best = -1e30;
  for (auto it = top.begin(); it != top.end(); ++it)
    if (it.key() != s.fixture().tokenizer.decode(std::vector<int32_t>{greedy[0]}, true) && it.value().get<double>() > best)
      best = it.value().get<double>(), second = it.key();
  EXPECT_EQ(banned["choices"][0]["text"], second) << banned.dump();
  EXPECT_EQ(s.settle(), 0);
}

TEST(Server, CompletionsGreedyEqualsTransformers) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir);
  const auto cases = golden_cases(s);
  ASSERT_GE(cases.size(), 2u);
  for (const auto& [prompt, greedy] : cases) {
    const json r = parse(s.post("/v1/completions", {{"model", "fixture"}, {"prompt", prompt}, {"max_tokens", greedy.size()},
                                                    {"temperature", 0}, {"ignore_eos", true}}));
    ASSERT_EQ(r["object"], "text_completion") << r.dump();
    EXPECT_EQ(r["choices"][0]["text"], s.fixture().tokenizer.decode(greedy, /*skip_special=*/true));
    // The batch form of one tokenized prompt ([[ids]], as evaluation harnesses send it) is the same.
    const json b = parse(s.post("/v1/completions", {{"prompt", json::array({prompt})}, {"max_tokens", greedy.size()},
                                                    {"temperature", 0}, {"ignore_eos", true}}));
    EXPECT_EQ(b["choices"][0]["text"], r["choices"][0]["text"]);
    EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(r["usage"]["prompt_tokens"], prompt.size());
    EXPECT_EQ(r["usage"]["completion_tokens"], greedy.size());
    EXPECT_EQ(r["usage"]["total_tokens"], prompt.size() + greedy.size());
  }
  EXPECT_EQ(s.settle(), 0);
}

// usage.prompt_tokens_details.cached_tokens: what the prefix cache served. A prompt's second run
// finds its full blocks (all but the last token is always computed); a cold one finds none.
TEST(Server, UsageReportsCachedPromptTokens) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir);
  std::vector<int32_t> prompt;
  for (int i = 0; i < 100; ++i) prompt.push_back(3 + (i * 37) % 400);
  const json body = {{"prompt", prompt}, {"max_tokens", 2}, {"temperature", 0}};
  const json cold = parse(s.post("/v1/completions", body)), warm = parse(s.post("/v1/completions", body));
  EXPECT_EQ(cold["usage"]["prompt_tokens_details"]["cached_tokens"], 0) << cold.dump();
  const int64_t cached = warm["usage"]["prompt_tokens_details"]["cached_tokens"].get<int64_t>();
  EXPECT_GT(cached, 0) << warm.dump();
  EXPECT_LT(cached, int64_t(prompt.size()));
  EXPECT_EQ(cached % 16, 0);  // whole blocks
  EXPECT_EQ(warm["choices"][0]["text"], cold["choices"][0]["text"]);
  EXPECT_EQ(s.settle(), 0);
}

// Chat: the template's prompt, generated greedily, gives what a BatchEngine gives on that prompt.
TEST(Server, ChatGreedyEqualsBatchEngine) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir);
  const json messages = json::array({{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hello there"}}});
  const json r = parse(s.post("/v1/chat/completions",
                              {{"messages", messages}, {"max_tokens", 20}, {"temperature", 0}, {"ignore_eos", true}}));
  ASSERT_EQ(r["object"], "chat.completion") << r.dump();
  EXPECT_EQ(r["choices"][0]["message"]["role"], "assistant");
  const std::string text = tmpl::render_chat(*s.model().chat_template, messages, true);
  const auto prompt = s.fixture().tokenizer.encode(text, false, true);
  EXPECT_EQ(r["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(r["usage"]["completion_tokens"], 20);
  std::string expected;
  s.engine().run_on_engine([&](engine::BatchEngine&) {  // the engine thread: the runner is free between steps
    engine::BatchEngine ref(s.fixture().runner, {.num_blocks = 64, .scheduler = {.block_size = 4}}, &s.fixture().tokenizer);
    engine::BatchRequest q;
    q.prompt = prompt;
    q.max_new_tokens = 20;
    q.sampler.temperature = 0;
    q.ignore_eos = true;
    ref.add(q);
    while (!ref.idle())
      for (const auto& e : ref.step()) expected += e.text;
  });
  EXPECT_EQ(r["choices"][0]["message"]["content"], expected);
  EXPECT_EQ(s.settle(), 0);
}

TEST(Server, StreamsConcatenateToTheWholeResponse) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir);
  for (const bool chat : {true, false}) {
    json body = {{"max_tokens", 30}, {"temperature", 0}, {"ignore_eos", true}};
    if (chat) body["messages"] = json::array({{{"role", "user"}, {"content", "Tell me a story"}}});
    else body["prompt"] = "Once upon a time";
    const std::string path = chat ? "/v1/chat/completions" : "/v1/completions";
    const json whole = parse(s.post(path, body));
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    const auto r = s.post(path, body);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
    bool done = false;
    const auto chunks = sse_chunks(r->body, &done);
    EXPECT_TRUE(done);
    ASSERT_GE(chunks.size(), 3u);
    std::string text;
    std::string finish;
    for (size_t i = 0; i + 1 < chunks.size(); ++i) {
      const json& c = chunks[i];
      EXPECT_EQ(c["object"], chat ? "chat.completion.chunk" : "text_completion");
      EXPECT_EQ(c["id"], chunks[0]["id"]);
      EXPECT_TRUE(c["usage"].is_null());
      ASSERT_EQ(c["choices"].size(), 1u);
      const json& ch = c["choices"][0];
      if (chat && i == 0) {
        EXPECT_EQ(ch["delta"]["role"], "assistant");
      }
      if (chat && ch["delta"].contains("content")) text += ch["delta"]["content"].get<std::string>();
      if (!chat) text += ch["text"].get<std::string>();
      if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
    }
    EXPECT_EQ(text, chat ? whole["choices"][0]["message"]["content"] : whole["choices"][0]["text"]);
    EXPECT_EQ(finish, "length");
    const json& last = chunks.back();
    EXPECT_TRUE(last["choices"].empty());
    // The same counts; the streamed run (the second of this prompt) found its blocks cached.
    json usage = last["usage"], want = whole["usage"];
    EXPECT_GT(usage["prompt_tokens_details"]["cached_tokens"], 0) << usage.dump();
    usage.erase("prompt_tokens_details"), want.erase("prompt_tokens_details");
    EXPECT_EQ(usage, want);
  }
  EXPECT_EQ(s.settle(), 0);
}

TEST(Server, NChoicesAndStopStrings) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir);
  const auto cases = golden_cases(s);
  const auto& [prompt, greedy] = cases[0];
  // Greedy n = 3: every choice is transformers' greedy text; usage counts all of them.
  const json r = parse(s.post("/v1/completions", {{"prompt", prompt}, {"max_tokens", greedy.size()}, {"temperature", 0},
                                                  {"ignore_eos", true}, {"n", 3}}));
  ASSERT_EQ(r["choices"].size(), 3u) << r.dump();
  const std::string want = s.fixture().tokenizer.decode(greedy, true);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r["choices"][i]["index"], i);
    EXPECT_EQ(r["choices"][i]["text"], want);
  }
  EXPECT_EQ(r["usage"]["completion_tokens"], 3 * greedy.size());
  EXPECT_EQ(r["usage"]["prompt_tokens"], prompt.size());
  // Sampled n = 2 streamed: both indices end; a seed makes the run repeatable.
  const json body = {{"prompt", prompt}, {"max_tokens", 12}, {"temperature", 1.0}, {"seed", 7}, {"n", 2}, {"ignore_eos", true}};
  const json a = parse(s.post("/v1/completions", body)), b = parse(s.post("/v1/completions", body));
  EXPECT_EQ(a["choices"], b["choices"]);
  json sb = body;
  sb["stream"] = true;
  const auto st = s.post("/v1/completions", sb);
  ASSERT_TRUE(st);
  bool done = false;
  std::map<int, std::string> texts, finish;
  for (const json& c : sse_chunks(st->body, &done))
    for (const json& ch : c["choices"]) {
      texts[ch["index"]] += ch["text"].get<std::string>();
      if (!ch["finish_reason"].is_null()) finish[ch["index"]] = ch["finish_reason"];
    }
  EXPECT_TRUE(done);
  ASSERT_EQ(finish.size(), 2u);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(texts[i], a["choices"][i]["text"]) << i;
  // A stop string in the middle of the greedy text: the text ends before it, finish_reason stop.
  const size_t cut = want.size() / 2;
  const std::string stop = want.substr(cut, 3);
  const json st2 = parse(s.post("/v1/completions", {{"prompt", prompt}, {"max_tokens", greedy.size()}, {"temperature", 0},
                                                    {"ignore_eos", true}, {"stop", json::array({stop})}}));
  EXPECT_EQ(st2["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(st2["choices"][0]["text"], want.substr(0, want.find(stop)));
  EXPECT_EQ(s.settle(), 0);
}

// A batch of prompts in one completions request: n choices per prompt, numbered prompt * n + i,
// each what the prompt alone gives; usage counts every prompt; echo shows each choice's own prompt.
TEST(Server, CompletionsBatchOfPrompts) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir);
  const auto cases = golden_cases(s);
  const json prompts = json::array({cases[0].first, "Hello", cases[1].first});
  for (const bool stream : {false, true}) {
    const json body = {{"prompt", prompts}, {"max_tokens", 10}, {"temperature", 0}, {"ignore_eos", true}, {"n", 2},
                       {"echo", true}, {"stream", stream}};
    const auto r = s.post("/v1/completions", body);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    std::map<int, std::string> texts;
    if (stream) {
      bool done = false;
      for (const json& c : sse_chunks(r->body, &done))
        for (const json& ch : c["choices"]) texts[ch["index"]] += ch["text"].get<std::string>();
      EXPECT_TRUE(done);
    } else {
      const json j = json::parse(r->body);
      ASSERT_EQ(j["choices"].size(), 6u);
      for (const json& ch : j["choices"]) texts[ch["index"]] = ch["text"];
      const int64_t hello = int64_t(s.fixture().tokenizer.encode("Hello", true, true).size());
      EXPECT_EQ(j["usage"]["prompt_tokens"], int64_t(cases[0].first.size() + cases[1].first.size()) + hello);
      EXPECT_EQ(j["usage"]["completion_tokens"], 60);
    }
    ASSERT_EQ(texts.size(), 6u);
    for (int p = 0; p < 3; ++p) {
      const json alone = parse(s.post("/v1/completions", {{"prompt", prompts[p]}, {"max_tokens", 10}, {"temperature", 0},
                                                          {"ignore_eos", true}, {"echo", true}}));
      for (int i = 0; i < 2; ++i) EXPECT_EQ(texts[p * 2 + i], alone["choices"][0]["text"]) << p << " " << i << " " << stream;
    }
    const std::string golden0 = s.fixture().tokenizer.decode(cases[0].first) +
                                s.fixture().tokenizer.decode(std::vector<int32_t>(cases[0].second.begin(), cases[0].second.begin() + 10), true);
    EXPECT_EQ(texts[0], golden0);
  }
  EXPECT_EQ(s.settle(), 0);
}

TEST(Server, ChatAndCompletionLogprobs) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir);
  const json r = parse(s.post("/v1/chat/completions", {{"messages", json::array({{{"role", "user"}, {"content", "Hi"}}})},
                                                       {"max_tokens", 6}, {"temperature", 0}, {"ignore_eos", true},
                                                       {"logprobs", true}, {"top_logprobs", 3}}));
  const json& content = r["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 6u) << r.dump();
  std::string joined;
  for (const json& t : content) {
    joined += t["token"].get<std::string>();
    EXPECT_LE(t["logprob"].get<double>(), 0.0);
    ASSERT_EQ(t["top_logprobs"].size(), 3u);
    EXPECT_EQ(t["top_logprobs"][0]["token"], t["token"]);  // greedy: the likeliest
    EXPECT_FLOAT_EQ(t["top_logprobs"][0]["logprob"].get<float>(), t["logprob"].get<float>());
    EXPECT_GE(t["top_logprobs"][0]["logprob"].get<double>(), t["top_logprobs"][1]["logprob"].get<double>());
    EXPECT_EQ(t["bytes"].size(), t["token"].get<std::string>().size());
  }
  EXPECT_EQ(joined, r["choices"][0]["message"]["content"]);
  // Streamed, the chunks' logprobs add up to the same list.
  const auto st = s.post("/v1/chat/completions", {{"messages", json::array({{{"role", "user"}, {"content", "Hi"}}})},
                                                   {"max_tokens", 6}, {"temperature", 0}, {"ignore_eos", true},
                                                   {"logprobs", true}, {"top_logprobs", 3}, {"stream", true}});
  ASSERT_TRUE(st);
  bool done = false;
  json streamed = json::array();
  for (const json& c : sse_chunks(st->body, &done))
    for (const json& ch : c["choices"])
      if (!ch["logprobs"].is_null())
        for (const json& t : ch["logprobs"]["content"]) streamed.push_back(t);
  EXPECT_TRUE(done);
  // (The same tokens; the values agree to float rounding: the second run starts from prefix-cache
  // blocks, so its prompt is computed in other batch shapes.)
  ASSERT_EQ(streamed.size(), content.size());
  for (size_t i = 0; i < content.size(); ++i) {
    EXPECT_EQ(streamed[i]["token"], content[i]["token"]);
    EXPECT_NEAR(streamed[i]["logprob"].get<double>(), content[i]["logprob"].get<double>(), 1e-4);
    ASSERT_EQ(streamed[i]["top_logprobs"].size(), 3u);
    for (size_t k = 0; k < 3; ++k) EXPECT_EQ(streamed[i]["top_logprobs"][k]["token"], content[i]["top_logprobs"][k]["token"]);
  }
  // Without logprobs the field is null.
  const json plain = parse(s.post("/v1/chat/completions", {{"messages", json::array({{{"role", "user"}, {"content", "Hi"}}})},
                                                           {"max_tokens", 2}}));
  EXPECT_TRUE(plain["choices"][0]["logprobs"].is_null());
  // Completions: logprobs = 2 gives four parallel arrays.
  const json c = parse(s.post("/v1/completions", {{"prompt", "Hello"}, {"max_tokens", 5}, {"temperature", 0},
                                                  {"ignore_eos", true}, {"logprobs", 2}}));
  const json& lp = c["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 5u) << c.dump();
  ASSERT_EQ(lp["token_logprobs"].size(), 5u);
  ASSERT_EQ(lp["top_logprobs"].size(), 5u);
  ASSERT_EQ(lp["text_offset"].size(), 5u);
  EXPECT_EQ(lp["text_offset"][0], 0);
  EXPECT_LE(lp["top_logprobs"][0].size(), 2u);
  EXPECT_EQ(s.settle(), 0);
}

// echo + logprobs: the prompt's text and tokens lead each choice, the first token's logprob null
// and the others' equal to scoring's -NLL (golden.json's transformers values).
TEST(Server, EchoWithPromptLogprobs) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir);
  const json& cs = s.fixture().golden["cases"][1];
  const auto prompt = cs["ids"].get<std::vector<int32_t>>();
  const auto nll = cs["nll"].get<std::vector<double>>();
  for (const bool stream : {false, true}) {
    const json body = {{"prompt", prompt}, {"max_tokens", 3}, {"temperature", 0}, {"ignore_eos", true},
                       {"echo", true}, {"logprobs", 1}, {"stream", stream}};
    json lp = {{"tokens", json::array()}, {"token_logprobs", json::array()}};
    std::string text;
    const auto r = s.post("/v1/completions", body);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    if (stream) {
      bool done = false;
      for (const json& c : sse_chunks(r->body, &done)) {
        text += c["choices"][0]["text"].get<std::string>();
        for (const char* k : {"tokens", "token_logprobs"})
          for (const json& v : c["choices"][0]["logprobs"][k]) lp[k].push_back(v);
      }
    } else {
      const json j = json::parse(r->body);
      text = j["choices"][0]["text"];
      lp = j["choices"][0]["logprobs"];
    }
    const std::string prompt_text = s.fixture().tokenizer.decode(prompt);
    EXPECT_EQ(text.substr(0, prompt_text.size()), prompt_text) << "stream " << stream;
    ASSERT_EQ(lp["tokens"].size(), prompt.size() + 3) << lp.dump();
    EXPECT_TRUE(lp["token_logprobs"][0].is_null());
    for (size_t j = 1; j < prompt.size(); ++j) EXPECT_NEAR(lp["token_logprobs"][j].get<double>(), -nll[j - 1], 2e-3) << j;
  }
  EXPECT_EQ(s.settle(), 0);
}

TEST(Server, ModelsTokenizeDetokenizeHealth) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir);
  auto c = s.client();
  const json models = parse(c.Get("/v1/models"));
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], "fixture");
  EXPECT_EQ(models["data"][0]["max_model_len"], 1024);
  const json t = parse(s.post("/tokenize", {{"prompt", "Hello world"}}));
  const auto ids = s.fixture().tokenizer.encode("Hello world", true, true);
  EXPECT_EQ(t["tokens"], ids);
  EXPECT_EQ(t["count"], ids.size());
  EXPECT_EQ(t["max_model_len"], 1024);
  const json d = parse(s.post("/detokenize", {{"tokens", ids}}));
  EXPECT_EQ(d["prompt"], s.fixture().tokenizer.decode(ids));
  const json tm = parse(s.post("/tokenize", {{"messages", json::array({{{"role", "user"}, {"content", "Hi"}}})}}));
  EXPECT_GT(tm["count"].get<int>(), 3);
  expect_error(s.post("/detokenize", {{"tokens", {1, 99999}}}), 400, "tokens");
  const auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
}

TEST(Server, ErrorsHaveOpenAIShapeAndStatus) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir);
  auto c = s.client();
  const json msgs = json::array({{{"role", "user"}, {"content", "Hi"}}});
  auto chat = [&](json extra) {
    json b = {{"messages", msgs}, {"max_tokens", 2}};
    b.update(extra);
    return s.post("/v1/chat/completions", b);
  };
  auto comp = [&](json extra) {
    json b = {{"prompt", "Hi"}, {"max_tokens", 2}};
    b.update(extra);
    return s.post("/v1/completions", b);
  };
  expect_error(c.Post("/v1/chat/completions", "{not json", "application/json"), 400, "", "not valid JSON");
  expect_error(c.Post("/v1/chat/completions", "[1,2]", "application/json"), 400);
  expect_error(c.Post("/v1/completions", "", "application/json"), 400);
  expect_error(chat({{"temperature", "hot"}}), 400, "temperature");
  expect_error(chat({{"temperature", -1}}), 400, "temperature");
  expect_error(chat({{"temperature", 1e300}}), 400, "temperature");
  expect_error(chat({{"top_p", 0}}), 400, "top_p");
  expect_error(chat({{"top_k", 2.5}}), 400, "top_k");
  expect_error(chat({{"max_tokens", 0}}), 400, "max_tokens");
  expect_error(chat({{"max_tokens", -5}}), 400, "max_tokens");
  expect_error(chat({{"max_completion_tokens", "many"}}), 400, "max_completion_tokens");
  expect_error(chat({{"n", 0}}), 400, "n");
  expect_error(chat({{"n", 100000}}), 400, "n");
  expect_error(chat({{"seed", "x"}}), 400, "seed");
  expect_error(chat({{"stream", "yes"}}), 400, "stream");
  expect_error(chat({{"stream_options", {{"include_usage", true}}}}), 400, "stream_options");
  expect_error(chat({{"logprobs", 1}}), 400, "logprobs");
  expect_error(chat({{"top_logprobs", 3}}), 400, "top_logprobs");
  expect_error(chat({{"logprobs", true}, {"top_logprobs", 21}}), 400, "top_logprobs");
  expect_error(chat({{"stop", json::array({1, 2})}}), 400, "stop");
  expect_error(chat({{"stop", json::array({"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q"})}}), 400, "stop");
  expect_error(chat({{"stop", ""}}), 400, "stop");
  expect_error(chat({{"messages", json::array()}}), 400, "messages");
  expect_error(chat({{"messages", "hi"}}), 400, "messages");
  expect_error(chat({{"messages", json::array({{{"role", "wizard"}, {"content", "x"}}})}}), 400, "messages[0].role");
  expect_error(chat({{"messages", json::array({{{"role", "user"}, {"content", 5}}})}}), 400, "messages[0].content");
  expect_error(chat({{"model", "gpt-4"}}), 404, "model");
  expect_error(chat({{"tools", json::array({{{"type", "function"}}})}}), 400, "tools");
  expect_error(chat({{"logit_bias", 5}}), 400, "logit_bias");
  expect_error(chat({{"logit_bias", {{"x", 10}}}}), 400, "logit_bias");
  expect_error(chat({{"logit_bias", {{"5x", 10}}}}), 400, "logit_bias");
  expect_error(chat({{"logit_bias", {{"512", 10}}}}), 400, "logit_bias");  // the fixture has 512 tokens
  expect_error(chat({{"logit_bias", {{"-1", 10}}}}), 400, "logit_bias");
  expect_error(chat({{"logit_bias", {{"5", 101}}}}), 400, "logit_bias");
  expect_error(chat({{"logit_bias", {{"5", "up"}}}}), 400, "logit_bias");
  // response_format: text passes; JSON modes are enforced by the grammar (a bounded schema always
  // finishes as a document that validates); what the grammar cannot enforce is a 400 naming it.
  const auto text_fmt = chat({{"response_format", {{"type", "text"}}}});
  ASSERT_TRUE(text_fmt);
  EXPECT_EQ(text_fmt->status, 200);
  const json schema = {{"type", "object"},
                       {"properties", {{"ok", {{"type", "boolean"}}}, {"color", {{"enum", {"red", "green"}}}}}},
                       {"required", {"ok", "color"}},
                       {"additionalProperties", false}};
  for (double temperature : {0.0, 1.0}) {
    const auto js = chat({{"max_tokens", 64}, {"temperature", temperature}, {"seed", 3},
                          {"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "x"}, {"schema", schema}}}}}});
    ASSERT_TRUE(js);
    ASSERT_EQ(js->status, 200) << js->body;
    const json reply = json::parse(js->body);
    EXPECT_EQ(reply["choices"][0]["finish_reason"], "stop") << js->body;
    const json doc = json::parse(reply["choices"][0]["message"]["content"].get<std::string>());
    EXPECT_TRUE(doc["ok"].is_boolean()) << doc.dump();
    EXPECT_TRUE(doc["color"] == "red" || doc["color"] == "green") << doc.dump();
    EXPECT_EQ(doc.size(), 2u) << doc.dump();
  }
  const auto obj = chat({{"max_tokens", 8}, {"response_format", {{"type", "json_object"}}}});
  ASSERT_TRUE(obj);
  EXPECT_EQ(obj->status, 200) << obj->body;
  const json obj_reply = json::parse(obj->body)["choices"][0];
  if (obj_reply["finish_reason"] == "stop") {  // finished inside 8 tokens: a whole object
    EXPECT_TRUE(json::parse(obj_reply["message"]["content"].get<std::string>()).is_object()) << obj->body;
  }
  expect_error(chat({{"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "x"}, {"schema", {{"type", "string"}, {"pattern", "a+"}}}}}}}}),
               400, "response_format", "pattern");
  expect_error(chat({{"response_format", {{"type", "yaml"}}}}), 400, "response_format.type");
  expect_error(comp({{"prompt", 5}}), 400, "prompt");
  expect_error(comp({{"prompt", json::array({1, -2})}}), 400, "prompt");
  expect_error(comp({{"prompt", json::array({1, 512})}}), 400, "prompt");
  expect_error(comp({{"prompt", ""}}), 400, "prompt");
  expect_error(comp({{"prompt", json::array({json::array({1, 600})})}}), 400, "prompt");
  expect_error(comp({{"logprobs", 21}}), 400, "logprobs");
  expect_error(comp({{"suffix", "tail"}}), 400, "suffix");
  // Over-long prompts name the context limit and the prompt's length.
  const auto long_prompt = comp({{"prompt", std::vector<int32_t>(2000, 5)}});
  expect_error(long_prompt, 400, "prompt", "1024");
  EXPECT_NE(long_prompt->body.find("2000"), std::string::npos);
  EXPECT_NE(long_prompt->body.find("context_length_exceeded"), std::string::npos);
  expect_error(comp({{"prompt", std::vector<int32_t>(1000, 5)}, {"max_tokens", 100}}), 400, "max_tokens", "1024");
  // Routes and sizes.
  expect_error(c.Get("/v1/nothing"), 404);
  expect_error(c.Post("/v2/chat", "{}", "application/json"), 404);
  expect_error(c.Get("/v1/chat/completions"), 404);
  expect_error(c.Post("/v1/completions", std::string(10u << 20, ' '), "application/json"), 413);
  // Unknown fields are ignored, as OpenAI's API does.
  const auto extra = comp({{"user", "me"}, {"frobnicate", {{"a", 1}}}});
  ASSERT_TRUE(extra);
  EXPECT_EQ(extra->status, 200) << extra->body;
  EXPECT_EQ(s.settle(), 0);
}

std::string stream_request(int max_tokens) {
  const json body = {{"prompt", "Hello"}, {"max_tokens", max_tokens}, {"temperature", 0}, {"ignore_eos", true}, {"stream", true}};
  return testing::http_post("/v1/completions", body.dump());
}

// A client that hangs up mid-stream, or while waiting for a whole response, or while its request
// still waits in the queue, has its request cancelled and every KV block back in the pool before
// the engine's next step (the engine thread checks the connections between steps), long before
// its token limit. Steps are padded to 2 ms so the tiny model cannot finish first.
TEST(Server, DisconnectCancelsAndFreesBlocks) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir, {.max_running = 1, .min_step_time = std::chrono::milliseconds(2)});
  for (const bool stream : {true, false}) {
    const int64_t cancelled = s.engine().stats().requests_cancelled_total;
    const int64_t before = s.engine().stats().generation_tokens_total;
    RawConnection conn(s.port());
    const json body = {{"prompt", "Hello"}, {"max_tokens", 1000}, {"temperature", 0}, {"ignore_eos", true}, {"stream", stream}};
    ASSERT_TRUE(conn.send(testing::http_post("/v1/completions", body.dump())));
    if (stream) {
      const std::string got = conn.read_until("\"text\"", std::chrono::seconds(10));
      ASSERT_NE(got.find("data: "), std::string::npos) << got;
    } else {
      for (int i = 0; i < 2000 && s.engine().stats().generation_tokens_total < before + 5; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    const int64_t at_close = s.engine().stats().generation_tokens_total;
    conn.close();
    EXPECT_EQ(s.settle(std::chrono::seconds(3)), 0) << "stream " << stream;
    EXPECT_EQ(s.engine().stats().requests_cancelled_total, cancelled + 1);
    EXPECT_LE(s.engine().stats().generation_tokens_total - at_close, 3) << "steps ran after the client left";
  }
  // Queued behind a running request (max_running 1): cancelled before it ever runs.
  RawConnection runner(s.port()), queued(s.port());
  ASSERT_TRUE(runner.send(stream_request(1000)));
  ASSERT_NE(runner.read_until("data: ", std::chrono::seconds(10)).find("data: "), std::string::npos);
  ASSERT_TRUE(queued.send(stream_request(1000)));
  for (int i = 0; i < 2000 && s.engine().stats().waiting < 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(s.engine().stats().waiting, 1);
  queued.close();
  for (int i = 0; i < 2000 && s.engine().stats().in_flight > 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(s.engine().stats().in_flight, 1);
  runner.close();
  EXPECT_EQ(s.settle(), 0);
}

TEST(Server, FullQueueAnswers429AtOnce) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir, {.max_running = 1, .max_queue = 1, .min_step_time = std::chrono::milliseconds(2)});
  RawConnection a(s.port()), b(s.port());
  ASSERT_TRUE(a.send(stream_request(1000)));
  ASSERT_TRUE(b.send(stream_request(1000)));
  for (int i = 0; i < 5000 && s.engine().stats().in_flight < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_EQ(s.engine().stats().in_flight, 2);
  const auto t0 = std::chrono::steady_clock::now();
  expect_error(s.post("/v1/completions", {{"prompt", "Hi"}, {"max_tokens", 2}}), 429);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  a.close();
  b.close();
  EXPECT_EQ(s.settle(), 0);
  const auto ok = s.post("/v1/completions", {{"prompt", "Hi"}, {"max_tokens", 2}});
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
}

TEST(Server, ApiKey) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir, {.api_key = "sekret-key"});
  auto c = s.client();
  expect_error(c.Get("/v1/models"), 401);
  httplib::Headers wrong = {{"Authorization", "Bearer sekret-kez"}};
  expect_error(c.Get("/v1/models", wrong), 401);
  httplib::Headers prefix = {{"Authorization", "Bearer sekret"}};
  expect_error(c.Get("/v1/models", prefix), 401);
  expect_error(c.Post("/v1/completions", "{}", "application/json"), 401);
  httplib::Headers right = {{"Authorization", "Bearer sekret-key"}};
  const auto ok = c.Get("/v1/models", right);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  const auto health = c.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_TRUE(constant_time_equal("abc", "abc"));
  EXPECT_FALSE(constant_time_equal("abc", "abd"));
  EXPECT_FALSE(constant_time_equal("abc", "abcd"));
  EXPECT_FALSE(constant_time_equal("", "a"));
}

TEST(Server, MetricsParseAsPrometheusText) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir);
  const json body = {{"prompt", "Hello world, this prompt fills a few KV blocks"}, {"max_tokens", 8}, {"ignore_eos", true}};
  parse(s.post("/v1/completions", body));
  parse(s.post("/v1/completions", body));  // prefix hits
  EXPECT_EQ(s.settle(), 0);  // the engine thread has published its stats after the last step
  auto c = s.client();
  for (int i = 0; i < 200; ++i) {  // the access log counts a response just after it is sent
    const auto m = c.Get("/metrics");
    if (m && m->body.find("lathe_http_responses_total{code=\"200\"} 2") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const auto r = c.Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  const std::regex sample(R"(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? -?[0-9.eE+-]+(inf)?$)");
  std::map<std::string, double> values;
  std::istringstream in(r->body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) continue;
    EXPECT_TRUE(std::regex_match(line, sample)) << line;
    const auto sp = line.rfind(' ');
    values[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  for (const char* name : {"lathe_requests_waiting", "lathe_requests_running", "lathe_kv_blocks_used", "lathe_kv_blocks_total",
                           "lathe_prefix_cache_hit_rate", "lathe_generation_tokens_total", "lathe_generation_tokens_per_second"})
    EXPECT_TRUE(values.count(name)) << name;
  EXPECT_EQ(values["lathe_kv_blocks_total"], 256);
  EXPECT_EQ(values["lathe_generation_tokens_total"], 16);
  EXPECT_GT(values["lathe_generation_tokens_per_second"], 0);
  EXPECT_GT(values["lathe_prefix_cache_hit_rate"], 0);
  EXPECT_GE(values["lathe_http_responses_total{code=\"200\"}"], 2);
  // Two requests of 8 tokens, one after the other: at least one step per token; on the CPU backend
  // all of a step is host time.
  EXPECT_GE(values["lathe_engine_steps_total"], 16);
  EXPECT_GT(values["lathe_engine_step_seconds_total"], 0);
  EXPECT_EQ(values["lathe_engine_step_host_seconds_total"], values["lathe_engine_step_seconds_total"]);
  EXPECT_EQ(values["lathe_engine_step_host_ratio"], 1);
  EXPECT_GE(values["lathe_engine_decode_steps_total"], 14);  // each request's tokens after its first
  EXPECT_LT(values["lathe_engine_decode_steps_total"], values["lathe_engine_steps_total"]);
  EXPECT_EQ(values["lathe_engine_decode_step_host_ratio"], 1);
}

// A burst of clients connecting at once is queued by the kernel, not dropped: the listening socket's
// backlog is raised from httplib's 5 (48 streams opened at once on the GPU machine lost 4 to read
// errors and delayed others by a 1 s SYN retry); then 64 simultaneous requests all succeed.
TEST(Server, ListenBacklogTakesABurstOfClients) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir);
  int somaxconn = HttpServer::kListenBacklog;
  if (std::ifstream f("/proc/sys/net/core/somaxconn"); f) f >> somaxconn;
  EXPECT_EQ(s.http().listen_backlog(), std::min(somaxconn, HttpServer::kListenBacklog));
  EXPECT_GT(s.http().listen_backlog(), 5);
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < 64; ++i)
    clients.emplace_back([&] {
      auto c = s.client();
      const auto r = c.Get("/health");
      if (r && r->status == 200) ++ok;
    });
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), 64);
}

// shutdown() drains: a stream in flight runs to its end while new requests get 503.
TEST(Server, ShutdownDrainsInFlightRequests) {
  REQUIRE_LLAMA(dir);
  TestServer s(dir, {.min_step_time = std::chrono::microseconds(500)});
  RawConnection conn(s.port());
  ASSERT_TRUE(conn.send(stream_request(1000)));
  ASSERT_NE(conn.read_until("data: ", std::chrono::seconds(10)).find("data: "), std::string::npos);
  auto stopping = std::async(std::launch::async, [&] { s.http().shutdown(); });
  auto c = s.client();
  for (int i = 0; i < 1000; ++i) {  // until the drain has begun
    const auto h = c.Get("/health");
    if (!h || h->status == 503) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  expect_error(s.post("/v1/completions", {{"prompt", "Hi"}, {"max_tokens", 1}}), 503);
  const std::string all = conn.read_until("data: [DONE]", std::chrono::seconds(30));
  EXPECT_NE(all.find("data: [DONE]"), std::string::npos);
  stopping.get();
  EXPECT_EQ(s.settle(), 0);
}

}  // namespace
}  // namespace lathe::server
