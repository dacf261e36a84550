// Continuous batching on the fixture models (CPU backend): many requests in one pool give the same
// greedy tokens as Hugging Face's one-at-a-time generation, whatever the token budget (chunked
// prefill mixed with decodes), prefix-cache hits or preemptions; cancellation and the end of every
// request give every block back.
#include "engine/batch_engine.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/error.h"
#include "engine/fixture_model.h"
#include "engine/scoring.h"
#include "test_paths.h"

namespace lathe::engine {
namespace {

// The fixture model and its golden cases as (prompt, Hugging Face greedy ids).
struct Fixture : testing::FixtureModel {
  explicit Fixture(const std::filesystem::path& dir) : FixtureModel(dir) {
    for (const auto& cs : golden["cases"])
      cases.emplace_back(cs["ids"].get<std::vector<int32_t>>(), cs["greedy_ids"].get<std::vector<int32_t>>());
  }
  std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> cases;
};

// Every test below needs the golden cases; an empty list would make them pass vacuously.
std::unique_ptr<Fixture> load(const std::filesystem::path& dir) {
  auto f = std::make_unique<Fixture>(dir);  // (large: kept off the stack)
  if (f->cases.size() < 2) throw Error(ErrorKind::kFormat, "golden.json has fewer than 2 cases");
  return f;
}

using testing::greedy;

// Adds every case (each `copies` times), runs to the end, checks each against the reference.
void run_all(Fixture& f, BatchEngine& e, int copies) {
  std::vector<std::pair<RequestId, size_t>> ids;
  for (int c = 0; c < copies; ++c)
    for (size_t i = 0; i < f.cases.size(); ++i)
      ids.emplace_back(e.add(greedy(f.cases[i].first, int64_t(f.cases[i].second.size()))), i);
  std::map<RequestId, int> finished;
  for (int s = 0; s < 10000 && !e.idle(); ++s)
    for (const BatchEvent& ev : e.step())
      if (ev.finished) {
        ++finished[ev.id];
        EXPECT_EQ(ev.reason, FinishReason::kLength);
      }
  ASSERT_TRUE(e.idle());
  for (const auto& [id, i] : ids) {
    EXPECT_EQ(e.generated(id), f.cases[i].second) << "case " << i << " request " << id;
    EXPECT_EQ(finished[id], 1);
  }
  EXPECT_EQ(e.blocks().num_free(), e.blocks().num_blocks());
  e.blocks().audit();
}

TEST(BatchEngine, BatchedGreedyEqualsTransformers) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto fp = load(dir);
  Fixture& f = *fp;
  for (bool overlap : {false, true})
    for (int64_t budget : {int64_t(7), int64_t(64), int64_t(4096)}) {  // 7: every prompt in chunks beside decodes
      BatchEngine e(f.runner, {.num_blocks = 512, .scheduler = {.block_size = 4, .token_budget = budget}, .overlap = overlap});
      EXPECT_EQ(e.overlaps(), overlap);
      run_all(f, e, 2);
    }
}

// Bucketed decode steps (Runner::set_decode_buckets, the default on the GPU): a step of 3, 5, 6 or
// 7 sequences runs padded to 4 or 8, the padding over the pool's scratch row; every request's
// tokens still equal transformers' and no block is lost.
TEST(BatchEngine, BucketedDecodeStepsGiveTheSameTokens) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto fp = load(dir);
  Fixture& f = *fp;
  EXPECT_EQ(model::Runner::decode_bucket(1), 1);
  EXPECT_EQ(model::Runner::decode_bucket(3), 4);
  EXPECT_EQ(model::Runner::decode_bucket(5), 8);
  EXPECT_EQ(model::Runner::decode_bucket(41), 48);
  EXPECT_EQ(model::Runner::decode_bucket(600), 600);
  f.runner.set_decode_buckets(true);
  for (bool overlap : {false, true})
    for (int copies : {1, 3}) {
      BatchEngine e(f.runner, {.num_blocks = 512, .scheduler = {.block_size = 4, .token_budget = 4096}, .overlap = overlap});
      run_all(f, e, copies);
    }
  f.runner.set_decode_buckets(false);
}

