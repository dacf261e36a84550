// Architectures as data: one table row per Hugging Face architecture, read by the config parser,
// the weight loader and the forward builder. Adding a Llama-like architecture is adding a row.
#pragma once

#include <string>
#include <string_view>

namespace lathe::model {

// Which layers use a sliding window when config.json gives `sliding_window` but no `layer_types`.
enum class WindowRule {
  kNone,                // the architecture has no sliding window
  kAllLayers,           // Mistral, Mixtral, Phi-3: every layer
  kFromMaxWindowLayer,  // Qwen2/Qwen3: layers >= max_window_layers, only when use_sliding_window
  kEvenLayers,          // Gemma 2: layers 0, 2, 4, ... slide; odd layers are global
};

// How a decoder layer normalises around its two blocks.
enum class NormLayout {
  kPre,       // x += attn(norm(x)); x += ffn(norm(x))                       (Llama)
  kSandwich,  // x += norm(attn(norm(x))); x += norm(ffn(norm(x)))            (Gemma 2)
};

struct ArchSpec {
  std::string_view hf_name;
  NormLayout norm_layout = NormLayout::kPre;
  float norm_weight_offset = 0.f;     // Gemma RMSNorm scales by (1 + w)
  bool embed_scale_sqrt_hidden = false;  // Gemma multiplies embeddings by sqrt(hidden_size)
  bool qkv_bias = false;              // q/k/v biases regardless of config (Qwen2)
  bool qk_norm = false;               // per-head RMSNorm on q and k before RoPE (Qwen3)
  bool fused_qkv = false;             // one qkv_proj, rows [q | k | v] (Phi-3)
  bool fused_gate_up = false;         // one gate_up_proj, rows [gate | up] (Phi-3)
  bool moe = false;                   // sparse MoE feed-forward (Mixtral)
  WindowRule window_rule = WindowRule::kNone;
  std::string_view default_activation = "silu";
};

// The row for a config.json "architectures" entry, or null.
const ArchSpec* find_arch(std::string_view hf_name);
// "LlamaForCausalLM, MistralForCausalLM, ..." for error messages.
std::string supported_architectures();

}  // namespace lathe::model
