#include "model/kv_cache.h"

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "core/error.h"
#include "ops/kv_quant.h"

namespace lathe::model {

KvPool::KvPool(const ModelConfig& c, int64_t num_blocks, int64_t block_size, ops::Ops& ops,
               std::optional<ops::KvQuant> quant)
    : num_blocks_(num_blocks), block_size_(block_size), row_(c.num_kv_heads * c.head_dim),
      dtype_(ops.kv_dtype(c.head_dim)), quant_(quant.value_or(ops.kv_quant())) {
  if (num_blocks <= 0 || block_size <= 0)
    fail(ErrorKind::kInvalidArgument, "KV cache needs at least one block of at least one position (got {} x {})",
         num_blocks, block_size);
  if (num_blocks * block_size + 1 > (int64_t(1) << 31) - 1)
    fail(ErrorKind::kOutOfRange,
         "KV cache of {} x {} positions is too large (at most 2^31 - 2 positions); lower --ctx (or the number of "
         "sequences)",
         num_blocks, block_size);
  if (quant_ != ops::KvQuant::kNone && !ops.supports_kv_quant(c.head_dim))
    fail(ErrorKind::kUnsupported,
         "a {} K/V cache needs a head size the {} backend's attention reads quantized ({}), and this model's is {}; "
         "use --kv-cache auto",
         ops::kv_quant_name(quant_), ops.name(), ops.host_memory() ? "a multiple of 32" : "64, 128 or 256", c.head_dim);
  static std::atomic<uint64_t> next_id{1};
  id_ = next_id++;
  const int64_t elems = (num_blocks * block_size + 1) * row_;  // (+1: the scratch row)
  const size_t bytes = quant_ != ops::KvQuant::kNone ? ops::kv_code_bytes(quant_, elems) : size_t(elems) * dtype_size(dtype_);
  const size_t scale_bytes = quant_ != ops::KvQuant::kNone ? ops::kv_scale_bytes(elems) : 0;
  // On a device, say what is needed and what is free before allocating anything.
  const ops::MemoryStats mem = ops.memory_stats();
  const size_t need = 2 * size_t(c.num_layers) * (bytes + scale_bytes);
  if (mem.device_total > 0 && need > mem.device_total - mem.device_used)
    fail(ErrorKind::kOutOfRange,
         "the KV cache for {} positions needs {:.2f} GiB of device memory but {:.2f} GiB of {:.2f} GiB are free; "
         "lower --ctx (or the number of sequences)",
         num_blocks * block_size, double(need) / (1 << 30), double(mem.device_total - mem.device_used) / (1 << 30),
         double(mem.device_total) / (1 << 30));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    k_.emplace_back(ops, bytes);
    v_.emplace_back(ops, bytes);
    if (scale_bytes) {
      k_scale_.emplace_back(ops, scale_bytes);
      v_scale_.emplace_back(ops, scale_bytes);
    }
  }
}

size_t KvPool::bytes() const {
  size_t b = 0;
  for (auto& t : k_) b += t.bytes();
  for (auto& t : v_) b += t.bytes();
  for (auto& t : k_scale_) b += t.bytes();
  for (auto& t : v_scale_) b += t.bytes();
  return b;
}

size_t KvPool::block_bytes(const ModelConfig& c, int64_t block_size, DType dtype, ops::KvQuant quant) {
  const int64_t elems = block_size * c.num_kv_heads * c.head_dim;
  const size_t one = quant != ops::KvQuant::kNone ? ops::kv_code_bytes(quant, elems) + ops::kv_scale_bytes(elems)
                                                  : size_t(elems) * dtype_size(dtype);
  return 2 * size_t(c.num_layers) * one;
}

int64_t KvPool::positions_that_fit(const ModelConfig& c, ops::Ops& ops, double fraction) {
  if (!(fraction > 0 && fraction <= 1))
    fail(ErrorKind::kInvalidArgument, "the KV cache memory fraction must be in (0, 1], not {}", fraction);
  const ops::MemoryStats mem = ops.memory_stats();
  if (mem.device_total == 0) return INT64_MAX;
  const double free = double(mem.device_total - std::min(mem.device_used, mem.device_total));
  const double per_position = double(block_bytes(c, 1, ops.kv_dtype(c.head_dim), ops.kv_quant()));
  return int64_t(free * fraction / per_position);
}

KvCache::KvCache(const ModelConfig& c, int64_t capacity, ops::Ops& ops, std::optional<ops::KvQuant> quant)
    : pool_(c, 1, capacity, ops, quant) {
  seq_.blocks = {0};
}

void KvCache::truncate(int64_t n) {
  if (n < 0 || n > seq_.length) fail(ErrorKind::kInternal, "KV cache truncate to {} with length {}", n, seq_.length);
  seq_.length = n;
}

}  // namespace lathe::model
