// `lathe quantize --synthetic`: an EXL2 folder with random packed weights for a model's shape, written
// directly (no calibration, no GPTQ), for speed benchmarks of models too large to quantize for real
// in a benchmark run (e.g. a Llama-3-8B-shaped model on the GPU machine). The layouts are the ones
// lathe quantize would choose for the target bpw (quant::exl2_groups_for_bpw); codes and scale codes
// are uniform random, scale maxima give weights of about 0.02 in magnitude, act-order permutations
// are random. The outputs are meaningless; the bytes and the kernels' work are those of a real file.
#pragma once

#include <cstdint>
#include <filesystem>

namespace lathe::engine {

struct SyntheticExl2Options {
  double bpw = 4.0;
  int head_bits = 6;
  uint64_t seed = 1;
};

// Reads config.json (and copies the tokenizer files) of `model_dir`; its weights are not read.
// Returns the bytes written.
size_t write_synthetic_exl2(const std::filesystem::path& model_dir, const std::filesystem::path& out_dir,
                            const SyntheticExl2Options& options);

}  // namespace lathe::engine
