// `lathe quantize`: an unquantized Hugging Face model to an EXL2 folder that lathe and ExLlamaV2
// load. Calibration text runs through the model on the CPU backend; every linear layer's input
// Hessian (sum of x^T x) is collected, and each layer is quantized by GPTQ with EXL2 scales to a
// group layout that meets the target bits per weight (the most important input channels, by
// Hessian diagonal, get the higher width). The LM head gets --head-bits.
//
// Every Hessian comes from the unquantized model's activations (sequential, quantized-input
// Hessians come next), and the error measure is per linear layer (ExLlamaV2 measures whole
// attention / MLP sublayers).
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
  int64_t calib_rows = 16;      // windows of calib_length tokens
  int64_t calib_length = 512;
  bool rtn = false;             // round-to-nearest (no Hessian, no error feedback): the baseline
  // Per-layer bit allocation (experimental, off by default): every linear layer is quantized at
  // each candidate width and its Hessian-weighted relative output error measured; then each layer's
  // width is chosen to minimise the sum of errors at the target average (Lagrangian relaxation over
  // the candidates). The measurement is saved to `measurement` after every layer (reused when the
  // file exists, so an interrupted run loses no finished layer and a second target costs only the
  // final pass). Measured on ref-llama-14m at 4.0 bpw this per-linear proxy loses to one layout
  // everywhere (ppl 8.265 vs 8.175): the error of a whole attention/MLP block against the residual
  // stream (ExLlamaV2's measure) is the next step.
  bool measure = false;
  std::filesystem::path measurement;
  // (stage, done, total) as work progresses: "calibrate", "quantize".
  std::function<void(const std::string&, int64_t, int64_t)> progress;
};

struct QuantizedLayer {
  std::string name;
  double target = 0;    // the candidate width chosen for this layer
  double bpw = 0;       // the format's storage per weight for this layer
  double rel_err = 0;   // ||W - Wq||_F / ||W||_F
};

struct QuantizeReport {
  std::vector<QuantizedLayer> layers;
  double bpw = 0;               // over all quantized decoder layers (the head excluded)
  int64_t calib_tokens = 0;
  size_t bytes = 0;             // of the written safetensors
  double seconds = 0;
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

QuantAdvice advise_bpw(const model::Model& model, size_t memory_bytes, int64_t ctx, int head_bits = 6);

QuantizeReport quantize_exl2(const model::Model& model, const tok::Tokenizer& tokenizer,
                             const std::filesystem::path& out_dir, const QuantizeOptions& options);

}  // namespace lathe::engine