// The second copy of each prompt starts from the first one's cached blocks and still matches.
TEST(BatchEngine, PrefixHitsGiveTheSameTokens) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto fp = load(dir);
  Fixture& f = *fp;
  BatchEngine e(f.runner, {.num_blocks = 512, .scheduler = {.block_size = 4, .token_budget = 4096}});
  const auto& [prompt, want] = f.cases.back();
  const RequestId a = e.add(greedy(prompt, int64_t(want.size())));
  while (!e.idle()) e.step();
  const RequestId b = e.add(greedy(prompt, int64_t(want.size())));
  while (!e.idle()) e.step();
  EXPECT_EQ(e.cached_tokens(a), 0);
  EXPECT_EQ(e.cached_tokens(b), int64_t((prompt.size() - 1) / 4 * 4));
  EXPECT_GT(e.cached_tokens(b), 0);
  EXPECT_EQ(e.generated(b), want);
  EXPECT_EQ(e.generated(a), want);
}

// A cache too small for every request at once: the newest are preempted and recomputed, and the
// tokens do not change.
TEST(BatchEngine, PreemptionGivesTheSameTokens) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto fp = load(dir);
  Fixture& f = *fp;
  int64_t longest = 0;
  for (const auto& [p, w] : f.cases) longest = std::max<int64_t>(longest, int64_t(p.size() + w.size()));
  for (bool overlap : {false, true}) {
    BatchEngine e(f.runner, {.num_blocks = (longest + 3) / 4 + 2, .scheduler = {.block_size = 4, .token_budget = 4096},
                             .overlap = overlap});
    run_all(f, e, 2);
    EXPECT_GT(e.scheduler().preemptions(), 0);
  }
}

TEST(BatchEngine, CancelFreesEveryBlock) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto fp = load(dir);
  Fixture& f = *fp;
  BatchEngine e(f.runner, {.num_blocks = 256, .scheduler = {.block_size = 4, .token_budget = 16}});
  std::vector<RequestId> ids;
  for (const auto& [p, w] : f.cases) ids.push_back(e.add(greedy(p, 50)));
  for (int s = 0; s < 3; ++s) e.step();
  EXPECT_GT(e.blocks().num_used(), 0);
  for (RequestId id : ids) EXPECT_TRUE(e.cancel(id));
  EXPECT_FALSE(e.cancel(ids[0]));
  EXPECT_TRUE(e.idle());
  EXPECT_EQ(e.blocks().num_free(), e.blocks().num_blocks());
  e.blocks().audit();
  EXPECT_TRUE(e.step().empty());
}

// The step clock counts every step that ran (not the empty ones) and times each that followed
// another (not the first); the CPU backend computes in the calling thread, so all of it is host time.
TEST(BatchEngine, StepClockCountsSteps) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto fp = load(dir);
  Fixture& f = *fp;
  BatchEngine e(f.runner, {.num_blocks = 256, .scheduler = {.block_size = 4, .token_budget = 4096}});
  e.add(greedy(f.cases[0].first, 5));
  int64_t ran = 0;
  while (!e.idle()) ran += e.step().empty() ? 0 : 1;
  EXPECT_TRUE(e.step().empty());
  EXPECT_EQ(e.clock().steps, ran);
  EXPECT_EQ(ran, 5);  // the prompt in one step (its first token), then one step per token
  EXPECT_GT(e.clock().seconds, 0);
  EXPECT_EQ(e.clock().host_seconds, e.clock().seconds);
  EXPECT_EQ(e.decode_clock().steps, 4);  // all but the prompt's step
  EXPECT_GT(e.decode_clock().seconds, 0);
  EXPECT_EQ(e.decode_clock().host_seconds, e.decode_clock().seconds);
  // The prompt's step is the first (untimed): the decodes are all of the timed steps.
  EXPECT_DOUBLE_EQ(e.decode_clock().seconds, e.clock().seconds);
  // After a pause the first step is not timed again.
  const double before = e.clock().seconds;
  e.add(greedy(f.cases[0].first, 1));
  while (!e.idle()) e.step();
  EXPECT_EQ(e.clock().steps, ran + 1);
  EXPECT_EQ(e.clock().seconds, before);
}

