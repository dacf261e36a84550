// The quantizer's measurement pass and optimizer (engine-private), after ExLlamaV2's converter
// (../shared/docs/prior-art/exllamav2.md §2.3-2.4): every attention and feed-forward sublayer is
// quantized at each candidate configuration (one layout per projection), run on the calibration
// states, and the error of its output (the residual stream after it) against the unquantized
// sublayer's is recorded with the configuration's bits. The measurement depends on the model and
// the calibration but not on the target, so one file serves every --bpw. The optimizer then picks
// one candidate per sublayer minimising the summed error within the bit budget.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "engine/quantize_layers.h"
#include "engine/quantize_gptq.h"

namespace lathe::engine::qz {

// One configuration of a sublayer: a layout per projection, in projections(part) order.
struct Candidate {
  std::vector<Layout> layouts;
};
std::vector<Candidate> candidates(model::Sublayer part);

// What a measurement belongs to (saved in the file, compared on reuse): the model (architecture,
// shape and a fingerprint of sampled weight bytes), the calibration (dataset name, windows and a
// hash of the token ids) and the settings (damping, the candidate set).
nlohmann::json measurement_identity(const model::Model& model, std::span<const int32_t> tokens, int64_t rows,
                                    int64_t length, const std::string& dataset, const GptqOptions& gptq);

using Progress = std::function<void(const std::string&, int64_t, int64_t)>;

// Measures every sublayer `file` does not hold yet (all of them when it does not exist), saving the
// file atomically after each, so an interruption loses no finished sublayer. A file that belongs to
// another model, calibration or candidate set is refused. Returns the whole measurement;
// *measured gets the number of sublayers measured by this call.
nlohmann::json measure(const model::Model& model, ops::Ops& ops, std::span<const int32_t> tokens, int64_t rows,
                       int64_t length, const nlohmann::json& identity, const std::filesystem::path& file,
                       const GptqOptions& gptq, const Progress& progress, int64_t* measured);

// How a candidate's measured error counts in the optimizer's sum.
enum class Objective {
  // The stream error scaled by the sublayer's measured gain to the output: the output probe's KL
  // divergence over its stream error (the default).
  kOutput,
  kStream,  // relative squared error of the residual stream after the sublayer
  kDelta,   // ... relative to the sublayer's own output (its contribution to the stream)
  kAbs,     // absolute squared error of the stream
  kRfn,     // ExLlamaV2's: mean over windows of ||y_q - y|| / ||y||
};
Objective parse_objective(const std::string& name);

struct Choice {
  std::string sublayer;
  std::vector<Layout> layouts;
  double bits = 0, err = 0;
};
// One candidate per sublayer (model order) minimising the summed error (an exact multiple-choice
// knapsack over bits in units of 1/100000 of the budget, each rounded up) with the decoder's
// stored bits at most bpw times its weights.
std::vector<Choice> optimize(const nlohmann::json& measurement, const model::Model& model, double bpw,
                             Objective objective);

}  // namespace lathe::engine::qz
