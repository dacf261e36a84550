// lathe generate -m DIR (--ids 0,5,7 | -p TEXT) -n 24 [--temperature 0] [--ignore-eos] [--json]
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "commands.h"
#include "core/log.h"
#include "engine/generator.h"
#include "model/model.h"
#include "sampling_options.h"

namespace lathe::cli {

void add_generate_command(CLI::App& app) {
  struct Opts {
    std::string model, ids, prompt;
    DeviceOptions device;
    int64_t n = 128;
    bool ignore_eos = false, json = false, raw = false;
    std::vector<std::string> stop;
    SamplingOptions sampling;
  };
  auto opts = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("generate", "Generate text from a prompt (streams to stdout)");
  cmd->add_option("-m,--model", opts->model, "Hugging Face model folder")->required();
  auto* ids = cmd->add_option("--ids", opts->ids, "prompt as comma-separated token ids");
  auto* text = cmd->add_option("-p,--prompt", opts->prompt, "prompt text (the tokenizer adds BOS as the model expects)");
  ids->excludes(text);
  cmd->add_option("-n,--max-tokens", opts->n, "tokens to generate")->capture_default_str();
  cmd->add_flag("--ignore-eos", opts->ignore_eos, "keep going past the model's end-of-sequence tokens");
  cmd->add_option("--stop", opts->stop, "stop when this text appears (repeatable; not printed)");
  cmd->add_flag("--raw", opts->raw, "with -p: do not add the tokenizer's special tokens (BOS)");
  cmd->add_flag("--json", opts->json, "print one object {\"ids\": [...], \"text\": ...} at the end instead of streaming");
  opts->sampling.add_to(cmd);
  add_backend_option(cmd, opts->device);
  cmd->callback([opts, ids, text] {
    if (!*ids && !*text) fail(ErrorKind::kInvalidArgument, "generate needs a prompt: -p TEXT or --ids 1,2,3");
    auto backend = make_backend(opts->device, /*exact_by_default=*/false);
    auto model = model::Model::load(opts->model, model::load_options_for(*backend));
    auto tokenizer = load_tokenizer_if_present(opts->model);
    std::vector<int32_t> prompt;
    if (*ids) {
      prompt = parse_ids(opts->ids);
    } else {
      if (!tokenizer)
        fail(ErrorKind::kNotFound, "{} has no tokenizer.json: pass the prompt as --ids", opts->model);
      prompt = tokenizer->encode(opts->prompt, /*add_special=*/!opts->raw);
    }
    engine::GenerateConfig g;
    g.max_new_tokens = opts->n;
    g.sampler = opts->sampling.resolve(model->config().generation);
    g.ignore_eos = opts->ignore_eos;
    g.eos_ids = model->config().eos_token_ids;
    g.stop = opts->stop;
    model::Runner runner(*model, *backend);
    engine::Generator gen(runner, tokenizer ? &*tokenizer : nullptr);
    std::function<void(std::string_view)> stream;
    if (!opts->json) stream = [](std::string_view piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
    const auto r = gen.generate(prompt, g, stream);
    if (opts->json) {
      nlohmann::ordered_json j;
      j["ids"] = r.ids;
      j["text"] = r.text;
      j["finish_reason"] = engine::to_string(r.finish);
      j["prompt_tokens"] = r.prompt_tokens;
      j["seed"] = g.sampler.seed;
      j["prefill_seconds"] = r.prefill_seconds;
      j["decode_seconds"] = r.decode_seconds;
      fmt::print("{}\n", j.dump());
      return;
    }
    if (!tokenizer) {  // no text to stream: show the ids
      for (size_t i = 0; i < r.ids.size(); ++i) fmt::print("{}{}", i ? "," : "", r.ids[i]);
    }
    fmt::print("\n");
    const double decode_rate = r.ids.size() > 1 ? double(r.ids.size() - 1) / r.decode_seconds : 0;
    log(LogLevel::kInfo, "generate", "prompt {} tokens in {:.3f} s ({:.0f} tok/s); {} tokens generated, {:.1f} tok/s; finish: {}",
        r.prompt_tokens, r.prefill_seconds, double(r.prompt_tokens) / r.prefill_seconds, r.ids.size(), decode_rate,
        engine::to_string(r.finish));
  });
}

}  // namespace lathe::cli