TEST(BatchEngine, EosEndsARequest) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto fp = load(dir);
  Fixture& f = *fp;
  BatchEngine e(f.runner, {.num_blocks = 256, .scheduler = {.block_size = 4}});
  const auto& [prompt, want] = f.cases.front();
  BatchRequest r = greedy(prompt, 20);
  r.ignore_eos = false;
  r.eos_ids = {want[1]};  // the second greedy token plays EOS
  const RequestId id = e.add(r);
  std::vector<BatchEvent> events;
  while (!e.idle())
    for (const auto& ev : e.step()) events.push_back(ev);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_TRUE(events.back().finished);
  EXPECT_EQ(events.back().reason, FinishReason::kEos);
  EXPECT_EQ(e.generated(id), (std::vector<int32_t>{want[0], want[1]}));
  EXPECT_EQ(e.blocks().num_free(), e.blocks().num_blocks());
}

// Each request's text streams with its tokens (all of it, once), and a stop string, even one that
// spans tokens, ends the request before it (the stop string itself never appears).
TEST(BatchEngine, StreamsTextAndStopsAtStopStrings) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto fp = load(dir);
  Fixture& f = *fp;
  BatchEngine e(f.runner, {.num_blocks = 512, .scheduler = {.block_size = 4, .token_budget = 32}}, &f.tokenizer);
  std::map<RequestId, std::string> text;
  std::map<RequestId, FinishReason> reason;
  const auto run = [&] {
    while (!e.idle())
      for (const auto& ev : e.step()) {
        text[ev.id] += ev.text;
        if (ev.finished) reason[ev.id] = ev.reason;
      }
  };
  std::vector<RequestId> ids;
  for (const auto& [p, w] : f.cases) ids.push_back(e.add(greedy(p, int64_t(w.size()))));
  run();
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(text[ids[i]], f.tokenizer.decode(f.cases[i].second, /*skip_special=*/true)) << i;
    EXPECT_EQ(reason[ids[i]], FinishReason::kLength);
  }
  // A stop string from the middle of the longest text.
  size_t longest = 0;
  for (size_t i = 0; i < ids.size(); ++i)
    if (text[ids[i]].size() > text[ids[longest]].size()) longest = i;
  const std::string full = text[ids[longest]];
  ASSERT_GE(full.size(), 12u);
  const std::string stop = full.substr(full.size() / 2, 4);
  BatchRequest r = greedy(f.cases[longest].first, int64_t(f.cases[longest].second.size()));
  r.stop = {"never appears \x01", stop};
  const RequestId id = e.add(r);
  run();
  EXPECT_EQ(text[id], full.substr(0, full.find(stop)));
  EXPECT_EQ(reason[id], FinishReason::kStop);
  EXPECT_LT(e.generated(id).size(), f.cases[longest].second.size());
  EXPECT_EQ(e.blocks().num_free(), e.blocks().num_blocks());

  BatchEngine no_tok(f.runner, {.num_blocks = 64, .scheduler = {.block_size = 4}});
  r.stop = {"x"};
  EXPECT_THROW(no_tok.add(r), Error);
  r.stop = {""};
  EXPECT_THROW(e.add(r), Error);
}

