// Contiguous per-sequence KV cache in backend memory: for each layer, K and V as
// [capacity, n_kv_heads, head_dim] float32, position-major so attention streams keys in order.
// (The paged cache of the serving engine replaces this later; the op contract already takes
// position-major K/V.)
#pragma once

#include <vector>

#include "model/config.h"
#include "ops/ops.h"

namespace lathe::model {

class KvCache {
 public:
  KvCache(const ModelConfig& config, int64_t capacity, ops::Ops& ops);

  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  // Forget positions >= n (to rewind, or to reuse a common prefix).
  void truncate(int64_t n);
  void clear() { length_ = 0; }

  float* k(int64_t layer) { return k_[size_t(layer)].f32(); }
  float* v(int64_t layer) { return v_[size_t(layer)].f32(); }
  int64_t row_size() const { return row_; }  // n_kv_heads * head_dim
  size_t bytes() const;

  // Called by the forward after writing positions [length, length + n).
  void advance(int64_t n) { length_ += n; }

 private:
  int64_t capacity_ = 0;
  int64_t row_ = 0;
  int64_t length_ = 0;
  std::vector<ops::Buffer> k_, v_;
};

}  // namespace lathe::model
