// The KV cache's block bookkeeping (issue: serving engine): which of a pool's blocks are in use and
// by how many sequences (blocks are shared by reference count: prompts that share a prefix, n > 1
// completions of one prompt), and which hold a known prefix so a later request can take them
// instead of prefilling again. The K/V memory itself is model::KvPool's; this class owns no
// memory and does no I/O, so the scheduler can plan a step with it before any kernel runs.
//
// Design after vLLM's prefix caching (../shared/docs/prior-art/serving.md 1.1): a block with no
// reference stays in a free queue with its key until it is handed out again, so a finished
// request's blocks remain hits until memory is actually needed; the queue is least recently freed
// first (LRU eviction). A sequence's blocks are released deepest first, so its most specific
// blocks are evicted before the shared prefix they hang from.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "cache/block_hash.h"

namespace lathe::cache {

using BlockId = int32_t;

class BlockPool {
 public:
  explicit BlockPool(int64_t num_blocks);

  int64_t num_blocks() const { return int64_t(ref_.size()); }
  int64_t num_free() const { return num_free_; }  // blocks no sequence references (cached or not)
  int64_t num_used() const { return num_blocks() - num_free_; }
  int64_t num_cached() const { return int64_t(by_hash_.size()); }  // blocks holding a prefix key

  // A block no sequence references, now referenced once: the least recently released first. If it
  // held a prefix key, the key is forgotten (evicted). Empty when every block is in use.
  std::optional<BlockId> allocate();
  // n blocks, or none at all (nothing changes) when fewer than n are free.
  std::optional<std::vector<BlockId>> allocate(int64_t n);
  // One more sequence uses the block (it must be in use).
  void add_ref(BlockId block);
  // One sequence less; at none the block joins the free queue's tail, keeping its key.
  void release(BlockId block);
  // A sequence's blocks, last first (its deepest blocks are then evicted first).
  void release(std::span<const BlockId> blocks);

  // Records that `block` (in use, full) holds the prefix whose last block's key is `hash`. False,
  // and nothing changes, when another block already holds that key (the caller keeps its copy
  // unshared). A block's key is set once.
  bool commit(BlockId block, const BlockHash& hash);
  // The longest run of blocks holding hashes[0], hashes[1], ... in order, each now referenced once
  // more (taken back from the free queue when no sequence had it).
  std::vector<BlockId> match(std::span<const BlockHash> hashes);
  // Forgets the keys of every block no sequence references (e.g. when the model or adapter changes).
  void forget_unreferenced();

  int32_t refs(BlockId block) const;
  std::optional<BlockHash> key(BlockId block) const;

  struct Stats {
    int64_t queried = 0;  // blocks looked up by match (stops at the first miss: that one counts)
    int64_t hits = 0;     // blocks match returned
    int64_t evicted = 0;  // keys forgotten because their block was handed out again
  };
  const Stats& stats() const { return stats_; }

  // Checks every invariant (the free queue holds exactly the unreferenced blocks, once each, and the
  // key map and the blocks' keys agree); throws ErrorKind::kInternal naming what is broken.
  void audit() const;

 private:
  void check(BlockId block, const char* what) const;
  void unlink(BlockId block);       // from the free queue
  void push_back(BlockId block);    // to the free queue's tail
  void drop_key(BlockId block);

  std::vector<int32_t> ref_;
  std::vector<BlockId> prev_, next_;  // free queue, a ring through the sentinel num_blocks()
  std::vector<std::optional<BlockHash>> key_;
  std::unordered_map<BlockHash, BlockId, BlockHashHasher> by_hash_;
  int64_t num_free_ = 0;
  Stats stats_;
};

}  // namespace lathe::cache