// n completions of one prompt: the followers wait for the first one's prompt and share its blocks;
// greedy, all n equal the reference; sampled with a seed, the run repeats exactly.
TEST(BatchEngine, NCompletionsShareThePrompt) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto fp = load(dir);
  Fixture& f = *fp;
  const auto& [prompt, want] = f.cases.back();
  BatchEngine e(f.runner, {.num_blocks = 512, .scheduler = {.block_size = 4, .token_budget = 64}});
  const auto ids = e.add(greedy(prompt, int64_t(want.size())), 3);
  ASSERT_EQ(ids.size(), 3u);
  while (!e.idle()) e.step();
  for (RequestId id : ids) EXPECT_EQ(e.generated(id), want) << id;
  EXPECT_EQ(e.cached_tokens(ids[0]), 0);
  for (size_t i = 1; i < ids.size(); ++i) EXPECT_EQ(e.cached_tokens(ids[i]), int64_t((prompt.size() - 1) / 4 * 4));
  EXPECT_EQ(e.blocks().num_free(), e.blocks().num_blocks());

  BatchRequest r = greedy(prompt, 12);
  r.sampler.temperature = 1.0f;
  r.sampler.seed = 42;
  std::vector<std::vector<int32_t>> runs[2];
  for (auto& out : runs) {
    for (RequestId id : e.add(r, 4)) {
      while (!e.idle()) e.step();
      out.push_back(e.generated(id));
    }
  }
  EXPECT_EQ(runs[0], runs[1]);
  EXPECT_THROW(e.add(r, 0), Error);
  EXPECT_THROW(e.add(r, 129), Error);
}

// Log-probabilities of the chosen token and the likeliest ones, from the model's distribution.
TEST(BatchEngine, Logprobs) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto fp = load(dir);
  Fixture& f = *fp;
  BatchEngine e(f.runner, {.num_blocks = 256, .scheduler = {.block_size = 4}});
  BatchRequest r = greedy(f.cases[1].first, 6);
  r.logprobs = 5;
  e.add(r);
  r.logprobs = 0;
  const RequestId plain = e.add(r);
  int events = 0;
  while (!e.idle())
    for (const auto& ev : e.step()) {
      ++events;
      EXPECT_LE(ev.logprob, 0.f);
      if (ev.id == plain) {
        EXPECT_TRUE(ev.top.empty());
        continue;
      }
      ASSERT_EQ(ev.top.size(), 5u);
      EXPECT_EQ(ev.top[0].first, ev.token);  // greedy: the likeliest
      EXPECT_FLOAT_EQ(ev.top[0].second, ev.logprob);
      double mass = 0;
      for (size_t j = 0; j < ev.top.size(); ++j) {
        mass += std::exp(double(ev.top[j].second));
        if (j) {
          EXPECT_LE(ev.top[j].second, ev.top[j - 1].second);
        }
      }
      EXPECT_LE(mass, 1.0 + 1e-5);
    }
  EXPECT_EQ(events, 12);
  r.logprobs = 21;
  EXPECT_THROW(e.add(r), Error);
}

// Prompt logprobs (OpenAI's echo): every prompt token after the first gets -NLL as scoring computes
// it, whether the prompt runs in one forward or in chunks beside other requests, and even when the
// prompt's blocks are already in the prefix cache (such a request computes every position).
TEST(BatchEngine, PromptLogprobsEqualScoring) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto fp = load(dir);
  Fixture& f = *fp;
  const auto& prompt = f.cases[1].first;
  const ScoreResult ref = score(f.runner, prompt);
  for (int64_t budget : {int64_t(3), int64_t(4096)}) {
    BatchEngine e(f.runner, {.num_blocks = 256, .scheduler = {.block_size = 4, .token_budget = budget}});
    e.add(greedy(prompt, 3));  // warms the prefix cache with the same prompt
    while (!e.idle()) e.step();
    BatchRequest r = greedy(prompt, 3);
    r.prompt_logprobs = 3;
    const std::vector<RequestId> ids = e.add(r, 2);
    int with = 0;
    while (!e.idle())
      for (const auto& ev : e.step()) {
        if (ev.prompt_logprobs.empty()) continue;
        ++with;
        EXPECT_EQ(ev.id, ids[0]);
        ASSERT_EQ(ev.prompt_logprobs.size(), prompt.size() - 1);
        for (size_t j = 0; j + 1 < prompt.size(); ++j) {
          const TokenLogprob& t = ev.prompt_logprobs[j];
          EXPECT_EQ(t.token, prompt[j + 1]);
          EXPECT_NEAR(t.logprob, -ref.nll[j], 1e-4) << "position " << j + 1;
          ASSERT_EQ(t.top.size(), 3u);
          EXPECT_GE(t.top[0].second, t.logprob - 1e-6f);
        }
      }
    EXPECT_EQ(with, 1) << "budget " << budget;
    EXPECT_EQ(e.blocks().num_free(), e.blocks().num_blocks());
    e.blocks().audit();
  }
}

