// lathe score -m DIR --ids 0,5,7 --json: per-token NLL and the logits after the last id.
#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "commands.h"
#include "engine/scoring.h"
#include "model/model.h"

namespace lathe::cli {

void add_score_command(CLI::App& app) {
  struct Opts {
    std::string model, ids, prompt;
    DeviceOptions device;
    bool json = false;
  };
  auto opts = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("score", "Score token ids: -log p of each next token and the final logits");
  cmd->add_option("-m,--model", opts->model, "Hugging Face model folder")->required();
  auto* ids = cmd->add_option("--ids", opts->ids, "comma-separated token ids, e.g. 0,5,7");
  auto* text = cmd->add_option("-p,--prompt", opts->prompt, "text to score (tokenized with BOS as the model's tokenizer adds it)");
  ids->excludes(text);
  cmd->add_flag("--json", opts->json, "print {\"nll\": [...], \"last_logits\": [...]}");
  add_backend_option(cmd, opts->device);
  cmd->callback([opts, ids, text] {
    if (!*ids && !*text) fail(ErrorKind::kInvalidArgument, "score needs --ids or -p");
    auto backend = make_backend(opts->device, /*exact_by_default=*/true);
    auto model = model::Model::load(opts->model, model::load_options_for(*backend));
    std::vector<int32_t> tokens;
    if (*ids) tokens = parse_ids(opts->ids);
    else tokens = require_tokenizer(opts->model).encode(opts->prompt, /*add_special=*/true);
    model::Runner runner(*model, *backend);
    const auto r = engine::score(runner, tokens);
    if (opts->json) {
      nlohmann::json j;
      j["nll"] = r.nll;
      j["last_logits"] = r.last_logits;
      fmt::print("{}\n", j.dump());
      return;
    }
    double sum = 0;
    for (double v : r.nll) sum += v;
    fmt::print("tokens   {}\n", tokens.size());
    if (!r.nll.empty()) {
      fmt::print("mean nll {:.6f}\nppl      {:.4f}\n", sum / double(r.nll.size()), std::exp(sum / double(r.nll.size())));
      for (size_t j = 0; j < r.nll.size(); ++j) fmt::print("  {:>5} -> {:>6}  nll {:.6f}\n", j, tokens[j + 1], r.nll[j]);
    }
    const auto top = std::max_element(r.last_logits.begin(), r.last_logits.end()) - r.last_logits.begin();
    fmt::print("next     argmax {} (logit {:.4f})\n", top, r.last_logits[size_t(top)]);
  });
}

}  // namespace lathe::cli
