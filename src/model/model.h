// A loaded causal LM: config + architecture row + weights, and the one forward builder shared by
// every architecture (blocks read the ArchSpec flags; there are no per-architecture branches).
#pragma once

#include <filesystem>
#include <memory>
#include <span>

#include "core/tensor.h"
#include "model/arch.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/weights.h"
#include "ops/ops.h"

namespace lathe::model {

enum class LogitsFor { kLast, kAll, kNone };

// Scratch buffers reused across forward calls (grown on demand, never shrunk).
struct Workspace {
  Tensor x, h, q, k, v, attn, o, gate, up, cos, sin, moe_in, moe_out, router;
  void ensure(Tensor& t, int64_t rows, int64_t cols);
};

class Model {
 public:
  static std::unique_ptr<Model> load(const std::filesystem::path& dir);

  const ModelConfig& config() const { return config_; }
  const ArchSpec& arch() const { return *arch_; }
  const WeightLoader& loader() const { return *loader_; }
  const std::filesystem::path& dir() const { return dir_; }

  // Runs `ids` at positions [cache.length(), cache.length() + n), appends their K/V to the cache,
  // and writes logits into `logits` ([1, vocab] for kLast, [n, vocab] for kAll).
  void forward(ops::Ops& ops, std::span<const int32_t> ids, KvCache& cache, Workspace& ws, LogitsFor which,
               Tensor* logits) const;

 private:
  Model() = default;
  void attention_block(ops::Ops& ops, int64_t layer, int64_t n, KvCache& cache, Workspace& ws) const;
  void ffn_block(ops::Ops& ops, int64_t layer, int64_t n, Workspace& ws) const;
  void moe_block(ops::Ops& ops, int64_t layer, int64_t n, Workspace& ws) const;

  std::filesystem::path dir_;
  ModelConfig config_;
  const ArchSpec* arch_ = nullptr;
  std::unique_ptr<WeightLoader> loader_;
};

}  // namespace lathe::model
