// `lathe quantize`: an unquantized Hugging Face model to an EXL2 folder that lathe and ExLlamaV2
// load, layer by layer (memory: one layer's work plus the calibration states).
//
// Calibration windows are embedded and kept on the host as the residual stream. By default a
// measurement pass first tries every attention and feed-forward sublayer at each candidate
// configuration against the unquantized sublayer's output (engine/quantize_measure.h), and an
// optimizer picks one configuration per sublayer minimising the summed error at the target bpw.
// The final pass then goes sublayer by sublayer: input Hessians from the current states (made by
// the already quantized layers before), GPTQ with EXL2 scales for each projection (those reading
// the same input together; o and down see the outputs of the quantized q/k/v and gate/up), and the
// sublayer run with its quantized weights to make the next input. The final norm and the LM head
// (--head-bits) come last.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace lathe::engine {

struct QuantizeOptions {
  double bpw = 4.0;
  int head_bits = 6;
  std::filesystem::path calib;  // calibration text file; empty: the built-in text
  int64_t calib_rows = 64;      // windows of calib_length tokens (the final pass)
  int64_t calib_length = 512;
  int64_t measure_rows = 16;    // windows the measurement uses (spread over the calibration's); 0: all
  bool rtn = false;             // round-to-nearest (no Hessian, no error feedback, one layout): the baseline
  bool uniform = false;         // one layout everywhere instead of the measured per-sublayer choice
  // Where the measurement is kept (written after every sublayer, reused when it exists and belongs
  // to this model and calibration); empty: OUT_DIR/measurement.json.
  std::filesystem::path measurement;
  std::string objective = "output";  // how measured errors add up (qz::parse_objective)
  double damp = 0.12;                // GPTQ damping: fraction of the mean Hessian diagonal
  // Where the calibration forward passes and the Hessians run (null: the CPU backend). The GPTQ
  // solves run on the host either way.
  ops::Ops* backend = nullptr;
  // (stage, done, total) as work progresses: "calibrate", "measure" (sublayers), "quantize"
  // (sublayers, then the head). An exception thrown here stops the run; the measurement keeps
  // every finished sublayer.
  std::function<void(const std::string&, int64_t, int64_t)> progress;
};

struct QuantizedLayer {
  std::string name;
  double target = 0;    // the layout's target bpw for this layer
  int64_t group = 0;    // and its group size
  double bpw = 0;       // the format's storage per weight for this layer
  double rel_err = 0;   // ||W - Wq||_F / ||W||_F
};

struct QuantizeReport {
  std::vector<QuantizedLayer> layers;
  double bpw = 0;               // over all quantized decoder layers (the head excluded)
  int64_t calib_tokens = 0;
  int64_t measured = 0;         // sublayers measured by this run (0: the measurement file had them all)
  double predicted_err = 0;     // the optimizer's summed error of the chosen configuration
  size_t bytes = 0;             // of the written safetensors
  double seconds = 0;
  double measure_seconds = 0;  // of which the measurement pass (0 when reused or not run)
};

// `lathe quantize --advise`: the largest target bpw (2.5 to 8.0, steps of 0.05) whose EXL2 footprint
// (decoder at that bpw, head at head_bits, float16 embedding) plus the KV cache for `ctx` tokens, the
// activations and a fixed runtime reserve fits in `memory_bytes`. fits is false when even 2.5 does
// not; then bpw is 2.5 and the byte counts say what that would need.
struct QuantAdvice {
  double bpw = 0;
  bool fits = false;
  size_t weight_bytes = 0, kv_bytes = 0, other_bytes = 0;
  size_t total() const { return weight_bytes + kv_bytes + other_bytes; }
};
// The built-in calibration text (varied prose, code, tables, numbers, several languages).
std::string_view builtin_calibration_text();

// kv_quant: the K/V cache format counted (kNone: the GPU's bf16/f32 cache of fast precision).
QuantAdvice advise_bpw(const model::Model& model, size_t memory_bytes, int64_t ctx, int head_bits = 6,
                       ops::KvQuant kv_quant = ops::KvQuant::kNone);

QuantizeReport quantize_exl2(const model::Model& model, const tok::Tokenizer& tokenizer,
                             const std::filesystem::path& out_dir, const QuantizeOptions& options);

}  // namespace lathe::engine
