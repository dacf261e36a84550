// lathe perplexity -m DIR -f FILE [--ctx 512] [--json]: the shared protocol (whole file tokenized in
// one call without BOS, non-overlapping windows, tail dropped, first token of each window unscored).
#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "commands.h"
#include "engine/scoring.h"
#include "io/json_file.h"
#include "model/model.h"

namespace lathe::cli {

void add_perplexity_command(CLI::App& app) {
  struct Opts {
    std::string model, file;
    DeviceOptions device;
    int64_t ctx = 512, max_windows = 0;
    bool json = false;
  };
  auto opts = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("perplexity", "Perplexity of a model on a text file");
  cmd->add_option("-m,--model", opts->model, "Hugging Face model folder")->required();
  cmd->add_option("-f,--file", opts->file, "UTF-8 text file")->required();
  cmd->add_option("--ctx", opts->ctx, "window length in tokens")->capture_default_str();
  cmd->add_option("--max-windows", opts->max_windows, "score only the first N windows (0: all)");
  cmd->add_flag("--json", opts->json, "print {\"ppl\", \"tokens\", \"windows\", ...}");
  add_backend_option(cmd, opts->device);
  cmd->callback([opts] {
    auto backend = make_backend(opts->device, /*exact_by_default=*/true);
    auto model = model::Model::load(opts->model, model::load_options_for(*backend));
    auto tokenizer = require_tokenizer(opts->model);
    const std::string text = io::read_text_file(opts->file);
    const auto tokens = tokenizer.encode(text, /*add_special=*/false);
    ProgressBar bar("perplexity", int64_t(tokens.size()) / std::max<int64_t>(opts->ctx, 1));
    engine::PerplexityOptions po;
    po.ctx = opts->ctx;
    po.max_windows = opts->max_windows;
    po.progress = [&](int64_t done, int64_t) { bar.update(done); };
    model::Runner runner(*model, *backend);
    const auto r = engine::perplexity(runner, tokens, po);
    bar.finish();
    if (opts->json) {
      nlohmann::ordered_json j;
      j["ppl"] = r.ppl;
      j["tokens"] = tokens.size();
      j["windows"] = r.windows;
      j["scored_tokens"] = r.tokens;
      j["mean_nll"] = r.mean_nll;
      j["ctx"] = opts->ctx;
      j["seconds"] = r.seconds;
      fmt::print("{}\n", j.dump());
      return;
    }
    fmt::print("ppl {:.4f}  (mean nll {:.6f}; {} tokens, {} windows of {}, {} scored; {:.1f} s, {:.0f} tok/s)\n", r.ppl,
               r.mean_nll, tokens.size(), r.windows, opts->ctx, r.tokens, r.seconds,
               double(r.windows * opts->ctx) / r.seconds);
  });
}

}  // namespace lathe::cli
