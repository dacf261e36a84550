// Overlap (BatchEngineOptions::overlap): step k+1 is launched before step k's text work. On the CPU
// backend the launch computes the step, so these tests check the bookkeeping, not the speed:
// every request's events are the same as without overlap (a stop string's extra token dropped),
// requests cancelled or ended while a step is in flight give every block back, and a step that
// needs whole logits rows, planned while others overlap, still runs.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/batch_engine.h"
#include "engine/fixture_model.h"
#include "test_paths.h"

namespace lathe::engine {
namespace {

using testing::FixtureModel;
using testing::greedy;

std::vector<std::vector<int32_t>> prompts(const FixtureModel& f) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& cs : f.golden["cases"]) out.push_back(cs["ids"].get<std::vector<int32_t>>());
  if (out.size() < 2) throw Error(ErrorKind::kFormat, "golden.json has fewer than 2 cases");
  return out;
}

// What one request saw: its tokens and text as events gave them, and how it ended.
struct Seen {
  std::vector<int32_t> tokens;
  std::string text;
  int finished = 0;
  FinishReason reason = FinishReason::kLength;
  std::vector<int32_t> generated;
  int with_logprobs = 0;
};

// A mix of requests, each kind in its own way sensitive to a step's bookkeeping: greedy; sampled
// with a seed and penalties; n = 2; a stop string; an EOS; logprobs and a logit bias (whole rows,
// so a planned step is held while others overlap); a short one that ends by its limit.
std::vector<BatchRequest> mix(const FixtureModel& f, const std::string& stop, int32_t eos) {
  const auto p = prompts(f);
  std::vector<BatchRequest> out;
  for (const auto& prompt : p) out.push_back(greedy(prompt, 12));
  BatchRequest r = greedy(p[0], 14);
  r.sampler = {.temperature = 0.9f, .top_p = 0.95f, .repetition_penalty = 1.2f, .frequency_penalty = 0.2f, .seed = 7};
  out.push_back(r);
  r = greedy(p[1], 10);
  r.stop = {stop};
  out.push_back(r);
  r = greedy(p[1], 20);
  r.ignore_eos = false;
  r.eos_ids = {eos};
  out.push_back(r);
  r = greedy(p[0], 6);
  r.logprobs = 2;
  out.push_back(r);
  r = greedy(p.back(), 5);
  r.sampler.logit_bias = {{eos, -5.f}};
  out.push_back(r);
  out.push_back(greedy(p.back(), 1));
  return out;
}

std::map<RequestId, Seen> run(FixtureModel& f, bool overlap, const std::vector<BatchRequest>& requests, int64_t budget) {
  BatchEngine e(f.runner, {.num_blocks = 512, .scheduler = {.block_size = 4, .token_budget = budget}, .overlap = overlap},
                &f.tokenizer);
  EXPECT_EQ(e.overlaps(), overlap);
  std::map<RequestId, Seen> seen;
  std::vector<RequestId> ids;
  for (const BatchRequest& r : requests) ids.push_back(e.add(r));
  BatchRequest n2 = requests.front();
  n2.sampler = {.temperature = 1.0f, .top_k = 8, .seed = 11};
  for (RequestId id : e.add(n2, 2)) ids.push_back(id);
  for (int s = 0; s < 1000 && !e.idle(); ++s)
    for (const BatchEvent& ev : e.step()) {
      Seen& x = seen[ev.id];
      if (ev.token >= 0) x.tokens.push_back(ev.token);
      x.text += ev.text;
      x.with_logprobs += ev.top.empty() ? 0 : 1;
      if (ev.finished) ++x.finished, x.reason = ev.reason;
    }
  EXPECT_TRUE(e.idle());
  for (RequestId id : ids) seen[id].generated = e.generated(id);
  EXPECT_EQ(e.blocks().num_free(), e.blocks().num_blocks());
  e.blocks().audit();
  return seen;
}

