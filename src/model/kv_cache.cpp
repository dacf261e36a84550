#include "model/kv_cache.h"

#include "core/error.h"

namespace lathe::model {

KvCache::KvCache(const ModelConfig& c, int64_t capacity, ops::Ops& ops)
    : capacity_(capacity), row_(c.num_kv_heads * c.head_dim) {
  if (capacity <= 0) fail(ErrorKind::kInvalidArgument, "KV cache capacity must be positive (got {})", capacity);
  const size_t bytes = size_t(capacity * row_) * sizeof(float);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    k_.emplace_back(ops, bytes);
    v_.emplace_back(ops, bytes);
  }
}

void KvCache::truncate(int64_t n) {
  if (n < 0 || n > length_) fail(ErrorKind::kInternal, "KV cache truncate to {} with length {}", n, length_);
  length_ = n;
}

size_t KvCache::bytes() const {
  size_t b = 0;
  for (auto& t : k_) b += t.bytes();
  for (auto& t : v_) b += t.bytes();
  return b;
}

}  // namespace lathe::model
