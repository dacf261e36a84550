#include "cache/block_hash.h"

#include <gtest/gtest.h>

#include <numeric>
#include <unordered_set>
#include <vector>

#include "support/token_run.h"
#include "core/error.h"

namespace lathe::cache {
namespace {

using lathe::testing::token_run;

// Only full blocks get keys, and a block's key depends on everything before it.
TEST(BlockHash, FullBlocksChained) {
  const auto t = token_run(10);
  const auto h = block_hashes(t, 4, 0);
  ASSERT_EQ(h.size(), 2u);  // tokens 8, 9 form no full block
  EXPECT_EQ(h[0], hash_block(kRootHash, std::span(t).first(4), 0));
  EXPECT_EQ(h[1], hash_block(h[0], std::span(t).subspan(4, 4), 0));
  EXPECT_EQ(block_hashes(t, 4, 0), h);  // deterministic
  EXPECT_TRUE(block_hashes(std::span(t).first(3), 4, 0).empty());
}

// A shared prefix gives shared keys up to the first differing block, and none after it.
TEST(BlockHash, SharedPrefixSharesKeysUntilItDiffers) {
  auto a = token_run(32), b = a;
  b[17] = 999;  // block 4 (tokens 16..19) differs
  const auto ha = block_hashes(a, 4, 0), hb = block_hashes(b, 4, 0);
  for (size_t i = 0; i < ha.size(); ++i) {
    if (i < 4) EXPECT_EQ(ha[i], hb[i]) << i;
    else EXPECT_FALSE(ha[i] == hb[i]) << i;  // later blocks are equal in tokens but not in prefix
  }
}

// The adapter (or cache salt) separates otherwise equal prefixes; so does the block size.
TEST(BlockHash, ExtraAndBlockSizeSeparateKeys) {
  const auto t = token_run(16);
  EXPECT_FALSE(block_hashes(t, 4, 1)[0] == block_hashes(t, 4, 2)[0]);
  EXPECT_FALSE(block_hashes(t, 8, 0)[0] == block_hashes(t, 4, 0)[1]);
  EXPECT_THROW(block_hashes(t, 0, 0), Error);
}

// No collisions among many similar blocks (every single-token change of a 16-token block).
TEST(BlockHash, SimilarBlocksDiffer) {
  std::unordered_set<BlockHash, BlockHashHasher> seen;
  auto t = token_run(16, 100);
  seen.insert(hash_block(kRootHash, t, 0));
  for (size_t i = 0; i < t.size(); ++i)
    for (int32_t v = 0; v < 64; ++v) {
      auto u = t;
      if (u[i] == v) continue;
      u[i] = v;
      seen.insert(hash_block(kRootHash, u, 0));
    }
  EXPECT_EQ(seen.size(), 1u + 16u * 64u);
}

}  // namespace
}  // namespace lathe::cache
