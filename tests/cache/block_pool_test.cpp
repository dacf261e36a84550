#include "cache/block_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "support/token_run.h"
#include "core/error.h"

namespace lathe::cache {
namespace {

using lathe::testing::token_run;

TEST(BlockPool, AllocatesEveryBlockOnceThenNone) {
  BlockPool pool(5);
  std::set<BlockId> got;
  for (int i = 0; i < 5; ++i) got.insert(*pool.allocate());
  EXPECT_EQ(got.size(), 5u);
  EXPECT_FALSE(pool.allocate().has_value());
  EXPECT_EQ(pool.num_free(), 0);
  pool.audit();
  for (BlockId b : got) pool.release(b);
  EXPECT_EQ(pool.num_free(), 5);
  pool.audit();
}

TEST(BlockPool, AllOrNothingAllocation) {
  BlockPool pool(4);
  auto a = pool.allocate(3);
  ASSERT_TRUE(a);
  EXPECT_FALSE(pool.allocate(2));  // only one left: nothing taken
  EXPECT_EQ(pool.num_free(), 1);
  pool.release(*a);
  pool.audit();
}

// Shared blocks (n > 1, forks) come back only when the last user releases them.
TEST(BlockPool, ReferenceCounts) {
  BlockPool pool(2);
  const BlockId b = *pool.allocate();
  pool.add_ref(b);
  EXPECT_EQ(pool.refs(b), 2);
  pool.release(b);
  EXPECT_EQ(pool.num_free(), 1);
  pool.release(b);
  EXPECT_EQ(pool.num_free(), 2);
  EXPECT_THROW(pool.release(b), Error);  // more releases than references: a bug, caught
  EXPECT_THROW(pool.add_ref(b), Error);  // not in use
  EXPECT_THROW(pool.release(7), Error);  // outside the pool
  pool.audit();
}

// A finished request's prompt is a hit for the next request with the same prefix: same blocks,
// referenced again, none prefilled twice.
TEST(BlockPool, PrefixHitAfterRelease) {
  BlockPool pool(8);
  const auto t = token_run(13);
  const auto keys = block_hashes(t, 4, 0);  // 3 full blocks
  auto blocks = *pool.allocate(4);          // 4 blocks hold 13 tokens
  for (size_t i = 0; i < keys.size(); ++i) EXPECT_TRUE(pool.commit(blocks[i], keys[i]));
  pool.release(blocks);
  EXPECT_EQ(pool.num_free(), 8);
  EXPECT_EQ(pool.num_cached(), 3);

  auto other = token_run(14);
  other[13] = 77;  // same first 12 tokens
  const auto hits = pool.match(block_hashes(other, 4, 0));
  EXPECT_EQ(hits, std::vector<BlockId>(blocks.begin(), blocks.begin() + 3));
  for (BlockId b : hits) EXPECT_EQ(pool.refs(b), 1);
  EXPECT_EQ(pool.num_free(), 5);
  EXPECT_EQ(pool.stats().hits, 3);
  pool.release(hits);
  pool.audit();
}

// Two running requests share a prefix: the second references the first one's blocks.
TEST(BlockPool, ConcurrentSharing) {
  BlockPool pool(6);
  const auto keys = block_hashes(token_run(8), 4, 0);
  auto a = *pool.allocate(2);
  pool.commit(a[0], keys[0]);
  pool.commit(a[1], keys[1]);
  const auto b = pool.match(keys);
  EXPECT_EQ(b, a);
  EXPECT_EQ(pool.refs(a[0]), 2);
  pool.release(a);
  EXPECT_EQ(pool.num_free(), 4);  // still in use by b
  pool.release(b);
  EXPECT_EQ(pool.num_free(), 6);
  pool.audit();
}

// A miss stops the match: later blocks are not reused out of order.
TEST(BlockPool, MatchStopsAtFirstMiss) {
  BlockPool pool(6);
  const auto keys = block_hashes(token_run(12), 4, 0);
  auto a = *pool.allocate(3);
  pool.commit(a[0], keys[0]);
  pool.commit(a[2], keys[2]);  // block 1 never committed (e.g. still being filled)
  EXPECT_EQ(pool.match(keys), std::vector<BlockId>{a[0]});
  EXPECT_EQ(pool.stats().queried, 2);
  pool.release(a[0]);
  pool.release(a);
  pool.audit();
}

// Eviction is least recently released first, and a request's deepest block goes before its prefix.
TEST(BlockPool, LruEvictionDeepestFirst) {
  BlockPool pool(4);
  const auto k1 = block_hashes(token_run(8), 4, 0);       // request 1: 2 blocks
  const auto k2 = block_hashes(token_run(8, 100), 4, 0);  // request 2: 2 other blocks
  auto r1 = *pool.allocate(2), r2 = *pool.allocate(2);
  for (int i = 0; i < 2; ++i) pool.commit(r1[size_t(i)], k1[size_t(i)]), pool.commit(r2[size_t(i)], k2[size_t(i)]);
  pool.release(r1);  // queue: r1[1], r1[0]
  pool.release(r2);  // then r2[1], r2[0]
  EXPECT_EQ(*pool.allocate(), r1[1]);  // request 1's deepest block first
  EXPECT_EQ(pool.stats().evicted, 1);
  EXPECT_EQ(pool.match(k1).size(), 1u);  // its first block is still a hit
  EXPECT_EQ(pool.match(k2).size(), 2u);
  pool.audit();
}

// A key already held by another block is not taken over; the duplicate stays private.
TEST(BlockPool, DuplicateCommitKeepsTheFirst) {
  BlockPool pool(3);
  const auto k = block_hashes(token_run(4), 4, 0)[0];
  const BlockId a = *pool.allocate(), b = *pool.allocate();
  EXPECT_TRUE(pool.commit(a, k));
  EXPECT_FALSE(pool.commit(b, k));
  EXPECT_FALSE(pool.key(b).has_value());
  EXPECT_TRUE(pool.commit(a, k));  // again: no change
  EXPECT_THROW(pool.commit(a, block_hashes(token_run(4, 9), 4, 0)[0]), Error);
  pool.release(b);
  EXPECT_THROW(pool.commit(b, k), Error);  // not in use
  pool.release(a);
  pool.forget_unreferenced();
  EXPECT_EQ(pool.num_cached(), 0);
  EXPECT_TRUE(pool.match(std::span(&k, 1)).empty());
  pool.audit();
}

TEST(BlockPool, BadSizes) {
  EXPECT_THROW(BlockPool(0), Error);
  EXPECT_THROW(BlockPool(-3), Error);
}

// Random sequences of requests (shared prefixes, forks, releases): the invariants hold after every
// step, and once everything is released every block is free again.
TEST(BlockPool, RandomWorkloadKeepsInvariants) {
  std::mt19937 rng(7);
  BlockPool pool(64);
  const int block = 4;
  std::vector<std::vector<BlockId>> live;
  for (int step = 0; step < 3000; ++step) {
    const int op = int(rng() % 3);
    if (op < 2 || live.empty()) {
      // A request: one of 5 system prompts, then its own tokens.
      std::vector<int32_t> t = token_run(12 + int(rng() % 4) * block, int(rng() % 5) * 1000);
      for (int i = 12; i < int(t.size()); ++i) t[size_t(i)] = int32_t(rng() % 50);
      const auto keys = block_hashes(t, block, 0);
      std::vector<BlockId> blocks = pool.match(keys);
      const size_t need = (t.size() + block - 1) / block - blocks.size();
      auto fresh = pool.allocate(int64_t(need));
      if (!fresh) {
        pool.release(blocks);  // no room: give the hits back, as a scheduler would
      } else {
        for (BlockId b : *fresh) {
          const size_t i = blocks.size();
          blocks.push_back(b);
          if (i < keys.size()) pool.commit(b, keys[i]);
        }
        live.push_back(blocks);
        if (rng() % 4 == 0) {  // n = 2: a fork sharing every block
          for (BlockId b : blocks) pool.add_ref(b);
          live.push_back(blocks);
        }
      }
    } else {
      const size_t i = rng() % live.size();
      pool.release(live[i]);
      live.erase(live.begin() + long(i));
    }
    pool.audit();
  }
  for (const auto& l : live) pool.release(l);
  pool.audit();
  EXPECT_EQ(pool.num_free(), 64);
  EXPECT_GT(pool.stats().hits, 0);
  EXPECT_GT(pool.stats().evicted, 0);
}

}  // namespace
}  // namespace lathe::cache
