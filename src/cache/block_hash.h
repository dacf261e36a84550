// Content keys of KV-cache blocks for prefix caching (issue: serving engine; design after vLLM's
// automatic prefix caching, ../shared/docs/prior-art/serving.md 1.1): a full block of `block_size`
// tokens is identified by the hash of its parent block's key, its token ids and an `extra` value
// (the LoRA adapter id, or a per-request cache salt), so equal keys mean equal prefixes up to and
// including the block. 128-bit XXH3: collisions (which would hand a request someone else's K/V)
// are out of reach for any cache size, at well under a microsecond per block.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

namespace lathe::cache {

struct BlockHash {
  uint64_t lo = 0, hi = 0;
  bool operator==(const BlockHash&) const = default;
};

// The parent of a sequence's first block.
inline constexpr BlockHash kRootHash{0x6c61746865ull, 0x70726566697821ull};

BlockHash hash_block(const BlockHash& parent, std::span<const int32_t> tokens, uint64_t extra);

// The keys of every full block of `tokens` (a trailing partial block gets none: only full blocks
// are shared), each chained on the one before, starting from `parent`.
std::vector<BlockHash> block_hashes(std::span<const int32_t> tokens, int64_t block_size, uint64_t extra,
                                    const BlockHash& parent = kRootHash);

struct BlockHashHasher {
  size_t operator()(const BlockHash& h) const noexcept { return size_t(h.lo ^ (h.hi * 0x9e3779b97f4a7c15ull)); }
};

}  // namespace lathe::cache
