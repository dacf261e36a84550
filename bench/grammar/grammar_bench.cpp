// Grammar-constrained sampling's host cost per generated token: the token mask of a JSON grammar
// over a real vocabulary (JsonMatcher::allowed_tokens + feeding the chosen token), along documents
// tokenized by the same tokenizer, for json_object and a JSON Schema. Also the one-time vocabulary
// build. Usage: grammar_bench TOKENIZER_DIR [REPEATS]   (a folder with tokenizer.json)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/grammar/response_format.h"

namespace {

using namespace lathe;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// Masks along `doc` token by token; returns each step's mask time in ms.
std::vector<double> walk(const engine::ResponseFormat& f, const tok::Tokenizer& t, const std::string& doc) {
  engine::JsonMatcher m(f.grammar);
  std::vector<uint8_t> mask(size_t(f.vocab->size()));
  std::vector<double> times;
  for (int32_t id : t.encode(doc)) {
    const auto t0 = Clock::now();
    m.allowed_tokens(*f.vocab, mask);
    times.push_back(ms_since(t0));
    if (!mask[size_t(id)] || !m.feed(f.vocab->bytes(id)))
      fail(ErrorKind::kInternal, "the document's token {} was not allowed", id);
  }
  if (!m.accepting()) fail(ErrorKind::kInternal, "the document did not complete");
  return times;
}

void report(const char* name, std::vector<double> times) {
  std::sort(times.begin(), times.end());
  double sum = 0;
  for (double x : times) sum += x;
  std::printf("%-12s %5zu steps  mean %.3f ms  p50 %.3f ms  p99 %.3f ms  max %.3f ms\n", name, times.size(),
              sum / double(times.size()), times[times.size() / 2], times[times.size() * 99 / 100], times.back());
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc < 2) {
    std::fprintf(stderr, "usage: grammar_bench TOKENIZER_DIR [REPEATS]\n");
    return 2;
  }
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 3;
  const tok::Tokenizer t = tok::Tokenizer::load(argv[1]);
  auto t0 = Clock::now();
  const auto object = engine::make_response_format(nlohmann::json{{"type", "json_object"}}, t);
  std::printf("vocabulary %d ids, %zu grammar tokens, longest %zu bytes: built in %.1f ms\n", t.vocab_size(),
              object->vocab->sorted_count(), object->vocab->max_length(), ms_since(t0));
  const auto schema = engine::make_response_format(nlohmann::ordered_json::parse(R"({"type":"json_schema","json_schema":{
    "name":"order","schema":{"type":"object","properties":{
      "customer":{"type":"object","properties":{"name":{"type":"string"},"email":{"type":"string"}},"required":["name","email"]},
      "items":{"type":"array","items":{"type":"object","properties":{"sku":{"type":"string"},
        "quantity":{"type":"integer"},"price":{"type":"number"}},"required":["sku","quantity","price"]},"minItems":1},
      "status":{"enum":["pending","shipped","delivered"]},"notes":{"type":["string","null"]}},
      "required":["customer","items","status","notes"]}}})"), t);
  const std::string order = R"({
  "customer": {"name": "Ada Lovelace", "email": "ada@example.com"},
  "items": [{"sku": "A-1001", "quantity": 2, "price": 19.99}, {"sku": "B-2002", "quantity": 1, "price": 5.5}],
  "status": "shipped",
  "notes": "Leave at the front door, please. \u00c9tag\u00e8re fragile \u2014 handle with care!"
})";
  const std::string free_form = R"({"title": "A short story", "words": 1342, "tags": ["fiction", "sea", "night"],
  "summary": "An old sailor rows out past the harbour lights one last time and finds the sea has kept every promise he made to it.",
  "ratings": {"plot": 4.5, "style": 5, "pace": null}, "draft": false})";
  std::vector<double> a, b;
  for (int r = 0; r < repeats; ++r) {
    auto x = walk(*object, t, free_form);
    a.insert(a.end(), x.begin(), x.end());
    auto y = walk(*schema, t, order);
    b.insert(b.end(), y.begin(), y.end());
  }
  report("json_object", a);
  report("json_schema", b);
  // A whole constrained step as the engine runs it (TokenConstraint::sample: mask, -inf, the
  // sampler chain over the full row, feed) under json_object, two kinds of random logits: flat
  // (normal, sigma 2: a draw at temperature 1 almost always reaches past the 256 candidates, so
  // the whole row is sorted: the worst case) and Zipf-shaped like a model's (logit = -1.5 ln rank
  // over a random order: ~5% of the mass past rank 256).
  for (const char* shape : {"flat", "zipf"}) {
    for (float temperature : {0.f, 1.f}) {
      std::mt19937 rng(1);
      std::normal_distribution<float> normal(0.f, 2.f);
      std::vector<float> logits(size_t(t.vocab_size()));
      std::vector<int32_t> order(logits.size());
      std::vector<double> steps;
      for (int doc = 0; doc < repeats; ++doc) {
        engine::TokenConstraint c(object);
        engine::Sampler sampler({.temperature = temperature, .seed = uint64_t(doc)});
        std::vector<int32_t> history;
        for (int n = 0; n < 64 && !c.done(); ++n) {
          if (shape[0] == 'f') {
            for (float& x : logits) x = normal(rng);
          } else {
            for (size_t i = 0; i < order.size(); ++i) order[i] = int32_t(i);
            std::shuffle(order.begin(), order.end(), rng);
            for (size_t r = 0; r < order.size(); ++r) logits[size_t(order[r])] = -1.5f * std::log(float(r + 1));
          }
          const auto t0 = Clock::now();
          history.push_back(c.sample(sampler, logits, history, {}));
          steps.push_back(ms_since(t0));
        }
      }
      report((std::string("step ") + shape + (temperature == 0.f ? " T=0" : " T=1")).c_str(), steps);
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "grammar_bench: %s\n", e.what());
  return 1;
}
