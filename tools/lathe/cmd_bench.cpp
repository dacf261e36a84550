// lathe bench -m DIR: prefill and decode throughput (like llama-bench pp512 / tg128), median of
// several repetitions on random (non-zero) token ids. Decode can start from a filled context
// (--decode-ctx), so long-context attention cost shows. Also: time to first token, memory, and the
// fraction of the weight-streaming roofline reached at batch 1 (--bandwidth GB/s). Decode steps
// include greedy token selection on the backend (what generation does), so only ids cross to the host.
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
    std::vector<int64_t> prompt{512}, decode_ctx{0}, batch{1};
    int64_t gen = 128, reps = 3, block_size = 256;
    bool no_graphs = false;
    double bandwidth = 0;
    bool json = false;
  };
  auto opts = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("bench", "Measure prefill and decode tokens/s");
  cmd->add_option("-m,--model", opts->model, "Hugging Face model folder")->required();
  cmd->add_option("-p,--prompt-tokens", opts->prompt, "prefill lengths (pp), e.g. -p 512,2048")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("-n,--gen-tokens", opts->gen, "decode length (tg)")->capture_default_str();
  cmd->add_option("-c,--decode-ctx", opts->decode_ctx, "tokens already in the cache when decoding starts, e.g. -c 128,4096")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("-b,--batch", opts->batch,
                  "decode batch sizes: that many sequences decode together over a paged cache, e.g. -b 1,8,32")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--block-size", opts->block_size, "positions per KV block for batched decode")->capture_default_str();
  cmd->add_flag("--no-graphs", opts->no_graphs, "launch every op of a decode step instead of replaying a recorded graph");
  cmd->add_option("-r,--reps", opts->reps, "repetitions (median reported)")->capture_default_str();
  cmd->add_option("--bandwidth", opts->bandwidth,
                  "memory bandwidth in GB/s for the roofline column (default: 2990 on CUDA, the H100's measured copy "
                  "rate; none on CPU)");
  cmd->add_flag("--json", opts->json, "print one JSON object");
  add_backend_option(cmd, opts->device);
  cmd->callback([opts] {
    using clock = std::chrono::steady_clock;
    auto backend = make_backend(opts->device, /*exact_by_default=*/false);
    auto model = model::Model::load(opts->model, model::load_options_for(*backend));
    const auto& c = model->config();
    if (opts->gen < 1 || opts->reps < 1) fail(ErrorKind::kInvalidArgument, "bench: -n and -r must be positive");
    for (auto b : opts->batch)
      if (b < 1) fail(ErrorKind::kInvalidArgument, "bench: batch sizes must be positive");
    if (opts->block_size < 1) fail(ErrorKind::kInvalidArgument, "bench: --block-size must be positive");
    for (auto p : opts->prompt)
      if (p < 1) fail(ErrorKind::kInvalidArgument, "bench: prompt lengths must be positive");
    const auto t_load = clock::now();
    model::Runner runner(*model, *backend);
    if (opts->no_graphs) runner.set_graphs(false);
    const double load_s = std::chrono::duration<double>(clock::now() - t_load).count();
    int64_t longest = opts->gen + 1;
    for (auto p : opts->prompt) longest = std::max(longest, p);
    for (auto d : opts->decode_ctx) longest = std::max(longest, d + opts->gen + 1);
    if (longest > c.max_position_embeddings)
      fail(ErrorKind::kOutOfRange, "bench needs {} positions but the model's context is {}", longest,
           c.max_position_embeddings);
    std::mt19937 rng(1234);
    std::uniform_int_distribution<int32_t> pick(1, int32_t(c.vocab_size - 1));
    std::vector<int32_t> ids(static_cast<size_t>(longest));
    for (auto& t : ids) t = pick(rng);
    model::KvCache cache(c, longest, *backend);
    model::Workspace ws(*backend);
    Tensor logits;
    // Warm-up: touch every weight page and build the workspaces once.
    runner.forward(std::span<const int32_t>(ids.data(), std::min<size_t>(ids.size(), 16)), cache, ws,
                   model::LogitsFor::kLast, &logits);
    // Each prefill length once more, so first-use costs (kernel loading, GEMM heuristics, buffer
    // growth) stay out of the timed runs and of any per-op profile.
    for (int64_t p : opts->prompt) {
      cache.clear();
      runner.forward(std::span<const int32_t>(ids.data(), size_t(p)), cache, ws, model::LogitsFor::kLast, &logits);
    }
    backend->reset_counters();

    // Decode steps end with greedy token selection on the backend, as generation does: only the
    // chosen ids come back to the host.
    int64_t max_batch = 1;
    for (auto b : opts->batch) max_batch = std::max(max_batch, b);
    const std::vector<model::SelectRow> greedy_rows(static_cast<size_t>(max_batch));
    model::Selection sel;
    nlohmann::ordered_json j;
    j["model"] = opts->model;
    j["backend"] = backend->name();
    j["threads"] = num_threads();
    j["weight_bytes"] = model->loader().weight_bytes();
    j["load_seconds"] = load_s;
    j["kv_cache"] = kv_cache_name(*backend, c.head_dim);
    struct Row {
      std::string test;
      double tok_s, ms;
    };
    std::vector<Row> rows;
    for (int64_t p : opts->prompt) {
      std::vector<double> t;
      for (int64_t r = 0; r < opts->reps; ++r) {
        cache.clear();
        const auto t0 = clock::now();
        runner.forward(std::span<const int32_t>(ids.data(), size_t(p)), cache, ws, model::LogitsFor::kLast, &logits);
        t.push_back(std::chrono::duration<double>(clock::now() - t0).count());
      }
      const double s = median(t);
      rows.push_back({fmt::format("pp{}", p), double(p) / s, s * 1e3});
      j[fmt::format("prefill_{}_tok_s", p)] = double(p) / s;
      j[fmt::format("ttft_{}_ms", p)] = s * 1e3;  // prefill + logits of the last position on the host
    }
    double tg_first = 0;
    // Decode steps also report their host share: the part of the wall time not spent blocked on
    // the device (ops::Ops::device_wait_seconds; device backends only).
    for (int64_t d : opts->decode_ctx) {
      std::vector<double> t, host;
      for (int64_t r = 0; r < opts->reps; ++r) {
        cache.clear();
        if (d > 0)
          runner.forward(std::span<const int32_t>(ids.data(), size_t(d)), cache, ws, model::LogitsFor::kNone, &logits);
        const auto t0 = clock::now();
        const double w0 = backend->device_wait_seconds();
        for (int64_t i = 0; i < opts->gen; ++i) {
          model::SeqInput in;
          in.ids = std::span<const int32_t>(&ids[size_t(d + i)], 1);
          in.kv = &cache.seq();
          runner.forward_select(std::span<const model::SeqInput>(&in, 1), cache.pool(), ws,
                               std::span<const model::SelectRow>(greedy_rows.data(), 1), 1, &sel);
        }
        t.push_back(std::chrono::duration<double>(clock::now() - t0).count());
        host.push_back(1.0 - (backend->device_wait_seconds() - w0) / t.back());
      }
      const double s = median(t);
      const double rate = double(opts->gen) / s;
      if (tg_first == 0) tg_first = rate;
      rows.push_back({fmt::format("tg{} @ ctx {}", opts->gen, d), rate, s * 1e3 / double(opts->gen)});
      j[fmt::format("decode_ctx{}_tok_s", d)] = rate;
      if (!backend->host_memory()) j[fmt::format("decode_ctx{}_host_ratio", d)] = median(host);
    }
    // Batched decode: b sequences, each with d tokens of context (prefilled together in one step),
    // then gen steps in which every sequence decodes one token. tok/s counts all sequences.
    for (int64_t b : opts->batch) {
      if (b == 1) continue;
      for (int64_t d : opts->decode_ctx) {
        const int64_t bs = opts->block_size;
        const int64_t per_seq = (d + opts->gen + 1 + bs - 1) / bs;
        model::KvPool pool(c, b * per_seq, bs, *backend);
        std::vector<model::SeqKv> kv(static_cast<size_t>(b));
        for (int64_t s = 0; s < b; ++s)
          for (int64_t k = 0; k < per_seq; ++k) kv[size_t(s)].blocks.push_back(int32_t(s * per_seq + k));
        std::vector<model::SeqInput> step(static_cast<size_t>(b));
        std::vector<int32_t> tokens(static_cast<size_t>(b));
        std::vector<double> t, host;
        for (int64_t r = 0; r < opts->reps; ++r) {
          for (auto& q : kv) q.length = 0;
          if (d > 0) {
            for (int64_t s = 0; s < b; ++s)
              step[size_t(s)] = {std::span<const int32_t>(ids.data(), size_t(d)), &kv[size_t(s)], model::LogitsFor::kNone};
            runner.forward_batch(step, pool, ws, &logits);
          }
          const auto t0 = clock::now();
          const double w0 = backend->device_wait_seconds();
          for (int64_t i = 0; i < opts->gen; ++i) {
            for (int64_t s = 0; s < b; ++s) {
              tokens[size_t(s)] = ids[size_t((d + i + s) % longest)];
              step[size_t(s)] = {std::span<const int32_t>(&tokens[size_t(s)], 1), &kv[size_t(s)], model::LogitsFor::kLast};
            }
            runner.forward_select(step, pool, ws, std::span<const model::SelectRow>(greedy_rows.data(), size_t(b)), 1,
                                  &sel);
          }
          t.push_back(std::chrono::duration<double>(clock::now() - t0).count());
          host.push_back(1.0 - (backend->device_wait_seconds() - w0) / t.back());
        }
        const double s = median(t);
        const double rate = double(b * opts->gen) / s;
        rows.push_back({fmt::format("tg{} x b{} @ ctx {}", opts->gen, b, d), rate, s * 1e3 / double(opts->gen)});
        j[fmt::format("decode_b{}_ctx{}_tok_s", b, d)] = rate;
        if (!backend->host_memory()) j[fmt::format("decode_b{}_ctx{}_host_ratio", b, d)] = median(host);
      }
    }
    const auto mem = backend->memory_stats();
    double bw = opts->bandwidth;
    if (bw == 0 && !backend->host_memory()) bw = 2990;
    if (bw > 0) {
      const double roofline = bw * 1e9 / double(model->loader().weight_bytes());
      j["roofline_tok_s"] = roofline;
      j["roofline_fraction"] = tg_first / roofline;
    }
    if (!backend->host_memory()) {
      j["peak_buffer_bytes"] = mem.peak;
      j["device_used_bytes"] = mem.device_used;
    }
    if (opts->json) {
      fmt::print("{}\n", j.dump());
      return;
    }
    fmt::print("model {} ({} backend, {} threads), weights {:.2f} GB, loaded in {:.1f} s\n", opts->model,
               backend->name(), num_threads(), double(model->loader().weight_bytes()) / 1e9, load_s);
    fmt::print("| test | tok/s | ms |\n|---|---|---|\n");
    for (const auto& r : rows) fmt::print("| {} | {:.1f} | {:.3f} |\n", r.test, r.tok_s, r.ms);
    if (bw > 0)
      fmt::print("batch-1 decode reaches {:.1f}% of the {:.0f} tok/s weight-streaming roofline at {:.0f} GB/s\n",
                 100.0 * j["roofline_fraction"].get<double>(), j["roofline_tok_s"].get<double>(), bw);
    if (!backend->host_memory())
      fmt::print("device memory: {:.2f} GiB peak in lathe buffers, {:.2f} GiB used on the device\n",
                 double(mem.peak) / (1 << 30), double(mem.device_used) / (1 << 30));
  });
}

}  // namespace lathe::cli
