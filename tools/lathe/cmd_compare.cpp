// lathe compare --base BASE -f FILE MODEL [MODEL ...] [--ctx 512] [--max-windows N] [--decode 64] [--json]:
// one side-by-side table for several variants of one model (e.g. quantizations at several bpw):
// size on disk, average bits per weight, perplexity, KL divergence and top-1 agreement against the
// base, and decode tokens/s on the chosen device.
#include <chrono>
#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "commands.h"
#include "engine/scoring.h"
#include "io/json_file.h"
#include "model/model.h"

namespace lathe::cli {

namespace {
// Greedy-free decode rate: `n` single-token steps after a short prompt, logits to the host.
double decode_rate(const model::Runner& runner, int64_t n) {
  const auto& c = runner.config();
  model::KvCache cache(c, n + 8, runner.ops());
  model::Workspace ws(runner.ops());
  Tensor logits;
  std::vector<int32_t> ids(8);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7919 + 13) % size_t(c.vocab_size));
  runner.forward(ids, cache, ws, model::LogitsFor::kLast, &logits);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < n; ++i) {
    const int32_t t = int32_t((i * 104729 + 1) % c.vocab_size);
    runner.forward(std::span<const int32_t>(&t, 1), cache, ws, model::LogitsFor::kLast, &logits);
  }
  return double(n) / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
// Storage per weight of the linear layers (decoder + a separately stored head), from the files:
// all bytes but the embedding's and the norms', over the linear layers' parameter count.
double linear_bpw(const model::Model& m) {
  const auto& store = m.loader().store();
  size_t other = 0;
  for (const std::string& name : store.names())
    if (name == "model.embed_tokens.weight" || name.find("norm.weight") != std::string::npos)
      other += store.find(name)->nbytes();
  double params = 0;
  for (const auto& L : m.loader().weights().layers)
    for (const model::Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
      params += double(l->w.rows) * double(l->w.cols);
  if (store.contains("lm_head.weight") || store.contains("lm_head.q_weight"))
    params += double(m.config().vocab_size) * double(m.config().hidden_size);
  return params > 0 ? 8.0 * double(m.loader().weight_bytes() - other) / params : 0.0;
}
}  // namespace

void add_compare_command(CLI::App& app) {
  struct Opts {
    std::vector<std::string> models;
    std::string base, file;
    DeviceOptions device;
    int64_t ctx = 512, max_windows = 0, decode = 64;
    bool json = false;
  };
  auto opts = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("compare", "Side-by-side table of several variants of one model against its base");
  cmd->add_option("models", opts->models, "model folders to compare (e.g. quantizations)")->required();
  cmd->add_option("--base", opts->base, "the reference model")->required();
  cmd->add_option("-f,--file", opts->file, "UTF-8 text file for perplexity and divergence")->required();
  cmd->add_option("--ctx", opts->ctx, "window length in tokens")->capture_default_str();
  cmd->add_option("--max-windows", opts->max_windows, "use only the first N windows (0: all)");
  cmd->add_option("--decode", opts->decode, "decode steps timed per model (0: skip)")->capture_default_str();
  cmd->add_flag("--json", opts->json, "print a JSON array");
  add_backend_option(cmd, opts->device);
  cmd->callback([opts] {
    auto backend = make_backend(opts->device, /*exact_by_default=*/true);
    auto base = model::Model::load(opts->base, model::load_options_for(*backend));
    auto tokenizer = require_tokenizer(opts->base);
    const auto tokens = tokenizer.encode(io::read_text_file(opts->file), /*add_special=*/false);
    model::Runner rb(*base, *backend);
    engine::PerplexityOptions po;
    po.ctx = opts->ctx;
    po.max_windows = opts->max_windows;
    nlohmann::ordered_json rows = nlohmann::ordered_json::array();
    auto add_row = [&](const std::string& name, const model::Model& m, const engine::CompareResult& r,
                       const model::Runner& runner, bool is_base) {
      nlohmann::ordered_json j;
      j["model"] = name;
      j["bytes"] = m.loader().weight_bytes();
      j["bpw"] = linear_bpw(m);
      j["ppl"] = is_base ? r.ppl_base : r.ppl;
      j["kld"] = is_base ? 0.0 : r.kld;
      j["top1_agreement"] = is_base ? 1.0 : r.top1_agree;
      j["decode_tok_s"] = opts->decode > 0 ? decode_rate(runner, opts->decode) : 0.0;
      rows.push_back(j);
    };
    engine::CompareResult first{};
    for (size_t i = 0; i < opts->models.size(); ++i) {
      auto m = model::Model::load(opts->models[i], model::load_options_for(*backend));
      model::Runner rm(*m, *backend);
      ProgressBar bar(opts->models[i], int64_t(tokens.size()) / std::max<int64_t>(opts->ctx, 1));
      po.progress = [&](int64_t done, int64_t) { bar.update(done); };
      const auto r = engine::compare(rb, rm, tokens, po);
      bar.finish();
      if (i == 0) {
        first = r;
        add_row(opts->base + " (base)", *base, r, rb, true);
      }
      add_row(opts->models[i], *m, r, rm, false);
    }
    if (opts->json) {
      fmt::print("{}\n", rows.dump());
      return;
    }
    fmt::print("| model | size (MB) | bpw (linear layers) | ppl | KLD | top-1 agree | decode tok/s |\n|---|---|---|---|---|---|---|\n");
    for (const auto& j : rows)
      fmt::print("| {} | {:.2f} | {:.2f} | {:.4f} | {:.5f} | {:.2f}% | {:.1f} |\n", j["model"].get<std::string>(),
                 double(j["bytes"].get<size_t>()) / 1e6, j["bpw"].get<double>(), j["ppl"].get<double>(),
                 j["kld"].get<double>(), 100 * j["top1_agreement"].get<double>(), j["decode_tok_s"].get<double>());
    fmt::print("({} tokens in {} windows of {} from {}; {} backend)\n", first.tokens, first.windows, opts->ctx,
               opts->file, backend->name());
  });
}

}  // namespace lathe::cli
