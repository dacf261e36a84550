// lathe chat -m DIR: interactive multi-turn chat. Each turn renders the whole conversation with the
// model's chat template; the session's KV cache keeps the previous turns, so only the new part of
// the prompt is prefilled. Lines starting with '/' are commands (/reset, /exit).
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "commands.h"
#include "core/log.h"
#include "engine/generator.h"
#include "model/model.h"
#include "sampling_options.h"
#include "template/chat_template.h"

namespace lathe::cli {

void add_chat_command(CLI::App& app) {
  struct Opts {
    std::string model, system, template_file;
    DeviceOptions device;
    int64_t n = 512, ctx = 0;
    double memory_fraction = 0.9;
    SamplingOptions sampling;
  };
  auto opts = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("chat", "Chat with a model (its chat template applied; multi-turn)");
  cmd->add_option("-m,--model", opts->model, "Hugging Face model folder")->required();
  cmd->add_option("-s,--system", opts->system, "system prompt");
  cmd->add_option("--template", opts->template_file,
                  "Jinja chat template file (default: the model's chat_template.jinja or tokenizer_config.json)");
  cmd->add_option("-n,--max-tokens", opts->n, "most tokens per reply")->capture_default_str();
  cmd->add_option("--ctx,--max-context", opts->ctx,
                  "conversation length limit in tokens; its KV cache is allocated up front (default: the model's "
                  "context, or as much of it as --gpu-memory-fraction allows on a GPU)");
  cmd->add_option("--gpu-memory-fraction", opts->memory_fraction,
                  "share of the GPU memory left free by the weights that the KV cache may take when --ctx is not "
                  "given")
      ->capture_default_str();
  opts->sampling.add_to(cmd);
  add_backend_option(cmd, opts->device);
  cmd->callback([opts] {
    auto backend = make_backend(opts->device, /*exact_by_default=*/false);
    auto model = model::Model::load(opts->model, model::load_options_for(*backend));
    auto tokenizer = require_tokenizer(opts->model);
    const auto tmpl = tmpl::load_chat_template(opts->model, /*want_tools=*/false, opts->template_file);
    const auto& c = model->config();
    engine::GenerateConfig g;
    g.max_new_tokens = opts->n;
    g.sampler = opts->sampling.resolve(c.generation);
    g.eos_ids = c.eos_token_ids;
    if (auto eos = tokenizer.eos_id()) g.eos_ids.push_back(*eos);
    model::Runner runner(*model, *backend);
    engine::Generator gen(runner, &tokenizer);
    // The cache is preallocated: an explicit --ctx must fit (KvPool says what is needed and free);
    // by default the model's context is capped at what the memory fraction holds.
    int64_t ctx = opts->ctx > 0 ? std::min(opts->ctx, c.max_position_embeddings) : c.max_position_embeddings;
    if (opts->ctx <= 0) {
      const int64_t fit = model::KvPool::positions_that_fit(c, *backend, opts->memory_fraction);
      if (fit < ctx) {
        if (fit < 256)
          fail(ErrorKind::kOutOfRange,
               "only {} positions of KV cache fit in {:.0f}% of the free device memory; raise --gpu-memory-fraction "
               "or use a smaller or quantized model",
               fit, 100 * opts->memory_fraction);
        ctx = fit;
        fmt::print(stderr, "lathe chat: context limited to {} tokens by the GPU memory (--gpu-memory-fraction {})\n",
                   ctx, opts->memory_fraction);
      }
    }
    engine::Session session(runner, ctx);
    const bool tty = isatty(STDIN_FILENO) != 0;
    nlohmann::json messages = nlohmann::json::array();
    auto reset = [&] {
      messages = nlohmann::json::array();
      if (!opts->system.empty()) messages.push_back({{"role", "system"}, {"content", opts->system}});
    };
    reset();
    if (tty) fmt::print(stderr, "lathe chat: {} ({}). /reset clears the conversation, /exit or Ctrl-D quits.\n",
                        opts->model, c.architecture);
    std::string line;
    while (true) {
      if (tty) {
        fmt::print("> ");
        std::fflush(stdout);
      }
      if (!std::getline(std::cin, line)) break;
      if (line == "/exit" || line == "/quit") break;
      if (line == "/reset") {
        reset();
        continue;
      }
      if (line.empty()) continue;
      messages.push_back({{"role", "user"}, {"content", line}});
      const std::string prompt_text = tmpl::render_chat(tmpl, messages, /*add_generation_prompt=*/true);
      // The rendered template already holds BOS and the turn markers: add no special tokens again.
      const auto prompt = tokenizer.encode(prompt_text, /*add_special=*/false, /*parse_special=*/true);
      if (int64_t(prompt.size()) + 1 >= ctx) {
        fmt::print(stderr, "lathe chat: the conversation is {} tokens, past the {}-token limit; /reset to start over\n",
                   prompt.size(), ctx);
        messages.erase(messages.end() - 1);
        continue;
      }
      auto r = gen.generate(prompt, g, [](std::string_view piece) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      }, &session);
      fmt::print("\n");
      messages.push_back({{"role", "assistant"}, {"content", r.text}});
      log(LogLevel::kInfo, "chat", "{} prompt tokens ({} reused from cache), {} generated, {:.1f} tok/s", r.prompt_tokens,
          r.reused_tokens, r.ids.size(), r.ids.size() > 1 ? double(r.ids.size() - 1) / r.decode_seconds : 0.0);
    }
  });
}

}  // namespace lathe::cli
