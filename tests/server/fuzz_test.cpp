// Over 1,000 malformed or hostile requests against the server from several threads at once:
// random bytes and invalid UTF-8, mutated and truncated JSON, wrong types, huge and negative
// numbers, unknown fields, deep nesting, 10 MB bodies, slow clients that never finish a request,
// odd methods and routes, and streams cut off mid-way. Every answer must be a known status with
// OpenAI's error body, the server must stay up and still answer correctly, and no KV block or
// queue slot may leak.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <random>
#include <set>

#include "test_paths.h"
#include "test_server.h"

namespace lathe::server {
namespace {

using nlohmann::json;
using testing::RawConnection;
using testing::TestServer;

json random_value(std::mt19937& rng, int depth = 0) {
  switch (rng() % 14) {
    case 0: return nullptr;
    case 1: return bool(rng() % 2);
    case 2: return int64_t(rng()) - int64_t(1u << 31);
    case 3: return 1e308 * ((rng() % 2) ? 1 : -1);
    case 4: return -1;
    case 5: return 0;
    case 6: return double(rng() % 1000) / 7.0;
    case 7: return std::string(size_t(rng() % 64), char('a' + rng() % 26));
    case 8: return std::string(100000, 'x');
    case 9: return uint64_t(-1);
    case 10: return json::array();
    case 11: {
      json a = json::array();
      if (depth < 3)
        for (int i = 0, n = int(rng() % 4); i < n; ++i) a.push_back(random_value(rng, depth + 1));
      return a;
    }
    case 12: {
      json o = json::object();
      if (depth < 3) o["type"] = random_value(rng, depth + 1);
      return o;
    }
    default: return 1;
  }
}

const std::vector<std::string> kFields = {"model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
                                          "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                                          "repetition_penalty", "seed", "stop", "n", "logprobs", "top_logprobs", "echo",
                                          "stream", "stream_options", "response_format", "ignore_eos", "tools",
                                          "logit_bias", "best_of", "suffix", "user", "unknown_field", "tokens"};

json valid_body(std::mt19937& rng, bool chat) {
  json b = {{"max_tokens", 1 + rng() % 6}, {"temperature", (rng() % 2) ? 0.0 : 0.8}, {"seed", rng() % 100}};
  if (chat) b["messages"] = json::array({{{"role", "user"}, {"content", "hi there"}}});
  else b["prompt"] = (rng() % 2) ? json("Hello") : json(std::vector<int32_t>{0, 43, 463, 82});
  return b;
}

// A JSON body with one field mutated, removed or added.
std::string mutated_body(std::mt19937& rng, bool chat) {
  json b = valid_body(rng, chat);
  const std::string& f = kFields[rng() % kFields.size()];
  if (rng() % 5 == 0) b.erase(f);
  else b[f] = random_value(rng);
  if (rng() % 4 == 0) {  // a second mutation inside messages
    if (chat && b.contains("messages") && b["messages"].is_array() && !b["messages"].empty())
      b["messages"][0][(rng() % 2) ? "role" : "content"] = random_value(rng);
  }
  return b.dump();
}

std::string random_bytes(std::mt19937& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = char(rng() % 256);
  return s;
}

std::string hostile_body(std::mt19937& rng, bool chat) {
  switch (rng() % 9) {
    case 0: return random_bytes(rng, 1 + rng() % 200);
    case 1: {  // truncated JSON
      const std::string b = valid_body(rng, chat).dump();
      return b.substr(0, rng() % b.size());
    }
    case 2: {  // deep nesting
      const size_t d = 10 + rng() % 100000;
      return std::string(d, '[') + std::string(d, ']');
    }
    case 3: {  // invalid UTF-8 inside a JSON string
      json b = valid_body(rng, chat);
      std::string s = b.dump();
      const auto at = s.find("hi there") != std::string::npos ? s.find("hi there") : s.find("Hello");
      if (at != std::string::npos) s.insert(at, "\xff\xfe\xc3");
      return s;
    }
    case 4: return "{\"prompt\": NaN, \"max_tokens\": Infinity}";
    case 5: return "{\"max_tokens\": 1e999999, \"prompt\": \"x\"}";
    case 6: return "null";
    case 7: return "\"just a string\"";
    default: return mutated_body(rng, chat);
  }
}

class Checker {
 public:
  void check(const httplib::Result& r, const std::string& what) {
    ++requests;
    if (!r) return;  // the server may close a connection it will not read (over-long, malformed)
    static const std::set<int> allowed = {200, 400, 401, 404, 405, 413, 414, 429, 431, 503};
    std::lock_guard lk(mu_);
    EXPECT_TRUE(allowed.count(r->status)) << r->status << " for " << what.substr(0, 200) << ": " << r->body.substr(0, 300);
    if (r->status == 200) return;
    json j;
    try {
      j = json::parse(r->body);
    } catch (...) {
      ADD_FAILURE() << "non-JSON error body for " << what.substr(0, 200) << ": " << r->body.substr(0, 300);
      return;
    }
    EXPECT_TRUE(j.contains("error") && j["error"].contains("message") && j["error"].contains("type") &&
                j["error"].contains("param") && j["error"].contains("code"))
        << r->body;
    EXPECT_NE(r->status, 500) << r->body;
  }
  std::atomic<int> requests{0};

