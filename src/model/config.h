// A model's hyper-parameters, normalised from a Hugging Face config.json (both the older
// rope_theta/rope_scaling keys and the newer rope_parameters block) plus generation_config.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "ops/ops.h"

namespace lathe::model {

enum class RopeType { kDefault, kLinear, kDynamic, kLlama3, kYarn, kLongRope };
const char* to_string(RopeType t);

// Everything the RoPE variants of transformers' modeling_rope_utils read.
struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  double factor = 1.0;
  bool factor_given = false;  // yarn/longrope derive it from the context ratio when absent
  double partial_rotary_factor = 1.0;
  int64_t original_max_position_embeddings = 0;  // 0: use max_position_embeddings
  double low_freq_factor = 1.0;                   // llama3
  double high_freq_factor = 4.0;                  // llama3
  std::optional<double> beta_fast, beta_slow;     // yarn
  std::optional<double> mscale, mscale_all_dim;   // yarn
  std::optional<double> attention_factor;         // yarn, longrope
  bool truncate = true;                           // yarn
  std::vector<double> short_factor, long_factor;  // longrope
};

// Sampling defaults a model ships in generation_config.json (absent keys stay unset).
struct GenerationDefaults {
  std::optional<bool> do_sample;
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::optional<int64_t> top_k, max_new_tokens;
};

// config.json's quantization_config (absent: unquantized).
struct QuantConfig {
  std::string method;        // "", "exl2" or "gptq"
  double bits = 0;           // exl2: target average bpw; gptq: bits per weight (2, 4, 8)
  int64_t group_size = 0;    // gptq: rows per group (-1: one group; 0: infer from the tensors)
  bool gptq_v2 = false;      // gptq: checkpoint_format "gptq_v2" (zeros stored without the -1 offset)
  int64_t head_bits = 0;     // exl2
};

struct ModelConfig {
  std::string architecture;  // "LlamaForCausalLM", ...
  std::string model_type;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  ops::Activation activation = ops::Activation::kSilu;
  bool attention_bias = false;  // q/k/v/o biases (Llama-style attention_bias)
  bool mlp_bias = false;
  RopeConfig rope;
  std::vector<int64_t> layer_window;  // per layer: 0 = full attention, else sliding window size
  float attn_logit_softcap = 0.f;
  float final_logit_softcap = 0.f;
  float attention_scale = 0.f;  // multiplies q.k; from query_pre_attn_scalar or 1/sqrt(head_dim)
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;
  GenerationDefaults generation;
  QuantConfig quant;
};

// Parses DIR/config.json (and DIR/generation_config.json if present). Errors name the file and key.
ModelConfig load_model_config(const std::filesystem::path& dir);
ModelConfig parse_model_config(const nlohmann::json& config, const nlohmann::json& generation_config,
                               const std::string& where = "config.json");

}  // namespace lathe::model
