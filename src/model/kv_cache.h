// K/V storage in backend memory. A KvPool holds fixed-size blocks of positions for every layer; a
// sequence (SeqKv) owns a list of blocks, so many sequences share one pool without reserving their
// whole context up front (the serving engine's paged cache), and the attention op finds position j
// of a sequence through its block table. KvCache is the one-sequence case used by generate, score
// and chat: a pool of one block as long as the context, so its rows are contiguous.
//
// Layout: for each layer, K and V as [num_blocks * block_size, n_kv_heads, head_dim] of the
// backend's kv_dtype (float32 on the CPU and in CUDA exact mode, bfloat16 in CUDA fast mode: half the
// bytes for decode attention to stream and for prefill tiles to pull through L2), position-major
// inside a block so attention streams keys in order. With a quantized cache (Ops::kv_quant,
// --kv-cache q8|q4) K and V hold codes of that layout and k_scale/v_scale their float16 group
// scales (ops.h KvQuant).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "model/config.h"
#include "ops/ops.h"

namespace lathe::model {

class KvPool {
 public:
  // quant: the cache format, by default the backend's (Ops::kv_quant).
  KvPool(const ModelConfig& config, int64_t num_blocks, int64_t block_size, ops::Ops& ops,
         std::optional<ops::KvQuant> quant = std::nullopt);

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t row_size() const { return row_; }  // n_kv_heads * head_dim
  // One more row past the blocks that no sequence owns: where the padding sequences of a
  // bucketed decode step (Runner::set_decode_buckets) write their K/V.
  int64_t scratch_slot() const { return num_blocks_ * block_size_; }
  void* k(int64_t layer) const { return k_[size_t(layer)].data(); }
  void* v(int64_t layer) const { return v_[size_t(layer)].data(); }
  DType dtype() const { return dtype_; }  // of unquantized caches
  ops::KvQuant quant() const { return quant_; }
  uint16_t* k_scale(int64_t layer) const { return scale_ptr(k_scale_, layer); }  // null unless quantized
  uint16_t* v_scale(int64_t layer) const { return scale_ptr(v_scale_, layer); }
  size_t bytes() const;
  // Distinct for every pool made in this process (recorded graphs remember which pool they read).
  uint64_t id() const { return id_; }
  // Bytes one block takes over all layers (K and V).
  static size_t block_bytes(const ModelConfig& config, int64_t block_size, DType dtype = DType::kF32,
                            ops::KvQuant quant = ops::KvQuant::kNone);
  // Positions whose K/V (in the backend's kv_dtype or kv_quant) fit in `fraction` of the device
  // memory free now (call after the weights are loaded); INT64_MAX on a host backend.
  static int64_t positions_that_fit(const ModelConfig& config, ops::Ops& ops, double fraction);

 private:
  int64_t num_blocks_ = 0, block_size_ = 0, row_ = 0;
  uint64_t id_ = 0;
  static uint16_t* scale_ptr(const std::vector<ops::Buffer>& s, int64_t layer) {
    return s.empty() ? nullptr : static_cast<uint16_t*>(s[size_t(layer)].data());
  }
  DType dtype_ = DType::kF32;
  ops::KvQuant quant_ = ops::KvQuant::kNone;
  std::vector<ops::Buffer> k_, v_, k_scale_, v_scale_;
};

// A block table entry whose block went back to the pool because every layer's sliding window has
// moved past it (Runner::release_window); the forward never reads it.
inline constexpr int32_t kReleasedBlock = -1;

// One sequence's positions in a pool: position p is slot p % block_size of block blocks[p / block_size].
struct SeqKv {
  std::vector<int32_t> blocks;
  int64_t length = 0;  // positions filled
  int64_t capacity(int64_t block_size) const { return int64_t(blocks.size()) * block_size; }
};

class KvCache {
 public:
  KvCache(const ModelConfig& config, int64_t capacity, ops::Ops& ops, std::optional<ops::KvQuant> quant = std::nullopt);

  int64_t length() const { return seq_.length; }
  int64_t capacity() const { return pool_.block_size(); }
  // Forget positions >= n (to rewind, or to reuse a common prefix).
  void truncate(int64_t n);
  void clear() { seq_.length = 0; }
  size_t bytes() const { return pool_.bytes(); }

  KvPool& pool() { return pool_; }
  SeqKv& seq() { return seq_; }

 private:
  KvPool pool_;
  SeqKv seq_;
};

}  // namespace lathe::model