TEST(BatchEngineOverlap, SameEventsAsWithout) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  FixtureModel f(dir);
  // The stop string and the EOS come from a plain greedy run of the second prompt.
  BatchEngine probe(f.runner, {.num_blocks = 256, .scheduler = {.block_size = 4}}, &f.tokenizer);
  const RequestId pid = probe.add(greedy(prompts(f)[1], 10));
  std::string text;
  while (!probe.idle())
    for (const auto& ev : probe.step()) text += ev.text;
  const std::vector<int32_t> want = probe.generated(pid);
  ASSERT_GE(text.size(), 8u);
  const std::string stop = text.substr(text.size() / 2, 3);
  const auto requests = mix(f, stop, want[3]);

  for (int64_t budget : {int64_t(7), int64_t(4096)}) {
    const auto a = run(f, false, requests, budget);
    const auto b = run(f, true, requests, budget);
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [id, x] : a) {
      const Seen& y = b.at(id);
      EXPECT_EQ(x.tokens, y.tokens) << "request " << id << " budget " << budget;
      EXPECT_EQ(x.generated, y.generated) << id;
      EXPECT_EQ(x.tokens, x.generated) << id;  // nothing extra kept, nothing unreported
      EXPECT_EQ(x.text, y.text) << id;
      EXPECT_EQ(x.finished, 1) << id;
      EXPECT_EQ(y.finished, 1) << id;
      EXPECT_EQ(x.reason, y.reason) << id;
      EXPECT_EQ(x.with_logprobs, y.with_logprobs) << id;
    }
    // The mix did what it is for: a stop string, an EOS and a limit each ended a request.
    std::map<FinishReason, int> reasons;
    for (const auto& [id, x] : b) ++reasons[x.reason];
    EXPECT_GE(reasons[FinishReason::kStop], 1);
    EXPECT_GE(reasons[FinishReason::kEos], 1);
    EXPECT_GE(reasons[FinishReason::kLength], 1);
  }
}

// Cancelling while a step is in flight: the cancelled request's row is dropped when the step is
// collected, the others go on unchanged, and when all are cancelled mid-flight the engine is busy
// until one more step() collects the orphaned step, then idle with every block back.
TEST(BatchEngineOverlap, CancelWhileAStepIsInFlight) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  FixtureModel f(dir);
  const auto p = prompts(f);
  std::vector<std::vector<int32_t>> want;
  for (const auto& cs : f.golden["cases"]) want.push_back(cs["greedy_ids"].get<std::vector<int32_t>>());
  BatchEngine e(f.runner, {.num_blocks = 256, .scheduler = {.block_size = 4}, .overlap = true});
  std::vector<RequestId> ids;
  for (size_t i = 0; i < p.size(); ++i) ids.push_back(e.add(greedy(p[i], int64_t(want[i].size()))));
  const RequestId victim = e.add(greedy(p[0], 30));
  for (int s = 0; s < 3; ++s) e.step();
  const size_t had = e.generated(victim).size();
  EXPECT_TRUE(e.cancel(victim));
  while (!e.idle())
    for (const auto& ev : e.step()) EXPECT_NE(ev.id, victim);
  EXPECT_EQ(e.generated(victim).size(), had);
  for (size_t i = 0; i < p.size(); ++i) EXPECT_EQ(e.generated(ids[i]), want[i]) << i;
  EXPECT_EQ(e.blocks().num_free(), e.blocks().num_blocks());

  std::vector<RequestId> more;
  for (const auto& prompt : p) more.push_back(e.add(greedy(prompt, 20)));
  e.step();
  e.step();
  for (RequestId id : more) EXPECT_TRUE(e.cancel(id));
  EXPECT_FALSE(e.idle());  // the step launched for them is still to be collected
  EXPECT_TRUE(e.step().empty());
  EXPECT_TRUE(e.idle());
  EXPECT_EQ(e.blocks().num_free(), e.blocks().num_blocks());
  e.blocks().audit();
}

}  // namespace
}  // namespace lathe::engine
