#include "model/arch.h"

namespace lathe::model {

namespace {
// Sources: each model's modeling_<arch>.py in transformers 5.x.
constexpr ArchSpec kArchs[] = {
    {.hf_name = "LlamaForCausalLM"},
    {.hf_name = "MistralForCausalLM", .window_rule = WindowRule::kAllLayers},
    {.hf_name = "Qwen2ForCausalLM", .qkv_bias = true, .window_rule = WindowRule::kFromMaxWindowLayer},
    {.hf_name = "Qwen3ForCausalLM", .qk_norm = true, .window_rule = WindowRule::kFromMaxWindowLayer},
    {.hf_name = "Gemma2ForCausalLM",
     .norm_layout = NormLayout::kSandwich,
     .norm_weight_offset = 1.f,
     .embed_scale_sqrt_hidden = true,
     .window_rule = WindowRule::kEvenLayers,
     .default_activation = "gelu_pytorch_tanh"},
    {.hf_name = "Phi3ForCausalLM", .fused_qkv = true, .fused_gate_up = true, .window_rule = WindowRule::kAllLayers},
    {.hf_name = "MixtralForCausalLM", .moe = true, .window_rule = WindowRule::kAllLayers},
};
}  // namespace

const ArchSpec* find_arch(std::string_view hf_name) {
  for (const auto& a : kArchs)
    if (a.hf_name == hf_name) return &a;
  return nullptr;
}

std::string supported_architectures() {
  std::string s;
  for (const auto& a : kArchs) {
    if (!s.empty()) s += ", ";
    s += a.hf_name;
  }
  return s;
}

}  // namespace lathe::model