// Sampling from the backend's candidates (forward_select, the default) draws exactly what sampling
// the whole logits row does (the path a request asking for logprobs takes), with penalties too.
TEST(BatchEngine, CandidateSamplingEqualsFullRowSampling) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto fp = load(dir);
  Fixture& f = *fp;
  for (const SamplerConfig& sc : {SamplerConfig{.temperature = 0.8f, .seed = 3},
                                  SamplerConfig{.temperature = 1.0f, .top_k = 5, .seed = 4},
                                  SamplerConfig{.temperature = 0.7f, .top_p = 0.9f, .repetition_penalty = 1.3f, .seed = 5},
                                  SamplerConfig{.temperature = 1.2f, .min_p = 0.05f, .presence_penalty = 0.5f,
                                                .frequency_penalty = 0.3f, .seed = 6}}) {
    std::vector<int32_t> out[2];
    for (int full = 0; full < 2; ++full) {
      BatchEngine e(f.runner, {.num_blocks = 256, .scheduler = {.block_size = 4}});
      BatchRequest r = greedy(f.cases[1].first, 16);
      r.sampler = sc;
      r.logprobs = full ? 0 : -1;
      const RequestId id = e.add(r);
      while (!e.idle()) e.step();
      out[full] = e.generated(id);
    }
    EXPECT_EQ(out[0], out[1]) << "temperature " << sc.temperature << " seed " << sc.seed;
    EXPECT_EQ(out[0].size(), 16u);
  }
}

// Mistral's fixture attends through a window of 16 in every layer: its passed blocks go back to the
// pool, a pool far smaller than the prompt runs it, and the tokens still equal transformers'.
TEST(BatchEngine, SlidingWindowRunsInASmallPool) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/mistral");
  auto fp = load(dir);
  Fixture& f = *fp;
  ASSERT_EQ(f.runner.release_window(), 16);
  BatchEngine e(f.runner, {.num_blocks = 16, .scheduler = {.block_size = 4, .token_budget = 24}});  // 64 positions
  std::vector<std::pair<RequestId, size_t>> ids;
  for (size_t i = 0; i < f.cases.size(); ++i)
    ids.emplace_back(e.add(greedy(f.cases[i].first, int64_t(f.cases[i].second.size()))), i);
  int64_t most = 0;
  while (!e.idle()) {
    e.step();
    most = std::max(most, e.blocks().num_used());
  }
  for (const auto& [id, i] : ids) EXPECT_EQ(e.generated(id), f.cases[i].second) << "case " << i;
  EXPECT_LE(most, 16);
  EXPECT_GT(f.cases.back().first.size(), 64u);  // the long prompt alone would need more than the pool
  EXPECT_EQ(e.blocks().num_free(), e.blocks().num_blocks());
  e.blocks().audit();
}

TEST(BatchEngine, BadRequestsAreRefused) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto fp = load(dir);
  Fixture& f = *fp;
  BatchEngine e(f.runner, {.num_blocks = 8, .scheduler = {.block_size = 4}});
  EXPECT_THROW(e.add(greedy({}, 4)), Error);
  EXPECT_THROW(e.add(greedy({-1}, 4)), Error);
  EXPECT_THROW(e.add(greedy({int32_t(f.model->config().vocab_size)}, 4)), Error);
  EXPECT_THROW(e.add(greedy(std::vector<int32_t>(40, 1), 4)), Error);  // 43 positions > 32 in the cache
  std::vector<int32_t> huge(size_t(f.model->config().max_position_embeddings), 1);
  EXPECT_THROW(e.add(greedy(huge, 1)), Error);
  EXPECT_TRUE(e.idle());
}

}  // namespace
}  // namespace lathe::engine
