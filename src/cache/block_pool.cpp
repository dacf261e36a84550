#include "cache/block_pool.h"

#include <algorithm>

#include "core/error.h"

namespace lathe::cache {

BlockPool::BlockPool(int64_t num_blocks) {
  if (num_blocks < 1 || num_blocks > INT32_MAX - 1)
    fail(ErrorKind::kInvalidArgument, "a KV block pool needs 1 to {} blocks, not {}", INT32_MAX - 1, num_blocks);
  ref_.assign(size_t(num_blocks), 0);
  key_.assign(size_t(num_blocks), std::nullopt);
  prev_.assign(size_t(num_blocks) + 1, 0);
  next_.assign(size_t(num_blocks) + 1, 0);
  const BlockId sentinel = BlockId(num_blocks);
  prev_[size_t(sentinel)] = next_[size_t(sentinel)] = sentinel;
  for (BlockId b = 0; b < sentinel; ++b) push_back(b);
}

void BlockPool::check(BlockId block, const char* what) const {
  if (block < 0 || block >= num_blocks())
    fail(ErrorKind::kInternal, "{}: block {} is outside the pool of {}", what, block, num_blocks());
}

void BlockPool::unlink(BlockId b) {
  next_[size_t(prev_[size_t(b)])] = next_[size_t(b)];
  prev_[size_t(next_[size_t(b)])] = prev_[size_t(b)];
  --num_free_;
}

void BlockPool::push_back(BlockId b) {
  const BlockId sentinel = BlockId(num_blocks()), last = prev_[size_t(sentinel)];
  next_[size_t(last)] = b;
  prev_[size_t(b)] = last;
  next_[size_t(b)] = sentinel;
  prev_[size_t(sentinel)] = b;
  ++num_free_;
}

void BlockPool::drop_key(BlockId b) {
  if (!key_[size_t(b)]) return;
  by_hash_.erase(*key_[size_t(b)]);
  key_[size_t(b)].reset();
}

std::optional<BlockId> BlockPool::allocate() {
  if (num_free_ == 0) return std::nullopt;
  const BlockId b = next_[size_t(num_blocks())];
  unlink(b);
  if (key_[size_t(b)]) {
    drop_key(b);
    ++stats_.evicted;
  }
  ref_[size_t(b)] = 1;
  return b;
}

std::optional<std::vector<BlockId>> BlockPool::allocate(int64_t n) {
  if (n < 0) fail(ErrorKind::kInternal, "allocate: {} blocks", n);
  if (n > num_free_) return std::nullopt;
  std::vector<BlockId> out;
  out.reserve(size_t(n));
  for (int64_t i = 0; i < n; ++i) out.push_back(*allocate());
  return out;
}

void BlockPool::add_ref(BlockId b) {
  check(b, "add_ref");
  if (ref_[size_t(b)] == 0) fail(ErrorKind::kInternal, "add_ref: block {} is not in use", b);
  ++ref_[size_t(b)];
}

void BlockPool::release(BlockId b) {
  check(b, "release");
  if (ref_[size_t(b)] == 0) fail(ErrorKind::kInternal, "release: block {} was released more often than referenced", b);
  if (--ref_[size_t(b)] == 0) push_back(b);
}

void BlockPool::release(std::span<const BlockId> blocks) {
  for (size_t i = blocks.size(); i-- > 0;) release(blocks[i]);
}

bool BlockPool::commit(BlockId b, const BlockHash& hash) {
  check(b, "commit");
  if (ref_[size_t(b)] == 0) fail(ErrorKind::kInternal, "commit: block {} is not in use", b);
  if (key_[size_t(b)]) {
    if (*key_[size_t(b)] == hash) return true;
    fail(ErrorKind::kInternal, "commit: block {} already holds another prefix", b);
  }
  if (!by_hash_.try_emplace(hash, b).second) return false;
  key_[size_t(b)] = hash;
  return true;
}

std::vector<BlockId> BlockPool::match(std::span<const BlockHash> hashes) {
  std::vector<BlockId> out;
  for (const BlockHash& h : hashes) {
    ++stats_.queried;
    const auto it = by_hash_.find(h);
    if (it == by_hash_.end()) break;
    const BlockId b = it->second;
    if (ref_[size_t(b)]++ == 0) unlink(b);
    out.push_back(b);
    ++stats_.hits;
  }
  return out;
}

void BlockPool::forget_unreferenced() {
  for (BlockId b = 0; b < num_blocks(); ++b)
    if (ref_[size_t(b)] == 0) drop_key(b);
}

int32_t BlockPool::refs(BlockId b) const {
  check(b, "refs");
  return ref_[size_t(b)];
}

std::optional<BlockHash> BlockPool::key(BlockId b) const {
  check(b, "key");
  return key_[size_t(b)];
}

void BlockPool::audit() const {
  const BlockId sentinel = BlockId(num_blocks());
  std::vector<char> seen(size_t(num_blocks()), 0);
  int64_t count = 0;
  for (BlockId b = next_[size_t(sentinel)], prev = sentinel; b != sentinel; prev = b, b = next_[size_t(b)]) {
    if (b < 0 || b >= sentinel) fail(ErrorKind::kInternal, "block pool audit: free queue holds {}", b);
    if (prev_[size_t(b)] != prev) fail(ErrorKind::kInternal, "block pool audit: free queue links broken at {}", b);
    if (seen[size_t(b)]++) fail(ErrorKind::kInternal, "block pool audit: block {} twice in the free queue", b);
    if (ref_[size_t(b)] != 0) fail(ErrorKind::kInternal, "block pool audit: block {} is free with {} references", b, ref_[size_t(b)]);
    if (++count > num_blocks()) fail(ErrorKind::kInternal, "block pool audit: free queue loops");
  }
  if (count != num_free_) fail(ErrorKind::kInternal, "block pool audit: {} free blocks queued, {} counted", count, num_free_);
  for (BlockId b = 0; b < sentinel; ++b) {
    if (ref_[size_t(b)] < 0) fail(ErrorKind::kInternal, "block pool audit: block {} has {} references", b, ref_[size_t(b)]);
    if (ref_[size_t(b)] == 0 && !seen[size_t(b)]) fail(ErrorKind::kInternal, "block pool audit: unreferenced block {} is lost", b);
    if (key_[size_t(b)]) {
      const auto it = by_hash_.find(*key_[size_t(b)]);
      if (it == by_hash_.end() || it->second != b) fail(ErrorKind::kInternal, "block pool audit: block {}'s key is not mapped to it", b);
    }
  }
  for (const auto& [h, b] : by_hash_)
    if (b < 0 || b >= sentinel || !key_[size_t(b)] || !(*key_[size_t(b)] == h))
      fail(ErrorKind::kInternal, "block pool audit: a key maps to block {} that does not hold it", b);
}

}  // namespace lathe::cache
