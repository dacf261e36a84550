// lathe bench -m DIR: prefill and decode throughput (like llama-bench pp512 / tg128), median of
// several repetitions, on random (non-zero) token ids.
#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <random>

#include "cli_common.h"
#include "commands.h"
#include "core/parallel.h"
#include "model/model.h"

namespace lathe::cli {

namespace {
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
}  // namespace

void add_bench_command(CLI::App& app) {
  struct Opts {
    std::string model;
    DeviceOptions device;
    int64_t prompt = 512, gen = 128, reps = 3;
    bool json = false;
  };
  auto opts = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("bench", "Measure prefill and decode tokens/s");
  cmd->add_option("-m,--model", opts->model, "Hugging Face model folder")->required();
  cmd->add_option("-p,--prompt-tokens", opts->prompt, "prefill length (pp)")->capture_default_str();
  cmd->add_option("-n,--gen-tokens", opts->gen, "decode length (tg)")->capture_default_str();
  cmd->add_option("-r,--reps", opts->reps, "repetitions (median reported)")->capture_default_str();
  cmd->add_flag("--json", opts->json, "print one JSON object");
  add_backend_option(cmd, opts->device);
  cmd->callback([opts] {
    using clock = std::chrono::steady_clock;
    auto model = model::Model::load(opts->model);
    auto backend = make_backend(opts->device, /*exact_by_default=*/false);
    const auto& c = model->config();
    if (opts->prompt < 1 || opts->gen < 1 || opts->reps < 1)
      fail(ErrorKind::kInvalidArgument, "bench: token counts and repetitions must be positive");
    std::mt19937 rng(1234);
    std::uniform_int_distribution<int32_t> pick(1, int32_t(c.vocab_size - 1));
    std::vector<int32_t> ids(size_t(opts->prompt));
    for (auto& t : ids) t = pick(rng);
    model::Runner runner(*model, *backend);
    model::KvCache cache(c, std::max(opts->prompt, opts->gen) + 1, *backend);
    model::Workspace ws(*backend);
    Tensor logits;
    // Warm-up: touch every weight page once.
    runner.forward(std::span<const int32_t>(ids.data(), std::min<size_t>(ids.size(), 16)), cache, ws,
                   model::LogitsFor::kLast, &logits);
    std::vector<double> pp, tg;
    for (int64_t r = 0; r < opts->reps; ++r) {
      cache.clear();
      auto t0 = clock::now();
      runner.forward(ids, cache, ws, model::LogitsFor::kLast, &logits);
      pp.push_back(double(opts->prompt) / std::chrono::duration<double>(clock::now() - t0).count());
      cache.clear();
      t0 = clock::now();
      for (int64_t i = 0; i < opts->gen; ++i)
        runner.forward(std::span<const int32_t>(&ids[size_t(i) % ids.size()], 1), cache, ws,
                       model::LogitsFor::kLast, &logits);
      tg.push_back(double(opts->gen) / std::chrono::duration<double>(clock::now() - t0).count());
    }
    const double pp_med = median(pp), tg_med = median(tg);
    if (opts->json) {
      nlohmann::ordered_json j;
      j["model"] = opts->model;
      j["backend"] = backend->name();
      j["threads"] = num_threads();
      j["prefill_tokens"] = opts->prompt;
      j["prefill_tok_s"] = pp_med;
      j["decode_tokens"] = opts->gen;
      j["decode_tok_s"] = tg_med;
      fmt::print("{}\n", j.dump());
      return;
    }
    fmt::print("| model | backend | threads | test | tok/s |\n|---|---|---|---|---|\n");
    fmt::print("| {} | {} | {} | pp{} | {:.1f} |\n", opts->model, backend->name(), num_threads(), opts->prompt, pp_med);
    fmt::print("| {} | {} | {} | tg{} | {:.1f} |\n", opts->model, backend->name(), num_threads(), opts->gen, tg_med);
  });
}

}  // namespace lathe::cli
