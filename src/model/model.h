// A loaded causal LM (config + architecture row + weights in host memory), and the Runner that
// binds it to a backend and runs the one forward shared by every architecture (blocks read the
// ArchSpec flags; there are no per-architecture branches).
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

class Model {
 public:
  static std::unique_ptr<Model> load(const std::filesystem::path& dir);

  const ModelConfig& config() const { return config_; }
  const ArchSpec& arch() const { return *arch_; }
  const WeightLoader& loader() const { return *loader_; }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  Model() = default;
  std::filesystem::path dir_;
  ModelConfig config_;
  const ArchSpec* arch_ = nullptr;
  std::unique_ptr<WeightLoader> loader_;
};

// Scratch buffers in backend memory, reused across forward calls (grown on demand, never shrunk).
class Workspace {
 public:
  explicit Workspace(ops::Ops& ops) : ops_(&ops) {}
  float* get(ops::Buffer& b, int64_t rows, int64_t cols);

  ops::Buffer x, h, q, attn, o, gate, up, cos, sin, ids, router, moe_in, moe_out, moe_idx, moe_w, logits;

 private:
  ops::Ops* ops_;
};

class Runner {
 public:
  // Binds the model to a backend; a device backend gets its own copy of the weights here.
  Runner(const Model& model, ops::Ops& ops);

  const Model& model() const { return model_; }
  const ModelConfig& config() const { return model_.config(); }
  ops::Ops& ops() const { return ops_; }

  // Runs `ids` at positions [cache.length(), cache.length() + n), appends their K/V to the cache,
  // and writes logits to the host tensor `logits` ([1, vocab] for kLast, [n, vocab] for kAll).
  void forward(std::span<const int32_t> ids, KvCache& cache, Workspace& ws, LogitsFor which, Tensor* logits) const;

 private:
  void attention_block(int64_t layer, int64_t n, KvCache& cache, Workspace& ws) const;
  void ffn_block(int64_t layer, int64_t n, Workspace& ws) const;
  void moe_block(int64_t layer, int64_t n, Workspace& ws) const;
  void upload_weights();

  const Model& model_;
  ops::Ops& ops_;
  const ModelWeights* w_ = nullptr;  // host weights, or device_weights_
  ModelWeights device_weights_;
  std::vector<ops::Buffer> owned_;
};

}  // namespace lathe::model