 private:
  std::mutex mu_;
};

TEST(ServerFuzz, ThousandsOfHostileRequestsLeaveNoTrace) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  TestServer s(dir, {.num_blocks = 128, .max_running = 8, .max_queue = 8, .read_timeout_s = 1});
  Checker check;
  const std::vector<std::string> paths = {"/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize",
                                          "/v1/models", "/metrics", "/health", "/", "/v1/../etc/passwd",
                                          "/v1/completions?x=%00", "/%ff%fe"};
  auto worker = [&](int seed) {
    std::mt19937 rng(uint32_t(1000 + seed));
    auto c = s.client();
    c.set_read_timeout(20, 0);
    for (int i = 0; i < 300; ++i) {
      const bool chat = rng() % 2;
      const std::string path = (rng() % 4 == 0) ? paths[rng() % paths.size()] : chat ? paths[0] : paths[1];
      const std::string body = hostile_body(rng, chat);
      const int how = int(rng() % 10);
      if (how == 0) {
        check.check(c.Get(path.c_str()), "GET " + path);
      } else if (how == 1) {
        check.check(c.Put(path.c_str(), body, "application/json"), "PUT " + path);
      } else if (how == 2) {
        check.check(c.Post(path.c_str(), body, "text/plain"), body);
      } else {
        check.check(c.Post(path.c_str(), body, "application/json"), body);
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back(worker, t);

  // Meanwhile: 10 MB bodies, slow clients, header bombs and streams cut off mid-way.
  std::mt19937 rng(7);
  {
    auto c = s.client();
    for (int i = 0; i < 3; ++i) check.check(c.Post("/v1/completions", std::string(10u << 20, '{'), "application/json"), "10 MB");
  }
  std::vector<std::unique_ptr<RawConnection>> slow;
  for (int i = 0; i < 6; ++i) {  // never finish their request: dropped after the read timeout
    slow.push_back(std::make_unique<RawConnection>(s.port()));
    const std::string req = testing::http_post("/v1/completions", valid_body(rng, false).dump());
    slow.back()->send(req.substr(0, 10 + rng() % (req.size() - 20)));
    ++check.requests;
  }
  for (int i = 0; i < 40; ++i) {  // streams abandoned at a random point (before or after the first chunk)
    RawConnection conn(s.port());
    json b = valid_body(rng, rng() % 2);
    b["max_tokens"] = 200;
    b["ignore_eos"] = true;
    b["stream"] = true;
    conn.send(testing::http_post(b.contains("messages") ? "/v1/chat/completions" : "/v1/completions", b.dump()));
    if (rng() % 2) conn.read_until("data: ", std::chrono::milliseconds(rng() % 300));
    conn.close();
    ++check.requests;
  }
  {
    RawConnection bomb(s.port());
    bomb.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(200000, 'a') + "\r\n\r\n");
    bomb.read_until("\r\n\r\n", std::chrono::seconds(3));
    ++check.requests;
  }
  for (auto& t : threads) t.join();
  slow.clear();
  EXPECT_GE(check.requests.load(), 1000);

  // Still up, still right, nothing leaked.
  EXPECT_EQ(s.settle(std::chrono::seconds(10)), 0);
  auto c = s.client();
  const auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  const json& cs = s.fixture().golden["cases"][0];
  const auto greedy = cs["greedy_ids"].get<std::vector<int32_t>>();
  const auto r = s.post("/v1/completions", {{"prompt", cs["ids"]}, {"max_tokens", greedy.size()}, {"temperature", 0},
                                            {"ignore_eos", true}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["choices"][0]["text"], s.fixture().tokenizer.decode(greedy, true));
  EXPECT_EQ(s.settle(), 0);
}

}  // namespace
}  // namespace lathe::server
