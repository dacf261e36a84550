// lathe quantize -m IN -o OUT --bpw 4.0 [--head-bits 6] --calib FILE [--calib-rows 16] [--calib-length 512]
// [--json]: an EXL2 folder (output.safetensors + config.json with quantization_config + tokenizer
// files) that lathe and ExLlamaV2 load.
#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "commands.h"
#include "engine/quantize.h"
#include "model/model.h"

namespace lathe::cli {

void add_quantize_command(CLI::App& app) {
  struct Opts {
    std::string model, out, calib;
    double bpw = 4.0;
    int head_bits = 6;
    int64_t rows = 16, length = 512;
    bool json = false, rtn = false;
  };
  auto opts = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("quantize", "Quantize a model to EXL2 (GPTQ with EXL2 scales, mixed widths)");
  cmd->add_option("-m,--model", opts->model, "Hugging Face model folder (unquantized)")->required();
  cmd->add_option("-o,--output", opts->out, "folder to write the EXL2 model to")->required();
  cmd->add_option("-b,--bpw", opts->bpw, "target bits per weight of the decoder layers (2.5 to 8)")->capture_default_str();
  cmd->add_option("--head-bits", opts->head_bits, "bits of the LM head (2, 3, 4, 5, 6 or 8)")->capture_default_str();
  cmd->add_option("-c,--calib", opts->calib, "calibration text file (UTF-8)")->required();
  cmd->add_option("--calib-rows", opts->rows, "calibration windows")->capture_default_str();
  cmd->add_option("--calib-length", opts->length, "tokens per calibration window")->capture_default_str();
  cmd->add_flag("--rtn", opts->rtn, "round to nearest instead of GPTQ (a baseline for comparisons)");
  cmd->add_flag("--json", opts->json, "print a JSON report");
  cmd->callback([opts] {
    auto model = model::Model::load(opts->model);
    auto tokenizer = require_tokenizer(opts->model);
    engine::QuantizeOptions qo;
    qo.bpw = opts->bpw;
    qo.head_bits = opts->head_bits;
    qo.calib = opts->calib;
    qo.calib_rows = opts->rows;
    qo.calib_length = opts->length;
    qo.rtn = opts->rtn;
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
      j["seconds"] = r.seconds;
      for (const auto& l : r.layers) j["layers"].push_back({{"name", l.name}, {"bpw", l.bpw}, {"rel_err", l.rel_err}});
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
