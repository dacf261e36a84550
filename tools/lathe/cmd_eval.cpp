// lathe eval -m MODEL --base BASE -f FILE [--ctx 512] [--max-windows N] [--json]: a (quantized)
// model against its base on a text file: both perplexities, KL divergence, top-1 agreement, size.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "commands.h"
#include "engine/scoring.h"
#include "io/json_file.h"
#include "model/model.h"

namespace lathe::cli {

void add_eval_command(CLI::App& app) {
  struct Opts {
    std::string model, base, file;
    DeviceOptions device;
    int64_t ctx = 512, max_windows = 0;
    bool json = false;
  };
  auto opts = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("eval", "Compare a model with its base: perplexity, KL divergence, top-1 agreement");
  cmd->add_option("-m,--model", opts->model, "the model to evaluate (e.g. a quantized folder)")->required();
  cmd->add_option("--base", opts->base, "the reference model (e.g. the unquantized original)")->required();
  cmd->add_option("-f,--file", opts->file, "UTF-8 text file")->required();
  cmd->add_option("--ctx", opts->ctx, "window length in tokens")->capture_default_str();
  cmd->add_option("--max-windows", opts->max_windows, "use only the first N windows (0: all)");
  cmd->add_flag("--json", opts->json, "print one JSON object");
  add_backend_option(cmd, opts->device);
  cmd->callback([opts] {
    auto backend = make_backend(opts->device, /*exact_by_default=*/true);
    auto model = model::Model::load(opts->model, model::load_options_for(*backend));
    auto base = model::Model::load(opts->base, model::load_options_for(*backend));
    auto tokenizer = require_tokenizer(opts->base);
    const auto tokens = tokenizer.encode(io::read_text_file(opts->file), /*add_special=*/false);
    model::Runner rb(*base, *backend), rm(*model, *backend);
    ProgressBar bar("eval", int64_t(tokens.size()) / std::max<int64_t>(opts->ctx, 1));
    engine::PerplexityOptions po;
    po.ctx = opts->ctx;
    po.max_windows = opts->max_windows;
    po.progress = [&](int64_t done, int64_t) { bar.update(done); };
    const auto r = engine::compare(rb, rm, tokens, po);
    bar.finish();
    const size_t bytes = model->loader().weight_bytes(), base_bytes = base->loader().weight_bytes();
    if (opts->json) {
      nlohmann::ordered_json j;
      j["model"] = opts->model;
      j["base"] = opts->base;
      j["ppl"] = r.ppl;
      j["ppl_base"] = r.ppl_base;
      j["kld"] = r.kld;
      j["top1_agreement"] = r.top1_agree;
      j["tokens"] = r.tokens;
      j["windows"] = r.windows;
      j["bytes"] = bytes;
      j["base_bytes"] = base_bytes;
      j["seconds"] = r.seconds;
      fmt::print("{}\n", j.dump());
      return;
    }
    fmt::print("ppl {:.4f} vs base {:.4f} ({:+.2f}%), KL divergence {:.5f} nats, top-1 agreement {:.2f}%\n", r.ppl,
               r.ppl_base, 100 * (r.ppl / r.ppl_base - 1), r.kld, 100 * r.top1_agree);
    fmt::print("{} scored tokens in {} windows of {}; weights {:.2f} MB vs base {:.2f} MB; {:.1f} s\n", r.tokens,
               r.windows, opts->ctx, double(bytes) / 1e6, double(base_bytes) / 1e6, r.seconds);
  });
}

}  // namespace lathe::cli
