#include "cache/block_hash.h"

#include <xxhash.h>

#include "core/error.h"

namespace lathe::cache {

BlockHash hash_block(const BlockHash& parent, std::span<const int32_t> tokens, uint64_t extra) {
  XXH3_state_t* state = XXH3_createState();
  if (!state) fail(ErrorKind::kInternal, "out of memory for a hash state");
  XXH3_128bits_reset(state);
  const uint64_t head[3] = {parent.lo, parent.hi, extra};
  XXH3_128bits_update(state, head, sizeof(head));
  // The token count is hashed too: blocks of different sizes never share a key.
  const uint64_t count = tokens.size();
  XXH3_128bits_update(state, &count, sizeof(count));
  XXH3_128bits_update(state, tokens.data(), tokens.size_bytes());
  const XXH128_hash_t h = XXH3_128bits_digest(state);
  XXH3_freeState(state);
  return {h.low64, h.high64};
}

std::vector<BlockHash> block_hashes(std::span<const int32_t> tokens, int64_t block_size, uint64_t extra,
                                    const BlockHash& parent) {
  if (block_size < 1) fail(ErrorKind::kInvalidArgument, "block size {} must be positive", block_size);
  std::vector<BlockHash> out;
  out.reserve(tokens.size() / size_t(block_size));
  BlockHash prev = parent;
  for (size_t at = 0; at + size_t(block_size) <= tokens.size(); at += size_t(block_size)) {
    prev = hash_block(prev, tokens.subspan(at, size_t(block_size)), extra);
    out.push_back(prev);
  }
  return out;
}

}  // namespace lathe::cache
