// A model's weights as views into the memory-mapped safetensors, checked against the config
// (every tensor present with the shape the config implies). Small vectors (biases) are widened
// to float32 once at load, since the op contract takes float32 biases.
#pragma once

#include <filesystem>
#include <map>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"
#include "model/arch.h"
#include "model/config.h"
#include "ops/ops.h"

namespace lathe::model {

struct Linear {
  ops::Weight w;                 // [out, in]
  const float* bias = nullptr;   // [out] float32, or null
};

struct ExpertWeights {
  Linear gate, up, down;
};

struct LayerWeights {
  ops::Weight attn_norm;       // before attention
  ops::Weight attn_post_norm;  // after attention (sandwich layout only)
  ops::Weight ffn_norm;        // before the feed-forward
  ops::Weight ffn_post_norm;   // after the feed-forward (sandwich layout only)
  Linear q, k, v, o;
  ops::Weight q_norm, k_norm;  // [head_dim] (qk_norm only)
  Linear gate, up, down;       // dense feed-forward
  Linear router;               // [num_experts, hidden] (MoE only)
  std::vector<ExpertWeights> experts;
};

struct ModelWeights {
  ops::Weight embed;       // [vocab, hidden]
  ops::Weight final_norm;  // [hidden]
  ops::Weight lm_head;     // [vocab, hidden]; the embedding when tied
  std::vector<LayerWeights> layers;
};

class WeightLoader {
 public:
  // Opens the safetensors of `dir` and binds every tensor the architecture needs.
  WeightLoader(const std::filesystem::path& dir, const ModelConfig& config, const ArchSpec& arch);
  const ModelWeights& weights() const { return weights_; }
  const io::WeightStore& store() const { return store_; }
  int64_t parameter_count() const;  // all tensors in the files
  std::map<std::string, int64_t> parameters_by_dtype() const;
  size_t weight_bytes() const;

 private:
  ops::Weight bind(const std::string& name, Shape shape);
  Linear bind_linear(const std::string& prefix, int64_t out, int64_t in, bool bias);
  const float* bind_bias(const std::string& name, int64_t n);
  ops::Weight bind_quantized(const std::string& prefix, int64_t out, int64_t in);

  io::WeightStore store_;
  QuantConfig quant_;
  ModelWeights weights_;
  std::vector<Tensor> owned_;  // float32 copies of biases, float16 dequantized quantized layers
};

}  // namespace lathe::model
