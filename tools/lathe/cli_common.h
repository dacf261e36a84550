// Pieces every model-facing subcommand shares: the -m option, backend choice, id lists, loading the
// tokenizer next to the model, a progress bar.
#pragma once

#include <CLI/CLI.hpp>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "ops/ops.h"
#include "tokenizer/tokenizer.h"

namespace lathe::cli {

// --device auto|cuda|cpu|ref and --precision auto|exact|fast (what a GPU's matmuls do with
// activations: keep float32 accuracy, or round to bf16 for speed). `exact_by_default` is the
// command's choice for --precision auto: scoring commands want exact, generation wants fast.
struct DeviceOptions {
  std::string device = "auto";
  std::string precision = "auto";
  std::string kv_cache = "auto";  // auto (bf16 on a GPU in fast precision), f32, q8 or q4
};
// --kv-cache q8 / q4 as the quantized format; auto (and f32) as KvQuant::kNone; anything else is a
// clear error naming the choices.
ops::KvQuant parse_kv_quant(const std::string& name);
// What a backend's new caches hold for this head size: "q8", "q4", or the element type ("BF16").
std::string kv_cache_name(const ops::Ops& ops, int64_t head_dim);
std::unique_ptr<ops::Ops> make_backend(const DeviceOptions& options, bool exact_by_default);
void add_backend_option(CLI::App* cmd, DeviceOptions& options);

// "0,5,7" -> {0, 5, 7}; errors name the bad entry.
std::vector<int32_t> parse_ids(const std::string& text);

// The tokenizer of a model folder, or nullopt when it has no tokenizer.json.
std::optional<tok::Tokenizer> load_tokenizer_if_present(const std::filesystem::path& dir);
// The tokenizer, or an error saying text input needs one.
tok::Tokenizer require_tokenizer(const std::filesystem::path& dir);

// A one-line progress bar with rate and ETA on stderr; silent when stderr is not a terminal.
class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total);
  void update(int64_t done);
  void finish();

 private:
  std::string label_;
  int64_t total_;
  double start_;
  bool tty_;
};

}  // namespace lathe::cli
