// lathe info -m DIR: what a model folder holds and what running it costs.
#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "commands.h"
#include "model/model.h"

namespace lathe::cli {

void add_info_command(CLI::App& app) {
  struct Opts {
    std::string model;
    int64_t ctx = 0;
    bool json = false;
  };
  auto opts = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("info", "Show a model's architecture, parameter count, dtypes and memory needs");
  cmd->add_option("-m,--model", opts->model, "Hugging Face model folder")->required();
  cmd->add_option("--ctx", opts->ctx, "context length to size the KV cache for (default: the model's maximum)");
  cmd->add_flag("--json", opts->json, "print one JSON object");
  cmd->callback([opts] {
    auto model = model::Model::load(opts->model);
    const auto& c = model->config();
    const auto& L = model->loader();
    const int64_t ctx = opts->ctx > 0 ? opts->ctx : c.max_position_embeddings;
    const size_t kv_per_token = size_t(2 * c.num_layers * c.num_kv_heads * c.head_dim) * sizeof(float);
    const size_t weights = L.weight_bytes();
    // Activations: a few [tokens, max(hidden, intermediate)] buffers plus one row of logits.
    const size_t act = size_t(8 * std::max(c.hidden_size, c.intermediate_size) + c.vocab_size) * sizeof(float) * 512;
    const size_t total = weights + kv_per_token * size_t(ctx) + act;
    int64_t windowed = 0;
    for (auto w : c.layer_window) windowed += w > 0;
    nlohmann::ordered_json j;
    j["architecture"] = c.architecture;
    j["model_type"] = c.model_type;
    j["parameters"] = L.parameter_count();
    j["dtypes"] = L.parameters_by_dtype();
    j["layers"] = c.num_layers;
    j["hidden_size"] = c.hidden_size;
    j["intermediate_size"] = c.intermediate_size;
    j["heads"] = c.num_heads;
    j["kv_heads"] = c.num_kv_heads;
    j["head_dim"] = c.head_dim;
    j["vocab_size"] = c.vocab_size;
    j["max_context"] = c.max_position_embeddings;
    j["rope"] = model::to_string(c.rope.type);
    if (!c.quant.method.empty()) {
      j["quantization"] = c.quant.method;
      j["quant_bits"] = c.quant.bits;
    }
    j["rope_theta"] = c.rope.theta;
    j["sliding_window_layers"] = windowed;
    j["tied_embeddings"] = c.tie_word_embeddings;
    if (c.num_experts) j["experts"] = {{"count", c.num_experts}, {"per_token", c.num_experts_per_tok}};
    j["weight_bytes"] = weights;
    j["kv_cache_bytes_per_token"] = kv_per_token;
    j["memory_bytes"] = total;
    j["memory_context"] = ctx;
    if (opts->json) {
      fmt::print("{}\n", j.dump());
      return;
    }
    auto mib = [](size_t b) { return double(b) / (1024.0 * 1024.0); };
    fmt::print("model         {}\n", opts->model);
    fmt::print("architecture  {} ({})\n", c.architecture, c.model_type);
    fmt::print("parameters    {} ({:.1f} M)\n", L.parameter_count(), double(L.parameter_count()) / 1e6);
    std::string dt;
    for (auto& [name, n] : L.parameters_by_dtype()) dt += fmt::format("{}{}: {}", dt.empty() ? "" : ", ", name, n);
    fmt::print("dtypes        {}\n", dt);
    fmt::print("shape         {} layers, hidden {}, ffn {}, {} heads / {} kv heads of {}, vocab {}\n", c.num_layers,
               c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size);
    if (c.num_experts) fmt::print("experts       {} ({} per token)\n", c.num_experts, c.num_experts_per_tok);
    fmt::print("rope          {} (theta {})\n", model::to_string(c.rope.type), c.rope.theta);
    if (c.quant.method == "exl2")
      fmt::print("quantization  EXL2, {} bpw target{} (dequantized to f16 at load)\n", c.quant.bits,
                 c.quant.head_bits ? fmt::format(", head {} bits", c.quant.head_bits) : std::string());
    else if (c.quant.method == "gptq")
      fmt::print("quantization  GPTQ {}-bit, group {} (dequantized to f16 at load)\n", c.quant.bits, c.quant.group_size);
    fmt::print("context       {} tokens{}\n", c.max_position_embeddings,
               windowed ? fmt::format(", {} sliding-window layers", windowed) : "");
    fmt::print("memory        weights {:.1f} MiB + KV cache {:.1f} MiB at {} tokens (f32; bf16, half, on a GPU in fast precision) + activations ~{:.1f} MiB "
               "= {:.1f} MiB\n",
               mib(weights), mib(kv_per_token * size_t(ctx)), ctx, mib(act), mib(total));
  });
}

}  // namespace lathe::cli
