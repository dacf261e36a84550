// lathe quantize -m IN -o OUT --bpw 4.0 [--head-bits 6] --calib FILE [--calib-rows 16] [--calib-length 512]
// [--json]: an EXL2 folder (output.safetensors + config.json with quantization_config + tokenizer
// files) that lathe and ExLlamaV2 load.
#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "core/error.h"
#include "commands.h"
#include "engine/quantize.h"
#include "engine/synthetic_exl2.h"
#include "model/model.h"

namespace lathe::cli {

void add_quantize_command(CLI::App& app) {
  struct Opts {
    std::string model, out, calib, measurement, objective = "output", kv_cache = "auto";
    double bpw = 4.0;
    int head_bits = 6;
    int64_t rows = 64, length = 512, ctx = 4096, measure_rows = 16;
    double memory_gib = 0, damp = 0.12;
    bool json = false, rtn = false, advise = false, uniform = false, synthetic = false;
    uint64_t seed = 1;
    DeviceOptions device;
  };
  auto opts = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("quantize", "Quantize a model to EXL2 (GPTQ with EXL2 scales, mixed widths)");
  cmd->add_option("-m,--model", opts->model, "Hugging Face model folder (unquantized)")->required();
  cmd->add_option("-o,--output", opts->out, "folder to write the EXL2 model to (required unless --advise)");
  cmd->add_option("-b,--bpw", opts->bpw, "target bits per weight of the decoder layers (2.5 to 8)")->capture_default_str();
  cmd->add_option("--head-bits", opts->head_bits, "bits of the LM head (2, 3, 4, 5, 6 or 8)")->capture_default_str();
  cmd->add_option("-c,--calib", opts->calib, "calibration text file (UTF-8; default: lathe's built-in text)");
  cmd->add_option("--calib-rows", opts->rows, "calibration windows")->capture_default_str();
  cmd->add_option("--calib-length", opts->length, "tokens per calibration window")->capture_default_str();
  cmd->add_option("--measure-rows", opts->measure_rows,
                  "calibration windows the measurement uses (spread over them; 0: all)")
      ->capture_default_str();
  cmd->add_flag("--advise", opts->advise,
                "print the largest --bpw whose weights, KV cache (--ctx) and activations fit --memory GiB");
  cmd->add_option("--memory", opts->memory_gib, "GPU memory in GiB for --advise");
  cmd->add_option("--ctx", opts->ctx, "context length for --advise")->capture_default_str();
  cmd->add_option("--kv-cache", opts->kv_cache, "K/V cache --advise counts: auto (bf16 on the GPU), q8 or q4")
      ->capture_default_str();
  cmd->add_flag("--uniform", opts->uniform,
                "one layout in every layer instead of per-sublayer layouts chosen by measurement");
  cmd->add_option("--measurement", opts->measurement,
                  "measurement JSON, written after every sublayer and reused when it exists (default: "
                  "OUT_DIR/measurement.json)");
  cmd->add_option("--objective", opts->objective,
                  "how the optimizer adds measured errors: output, stream, delta, abs or rfn")
      ->capture_default_str();
  cmd->add_option("--device,--backend", opts->device.device,
                  "where the calibration forward passes and input Hessians run: auto (cuda when a GPU is present, "
                  "else cpu), cuda, cpu or ref; the GPTQ solves run on the CPU")
      ->capture_default_str();
  cmd->add_option("--damp", opts->damp, "GPTQ damping (fraction of the mean Hessian diagonal)")->capture_default_str();
  cmd->add_flag("--rtn", opts->rtn, "round to nearest instead of GPTQ (a baseline for comparisons)");
  cmd->add_flag("--synthetic", opts->synthetic,
                "for speed benchmarks: random packed weights in the layout of --bpw for the model's config.json "
                "(its weights are not read; outputs are meaningless)");
  cmd->add_option("--seed", opts->seed, "random seed for --synthetic")->capture_default_str();
  cmd->add_flag("--json", opts->json, "print a JSON report");
  cmd->callback([opts] {
    if (opts->synthetic) {
      if (opts->out.empty()) fail(ErrorKind::kInvalidArgument, "lathe quantize --synthetic needs -o OUT_DIR");
      engine::SyntheticExl2Options so;
      so.bpw = opts->bpw;
      so.head_bits = opts->head_bits;
      so.seed = opts->seed;
      const size_t bytes = engine::write_synthetic_exl2(opts->model, opts->out, so);
      if (opts->json) {
        nlohmann::ordered_json j;
        j["output"] = opts->out;
        j["bytes"] = bytes;
        j["synthetic"] = true;
        fmt::print("{}\n", j.dump());
      } else {
        fmt::print("wrote {} ({:.2f} GiB of random EXL2 weights at {} bpw)\n", opts->out, double(bytes) / double(1ull << 30),
                   opts->bpw);
      }
      return;
    }
    auto model = model::Model::load(opts->model);
    if (opts->advise) {
      if (!(opts->memory_gib > 0)) fail(ErrorKind::kInvalidArgument, "--advise needs --memory GiB (e.g. --memory 24)");
      const ops::KvQuant kvq = parse_kv_quant(opts->kv_cache);
      const auto a = engine::advise_bpw(*model, size_t(opts->memory_gib * double(1ull << 30)), opts->ctx,
                                        opts->head_bits, kvq);
      const double gib = double(1ull << 30);
      if (opts->json) {
        nlohmann::ordered_json j;
        j["bpw"] = a.bpw;
        j["fits"] = a.fits;
        j["weight_bytes"] = a.weight_bytes;
        j["kv_cache_bytes"] = a.kv_bytes;
        j["other_bytes"] = a.other_bytes;
        fmt::print("{}\n", j.dump());
        return;
      }
      if (a.fits)
        fmt::print("--bpw {:.2f} fits {:.1f} GiB at context {}: weights {:.2f} GiB + KV cache {:.2f} GiB + activations "
                   "and reserve {:.2f} GiB\n",
                   a.bpw, opts->memory_gib, opts->ctx, double(a.weight_bytes) / gib, double(a.kv_bytes) / gib,
                   double(a.other_bytes) / gib);
      else
        fmt::print("nothing fits {:.1f} GiB at context {}: even 2.5 bpw needs {:.2f} GiB (weights {:.2f} + KV cache "
                   "{:.2f}); lower --ctx or use a larger GPU\n",
                   opts->memory_gib, opts->ctx, double(a.total()) / gib, double(a.weight_bytes) / gib,
                   double(a.kv_bytes) / gib);
      return;
    }
    if (opts->out.empty()) fail(ErrorKind::kInvalidArgument, "lathe quantize needs -o OUT_DIR (or --advise)");
    auto tokenizer = require_tokenizer(opts->model);
    engine::QuantizeOptions qo;
    qo.bpw = opts->bpw;
    qo.head_bits = opts->head_bits;
    qo.calib = opts->calib;
    qo.calib_rows = opts->rows;
    qo.calib_length = opts->length;
    qo.measure_rows = opts->measure_rows;
    qo.rtn = opts->rtn;
    qo.uniform = opts->uniform;
    qo.measurement = opts->measurement;
    qo.objective = opts->objective;
    qo.damp = opts->damp;
    const auto backend = make_backend(opts->device, /*exact_by_default=*/true);
    qo.backend = backend.get();
    std::unique_ptr<ProgressBar> bar;
    std::string stage;
    qo.progress = [&](const std::string& s, int64_t done, int64_t total) {
      if (s != stage) {
        if (bar) bar->finish();
        bar = std::make_unique<ProgressBar>(s, total);
        stage = s;
      }
      bar->update(done);
    };
    const auto r = engine::quantize_exl2(*model, tokenizer, opts->out, qo);
    if (bar) bar->finish();
    if (opts->json) {
      nlohmann::ordered_json j;
      j["output"] = opts->out;
      j["bpw"] = r.bpw;
      j["head_bits"] = opts->head_bits;
      j["bytes"] = r.bytes;
      j["calib_tokens"] = r.calib_tokens;
      j["measured_sublayers"] = r.measured;
      j["seconds"] = r.seconds;
      j["measure_seconds"] = r.measure_seconds;
      for (const auto& l : r.layers)
        j["layers"].push_back(
            {{"name", l.name}, {"target", l.target}, {"group", l.group}, {"bpw", l.bpw}, {"rel_err", l.rel_err}});
      fmt::print("{}\n", j.dump());
      return;
    }
    double worst = 0;
    std::string worst_name;
    for (const auto& l : r.layers)
      if (l.rel_err > worst) worst = l.rel_err, worst_name = l.name;
    fmt::print("wrote {} ({:.2f} MB): {} layers at {:.3f} bpw (head {} bits), {} calibration tokens, {:.1f} s\n",
               opts->out, double(r.bytes) / 1e6, r.layers.size(), r.bpw, opts->head_bits, r.calib_tokens, r.seconds);
    fmt::print("largest relative weight error {:.4f} in {}\n", worst, worst_name);
  });
}

}  // namespace lathe::cli
