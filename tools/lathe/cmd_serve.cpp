// lathe serve -m DIR: the OpenAI-compatible HTTP server (src/server). Loads the model, sizes the
// paged KV cache, starts the engine thread and the HTTP listener, prints the URL, and on SIGTERM or
// SIGINT drains (new requests get 503, in-flight ones finish) and exits 0; a second signal exits at once.
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <thread>

#include "cli_common.h"
#include "commands.h"
#include "core/log.h"
#include "model/model.h"
#include "server/engine_loop.h"
#include "server/http_server.h"

namespace lathe::cli {

namespace {
// KV blocks: --num-blocks, else --kv-memory GiB, else what 90% of a GPU's free memory holds, else
// (host memory) eight full contexts, at most 4 GiB.
int64_t kv_blocks(int64_t num_blocks, double kv_memory_gib, int64_t block_size, const model::ModelConfig& c, ops::Ops& ops) {
  if (num_blocks > 0) return num_blocks;
  const size_t per_block = model::KvPool::block_bytes(c, block_size, ops.kv_dtype(c.head_dim), ops.kv_quant());
  if (kv_memory_gib > 0) return std::max<int64_t>(1, int64_t(kv_memory_gib * double(1ull << 30) / double(per_block)));
  const int64_t fit = model::KvPool::positions_that_fit(c, ops, 0.9);
  if (fit != INT64_MAX) return std::max<int64_t>(1, fit / block_size);
  const int64_t by_context = (8 * c.max_position_embeddings + block_size - 1) / block_size;
  const int64_t by_memory = int64_t((4ull << 30) / per_block);
  return std::max<int64_t>(1, std::min(by_context, by_memory));
}
}  // namespace

void add_serve_command(CLI::App& app) {
  struct Opts {
    std::string model, name, template_file;
    DeviceOptions device;
    server::ServerOptions server;  // host, port, key, limits: flags write them directly
    int64_t max_queue = 256, max_running = 256, num_blocks = 0, block_size = 16, token_budget = 2048;
    double kv_memory = 0;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (chat, completions, streaming)");
  cmd->add_option("-m,--model", o->model, "Hugging Face model folder")->required();
  cmd->add_option("--host", o->server.host, "address to listen on (0.0.0.0: every interface)")->capture_default_str();
  cmd->add_option("--port", o->server.port, "TCP port (0: any free port)")->capture_default_str();
  cmd->add_option("--api-key", o->server.api_key,
                  "require 'Authorization: Bearer KEY' on every route but /health and /metrics (default: "
                  "$LATHE_API_KEY, else none)");
  cmd->add_option("--served-model-name", o->name, "the model name clients send (default: the folder's name)");
  cmd->add_option("--template", o->template_file, "Jinja chat template file (default: the model's)");
  cmd->add_option("--max-queue", o->max_queue, "sequences that may wait beyond --max-running; more get 429")
      ->capture_default_str();
  cmd->add_option("--max-running", o->max_running, "sequences in one batch")->capture_default_str();
  cmd->add_option("--num-blocks", o->num_blocks, "KV-cache blocks (default: from --kv-memory or the free memory)");
  cmd->add_option("--kv-memory", o->kv_memory, "KV-cache size in GiB (default: 90% of a GPU's free memory; "
                                              "on the CPU eight contexts, at most 4 GiB)");
  cmd->add_option("--block-size", o->block_size, "tokens per KV block")->capture_default_str();
  cmd->add_option("--token-budget", o->token_budget, "tokens computed per step (decodes + prefill chunks)")
      ->capture_default_str();
  o->server.http_threads = 0;
  cmd->add_option("--http-threads", o->server.http_threads,
                  "connections served at once (default: --max-running + --max-queue + 16, so every request "
                  "admitted has a thread and the rest get their 429 at once)");
  cmd->add_option("--max-body-bytes", o->server.max_body_bytes, "largest request body; bigger ones get 413")->capture_default_str();
  add_backend_option(cmd, o->device);
  cmd->callback([o] {
    // SIGINT/SIGTERM go to one thread that waits for them: blocked here, before any other thread
    // starts, so every thread inherits the mask.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    if (o->server.http_threads <= 0)
      o->server.http_threads = int(std::min<int64_t>(o->max_running + o->max_queue + 16, 4096));
    if (o->server.api_key.empty())
      if (const char* env = std::getenv("LATHE_API_KEY")) o->server.api_key = env;
    auto backend = make_backend(o->device, /*exact_by_default=*/false);
    auto model = model::Model::load(o->model, model::load_options_for(*backend));
    const tok::Tokenizer tokenizer = require_tokenizer(o->model);
    const model::ModelConfig& c = model->config();
    model::Runner runner(*model, *backend);

    server::ServedModel served;
    served.name = o->name.empty() ? std::filesystem::path(o->model).lexically_normal().filename().string() : o->name;
    if (served.name.empty()) served.name = std::filesystem::path(o->model).lexically_normal().parent_path().filename().string();
    served.created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    served.tokenizer = &tokenizer;
    try {
      served.chat_template = tmpl::load_chat_template(o->model, /*want_tools=*/false, o->template_file);
      tmpl::compile_chat_template(*served.chat_template);  // parsed once: a syntax error stops the start
    } catch (const Error& e) {
      if (!o->template_file.empty() || e.kind() != ErrorKind::kNotFound) throw;
      fmt::print(stderr, "lathe serve: {} has no chat template; /v1/chat/completions needs --template\n", o->model);
    }
    served.context = c.max_position_embeddings;
    served.vocab_size = c.vocab_size;
    served.eos_ids = c.eos_token_ids;
    if (auto eos = tokenizer.eos_id()) served.eos_ids.push_back(*eos);
    served.generation = c.generation;

    server::EngineLoopOptions eo;
    eo.engine.scheduler.block_size = o->block_size;
    eo.engine.scheduler.token_budget = o->token_budget;
    eo.engine.scheduler.max_running = o->max_running;
    eo.engine.num_blocks = kv_blocks(o->num_blocks, o->kv_memory, o->block_size, c, *backend);
    eo.max_queue = o->max_queue;
    served.kv_positions = eo.engine.num_blocks * o->block_size;
    server::EngineLoop engine(runner, &tokenizer, eo);

    server::HttpServer http(served, engine, o->server);
    http.bind();

    // The first signal starts the drain on `stopper` (joined below, before `http` goes away); the
    // signal thread stays to honour a second one.
    std::mutex stopper_mu;
    std::thread stopper;
    std::thread([&http, &stopper, &stopper_mu, stop_signals] {
      int sig = 0;
      sigwait(&stop_signals, &sig);
      fmt::print(stderr, "lathe serve: {}, finishing requests in flight (again to quit now)\n", strsignal(sig));
      {
        std::lock_guard lk(stopper_mu);
        stopper = std::thread([&http] { http.shutdown(); });
      }
      sigwait(&stop_signals, &sig);
      std::_Exit(130);
    }).detach();

    const std::string kv_format = kv_cache_name(*backend, c.head_dim);
    fmt::print("lathe serve: {} ({}, {} KV blocks of {} tokens, {} cache) at {}\n", served.name, c.architecture,
               eo.engine.num_blocks, o->block_size, kv_format, http.url());
    std::fflush(stdout);
    http.serve();
    {
      std::lock_guard lk(stopper_mu);
      if (stopper.joinable()) stopper.join();
    }
    engine.drain();
    fmt::print(stderr, "lathe serve: stopped\n");
  });
}

}  // namespace lathe::cli
