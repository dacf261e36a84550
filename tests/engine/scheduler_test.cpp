#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>
#include <vector>

#include "core/error.h"
#include "support/token_run.h"

namespace lathe::engine {
namespace {

using cache::BlockPool;

using lathe::testing::token_run;

// What a deterministic "model" samples for request `id` at sequence position `pos`: the same
// whenever and however the position is computed (so recomputation after preemption must agree).
int32_t token_for(RequestId id, int64_t pos) { return int32_t((id * 7919 + pos * 104729) % 50000); }

// Runs one step: checks the plan's invariants, then completes it with token_for.
StepPlan step(Scheduler& s, const BlockPool& pool, int64_t budget, int64_t block_size) {
  StepPlan p = s.plan();
  EXPECT_LE(p.tokens(), budget);
  std::set<RequestId> ids;
  std::vector<int32_t> sampled;
  for (const StepItem& it : p.items) {
    EXPECT_TRUE(ids.insert(it.id).second) << "request " << it.id << " twice in a step";
    EXPECT_GT(it.count, 0);
    EXPECT_EQ(it.start, s.computed(it.id));
    EXPECT_GE(int64_t(s.blocks(it.id).size()) * block_size, it.start + it.count) << "blocks do not cover the chunk";
    sampled.push_back(token_for(it.id, it.start + it.count));
  }
  s.complete(p, sampled);
  pool.audit();
  return p;
}

TEST(Scheduler, ChunkedPrefillThenDecode) {
  BlockPool pool(16);
  Scheduler s(pool, {.block_size = 4, .token_budget = 8});
  const RequestId id = s.add(token_run(20, 0), 3);
  std::vector<int64_t> counts;
  for (int i = 0; i < 6 && s.state(id) != RequestState::kFinished; ++i) counts.push_back(step(s, pool, 8, 4).tokens());
  EXPECT_EQ(counts, (std::vector<int64_t>{8, 8, 4, 1, 1}));  // 20 prompt tokens in chunks, then 2 decodes
  EXPECT_EQ(s.state(id), RequestState::kFinished);
  const auto t = s.tokens(id);
  ASSERT_EQ(t.size(), 23u);
  for (int64_t pos = 20; pos < 23; ++pos) EXPECT_EQ(t[size_t(pos)], token_for(id, pos));
  EXPECT_EQ(pool.num_free(), 16);
}

// Running decodes are planned before a newcomer's prefill, and the newcomer gets what is left.
TEST(Scheduler, DecodesFirstThenNewPrompts) {
  BlockPool pool(32);
  Scheduler s(pool, {.block_size = 4, .token_budget = 10});
  const RequestId a = s.add(token_run(6, 0), 10);
  step(s, pool, 10, 4);  // a's prompt
  const RequestId b = s.add(token_run(30, 100), 2);
  const StepPlan p = step(s, pool, 10, 4);
  ASSERT_EQ(p.items.size(), 2u);
  EXPECT_EQ(p.items[0].id, a);
  EXPECT_EQ(p.items[0].count, 1);
  EXPECT_EQ(p.items[1].id, b);
  EXPECT_EQ(p.items[1].count, 9);
  EXPECT_FALSE(p.items[1].samples);
}

// A repeated prompt starts after its cached full blocks; a fully cached prompt still computes its
// last token.
TEST(Scheduler, PrefixCacheSkipsCachedBlocks) {
  BlockPool pool(32);
  Scheduler s(pool, {.block_size = 4, .token_budget = 64});
  const RequestId a = s.add(token_run(18, 0), 1);
  EXPECT_EQ(step(s, pool, 64, 4).tokens(), 18);
  EXPECT_EQ(s.state(a), RequestState::kFinished);

  auto prompt = token_run(18, 0);
  prompt.push_back(5);
  prompt.push_back(6);  // 20 tokens: the first 16 are a's 4 full blocks
  const RequestId b = s.add(prompt, 1);
  const StepPlan p = step(s, pool, 64, 4);
  ASSERT_EQ(p.items.size(), 1u);
  EXPECT_EQ(p.items[0].start, 16);
  EXPECT_EQ(s.cached_tokens(b), 16);

  const RequestId c = s.add(token_run(16, 0), 1);  // exactly a's 4 blocks: the last token is recomputed
  const StepPlan q = step(s, pool, 64, 4);
  ASSERT_EQ(q.items.size(), 1u);
  EXPECT_EQ(q.items[0].start, 12);
  EXPECT_EQ(q.items[0].count, 4);
  EXPECT_EQ(s.cached_tokens(c), 12);
  EXPECT_GT(pool.stats().hits, 0);

  Scheduler off(pool, {.block_size = 4, .token_budget = 64, .prefix_caching = false});
  off.add(token_run(18, 0), 1);
  EXPECT_EQ(off.plan().items[0].start, 0);
}

// Two requests running together share a prefix as soon as its blocks are full.
TEST(Scheduler, RunningRequestsShareFullBlocks) {
  BlockPool pool(32);
  Scheduler s(pool, {.block_size = 4, .token_budget = 64});
  const RequestId a = s.add(token_run(12, 0), 5);
  step(s, pool, 64, 4);
  const RequestId b = s.add(token_run(12, 0), 5);
  step(s, pool, 64, 4);
  EXPECT_EQ(s.cached_tokens(b), 8);
  EXPECT_EQ(s.blocks(a)[0], s.blocks(b)[0]);
  EXPECT_EQ(pool.refs(s.blocks(a)[0]), 2);
}

// When blocks run out the newest running request is preempted, recomputed later, and its tokens
// come out the same as if it had never been interrupted.
TEST(Scheduler, PreemptionRecomputesAndKeepsTokens) {
  BlockPool pool(6);  // 24 tokens of cache
  Scheduler s(pool, {.block_size = 4, .token_budget = 32});
  const RequestId a = s.add(token_run(8, 0), 12), b = s.add(token_run(8, 500), 12);
  bool preempted = false;
  for (int i = 0; i < 200 && (s.state(a) != RequestState::kFinished || s.state(b) != RequestState::kFinished); ++i)
    preempted |= !step(s, pool, 32, 4).preempted.empty();
  EXPECT_TRUE(preempted);
  EXPECT_GT(s.preemptions(), 0);
  for (RequestId id : {a, b}) {
    ASSERT_EQ(s.state(id), RequestState::kFinished);
    const auto t = s.tokens(id);
    ASSERT_EQ(t.size(), 20u);
    for (int64_t pos = 8; pos < 20; ++pos) EXPECT_EQ(t[size_t(pos)], token_for(id, pos)) << id << " at " << pos;
  }
  EXPECT_EQ(pool.num_free(), 6);
}

// Finishing or cancelling returns every block at once, from any state.
TEST(Scheduler, FinishFreesBlocksAtOnce) {
  BlockPool pool(16);
  Scheduler s(pool, {.block_size = 4, .token_budget = 6});
  const RequestId a = s.add(token_run(20, 0), 4), b = s.add(token_run(5, 0), 4);
  step(s, pool, 6, 4);  // a is mid-prefill, b waits
  EXPECT_GT(pool.num_used(), 0);
  EXPECT_TRUE(s.finish(a));
  EXPECT_TRUE(s.finish(b));
  EXPECT_FALSE(s.finish(a));
  EXPECT_FALSE(s.finish(12345));
  EXPECT_EQ(pool.num_free(), 16);
  EXPECT_EQ(s.num_running() + s.num_waiting(), 0u);
  EXPECT_TRUE(s.forget(a));
  EXPECT_THROW(s.state(a), Error);
  s.complete(StepPlan{{{a, 0, 6, false}}, {}}, std::vector<int32_t>{0});  // a stale plan item is skipped
  pool.audit();
}

// A sliding-window model: blocks every layer's window has passed go back to the pool as the request
// advances (entries -1), so a long request runs in a small pool; the rest of its life is unchanged.
TEST(Scheduler, SlidingWindowReleasesPassedBlocks) {
  BlockPool pool(8);  // 32 positions; the request below has 70
  Scheduler s(pool, {.block_size = 4, .token_budget = 8, .release_window = 6});
  const RequestId id = s.add(token_run(50, 0), 20);
  int64_t most = 0;
  while (s.state(id) != RequestState::kFinished) {
    step(s, pool, 8, 4);
    most = std::max(most, pool.num_used());
    const auto& b = s.blocks(id);
    for (size_t i = 0; i < b.size(); ++i) {
      const bool passed = int64_t(i + 1) * 4 <= s.computed(id) - 6 + 1;
      if (s.state(id) == RequestState::kRunning) {
        EXPECT_EQ(b[i] < 0, passed) << "block " << i << " at " << s.computed(id);
      }
    }
  }
  EXPECT_LE(most, (6 + 8) / 4 + 2);
  const auto t = s.tokens(id);
  ASSERT_EQ(t.size(), 70u);
  for (int64_t pos = 50; pos < 70; ++pos) EXPECT_EQ(t[size_t(pos)], token_for(id, pos));
  EXPECT_EQ(pool.num_free(), 8);
  pool.audit();
}

TEST(Scheduler, BadRequests) {
  BlockPool pool(4);
  Scheduler s(pool, {.block_size = 4});
  EXPECT_THROW(s.add({}, 1), Error);
  EXPECT_THROW(s.add(token_run(3, 0), 0), Error);
  try {
    s.add(token_run(10, 0), 8);  // 17 positions > 16
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kOutOfRange);
    EXPECT_NE(std::string(e.what()).find("16"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(s.add(token_run(10, 0), 7));  // 16 positions fit exactly
  EXPECT_THROW(Scheduler(pool, {.block_size = 0}), Error);
}

// Many requests with shared system prompts, random lengths, random cancellations and a small
// cache: every plan keeps its invariants, every request that ran to the end has the tokens an
// uninterrupted run would have, and at the end every block is free.
TEST(Scheduler, RandomWorkload) {
  std::mt19937 rng(11);
  int64_t generated = 0, preemptions = 0, hits = 0;
  for (int round = 0; round < 4; ++round) {
    const int64_t bs = 1 + round * 5, budget = 16 + round * 20;
    BlockPool pool(120 / bs + 8);
    Scheduler s(pool, {.block_size = bs, .token_budget = budget, .max_running = 6});
    std::map<RequestId, int64_t> prompts;
    std::set<RequestId> cancelled;
    for (int i = 0; i < 400; ++i) {
      if (rng() % 3 == 0 && prompts.size() < 60) {
        auto p = token_run(10 + int(rng() % 30), int(rng() % 3) * 1000);
        for (size_t k = 8; k < p.size(); ++k) p[k] = int32_t(rng() % 100);
        const int64_t max_new = 1 + int64_t(rng() % 20);
        if ((int64_t(p.size()) + max_new + bs - 1) / bs > pool.num_blocks()) continue;
        prompts[s.add(p, max_new)] = int64_t(p.size());
      }
      if (rng() % 17 == 0 && !prompts.empty()) {
        auto it = prompts.begin();
        std::advance(it, long(rng() % prompts.size()));
        if (s.finish(it->first)) cancelled.insert(it->first);
      }
      step(s, pool, budget, bs);
    }
    for (int i = 0; i < 2000 && s.num_running() + s.num_waiting() > 0; ++i) step(s, pool, budget, bs);
    EXPECT_EQ(s.num_running() + s.num_waiting(), 0u);
    for (const auto& [id, plen] : prompts) {
      if (cancelled.count(id)) continue;
      const auto t = s.tokens(id);
      for (int64_t pos = plen; pos < int64_t(t.size()); ++pos) ASSERT_EQ(t[size_t(pos)], token_for(id, pos)) << id;
      generated += int64_t(t.size()) - plen;
    }
    EXPECT_EQ(pool.num_free(), pool.num_blocks());
    pool.audit();
    preemptions += s.preemptions();
    hits += pool.stats().hits;
  }
  // The workload did exercise what it is for.
  EXPECT_GT(generated, 500);
  EXPECT_GT(preemptions, 0);
  EXPECT_GT(hits, 0);
}

}  // namespace
}  // namespace lathe::engine
