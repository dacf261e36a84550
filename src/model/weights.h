// A model's weights as views into the memory-mapped safetensors, checked against the config
// (every tensor present with the shape the config implies). Small vectors (biases) are widened
// to float32 once at load, since the op contract takes float32 biases.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
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
  // An EXL2 layer as stored (host memory; its bias inside), for backends that run matmul_exl2 on
  // the packed bits. `w` holds the same layer dequantized, for everything else.
  const ops::Exl2View* exl2 = nullptr;
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
  const ops::Exl2View* lm_head_exl2 = nullptr;  // an EXL2 head as stored (see Linear::exl2)
  std::vector<LayerWeights> layers;
};

class WeightLoader {
 public:
  // Opens the safetensors of `dir` and binds every tensor the architecture needs. With
  // dequantize_exl2 off, EXL2 layers that have a packed view get no float16 copy (Linear::w keeps
  // its shape and dtype with null data): for backends that run every EXL2 matmul from the packed
  // bits. MoE experts are always dequantized (their kernels read float weights).
  WeightLoader(const std::filesystem::path& dir, const ModelConfig& config, const ArchSpec& arch,
               bool dequantize_exl2 = true);
  const ModelWeights& weights() const { return weights_; }
  const io::WeightStore& store() const { return store_; }
  int64_t parameter_count() const;  // all tensors in the files
  std::map<std::string, int64_t> parameters_by_dtype() const;
  size_t weight_bytes() const;

 private:
  ops::Weight bind(const std::string& name, Shape shape);
  Linear bind_linear(const std::string& prefix, int64_t out, int64_t in, bool bias, bool dequantize = true);
  const float* bind_bias(const std::string& name, int64_t n);
  ops::Weight bind_quantized(const std::string& prefix, int64_t out, int64_t in, bool dequantize = true);

  io::WeightStore store_;
  QuantConfig quant_;
  ModelWeights weights_;
  std::vector<Tensor> owned_;  // float32 copies of biases, float16 dequantized quantized layers
  struct Packed;               // an EXL2 layer kept packed, with its kernel tables and view
  std::vector<std::shared_ptr<const Packed>> packed_;
  const ops::Exl2View* last_exl2_ = nullptr;  // set by bind_quantized for the Linear it binds
};

}  // namespace lathe::model
