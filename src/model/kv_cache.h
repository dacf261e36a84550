// Contiguous per-sequence KV cache: for each layer, K and V as [capacity, n_kv_heads, head_dim]
// float32, position-major so attention streams keys in order. (The paged cache of the serving
// engine replaces this later; the op contract already takes position-major K/V.)
#pragma once

#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace lathe::model {

class KvCache {
 public:
  KvCache(const ModelConfig& config, int64_t capacity);

  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  // Forget positions >= n (used to rewind after a rejected continuation or to reuse a prefix).
  void truncate(int64_t n);
  void clear() { length_ = 0; }

  float* k(int64_t layer) { return k_[size_t(layer)].as<float>(); }
  float* v(int64_t layer) { return v_[size_t(layer)].as<float>(); }
  int64_t row_size() const { return row_; }  // n_kv_heads * head_dim
  size_t bytes() const;

  // Called by the forward after writing positions [length, length + n).
  void advance(int64_t n) { length_ += n; }

 private:
  int64_t capacity_ = 0;
  int64_t row_ = 0;
  int64_t length_ = 0;
  std::vector<Tensor> k_, v_;
};

}  // namespace lathe::model
