// Layer-by-layer machinery shared by the quantizer's measurement and final passes (engine-private):
// calibration hidden states kept on the host and run one sublayer at a time through the model
// (model::Runner::run_sublayer), input Hessians observed on the way, and a decoder layer whose
// linears are replaced by dequantized EXL2 layers.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "model/model.h"
#include "quant/exl2.h"

namespace lathe::engine::qz {

// One projection of a dense decoder layer: its Hugging Face name inside the sublayer, where it
// sits in LayerWeights, and the tap point that sees its input.
struct Proj {
  const char* name;  // "q_proj", ..., "down_proj"
  model::Linear model::LayerWeights::*member;
  model::TapPoint tap;
};
// attention: q, k, v, o; feed-forward: gate, up, down.
std::span<const Proj> projections(model::Sublayer part);
// "model.layers.3.self_attn" / "model.layers.3.mlp"
std::string sublayer_name(int64_t layer, model::Sublayer part);

// A linear layer's EXL2 layout: a target storage per weight (the format's whole accounting) and a
// group size; quant::exl2_groups_for_bpw turns it into bit widths per act-order group.
struct Layout {
  double bpw = 4.0;
  int64_t group = 128;
  std::string key() const;  // "4.00/g128"
  bool operator<(const Layout& o) const { return bpw != o.bpw ? bpw < o.bpw : group < o.group; }
  bool operator==(const Layout& o) const { return bpw == o.bpw && group == o.group; }
};
std::vector<quant::Exl2Group> layout_groups(const Layout& l, const ops::Weight& w);
// Bits the layer stores at this layout (payload and overhead, bias included).
double layout_bits(const Layout& l, const model::Linear& lin);

// Input Hessians (sum of x^T x, double, [dim, dim] in the backend's memory) by tap point.
using Hessians = std::map<model::TapPoint, ops::Buffer>;

// Calibration windows' residual stream ([rows, length, hidden] floats on the host) and the model
// run one sublayer at a time over all of them.
class Calibration {
 public:
  // tokens: rows * length ids, one window after another. The states start as their embeddings.
  Calibration(const model::Model& model, ops::Ops& ops, std::span<const int32_t> tokens, int64_t rows,
              int64_t length);

  int64_t rows() const { return rows_; }
  int64_t length() const { return length_; }
  int64_t hidden() const { return hidden_; }
  std::vector<float>& states() { return x_; }

  // out = states + part(states) for every window, part run with `weights` (null: the model's);
  // `out` may be states(). Hessians of the inputs at `taps` (if given) are accumulated into *h.
  void run(int64_t layer, model::Sublayer part, const model::LayerWeights* weights, std::vector<float>& out,
           Hessians* h = nullptr, std::span<const model::TapPoint> taps = {});
  // The LM head's input Hessian (backend memory): the final norm of the states.
  ops::Buffer head_hessian();

 private:
  model::Runner runner_;
  model::Workspace ws_;
  model::KvCache scratch_;
  ops::Buffer xb_;  // one window's states in backend memory
  int64_t rows_, length_, hidden_;
  std::vector<float> x_;
};

// How much a perturbation of the residual stream after one sublayer moves the model's output:
// the rest of the model runs unquantized from the perturbed stream of a few calibration windows,
// and the next-token distributions are compared with the unquantized model's.
class OutputProbe {
 public:
  // tokens: rows * length ids (the probe windows).
  OutputProbe(const model::Model& model, ops::Ops& ops, std::span<const int32_t> tokens, int64_t rows,
              int64_t length);
  int64_t rows() const { return rows_; }
  // Mean KL(unquantized || perturbed) per token when the stream after sublayer (layer, part) of
  // the probe windows is `stream` ([rows, length, hidden]).
  double kl(int64_t layer, model::Sublayer part, std::span<const float> stream);

 private:
  void logprobs(const float* stream_row, std::vector<float>& out);  // [length, vocab] log-softmax
  const model::Model& model_;
  model::Runner runner_;
  model::Workspace ws_;
  model::KvCache scratch_;
  ops::Buffer xb_, logits_;
  int64_t rows_, length_;
  std::vector<float> final_;  // the unquantized model's last stream of each window
  std::vector<std::vector<float>> ref_;  // its log-probabilities per window (made on first use)
};

// A decoder layer with some linears replaced by dequantized EXL2 layers (float16, as lathe loads
// an EXL2 file), everything in the backend's memory: what run_sublayer takes as `weights`.
class LayerStandIn {
 public:
  LayerStandIn(const model::LayerWeights& base, ops::Ops& ops);
  LayerStandIn(const LayerStandIn&) = delete;
  LayerStandIn& operator=(const LayerStandIn&) = delete;

  // The projection becomes the float16 weight [out, in] at `f16` (backend memory, owned by the
  // caller and alive while the stand-in runs).
  void set(const Proj& p, const uint16_t* f16);
  const model::LayerWeights& weights() const { return w_; }
  // The projection's unquantized weight in the backend's memory (what GPTQ reads).
  const ops::Weight& original(const Proj& p) const { return (base_.*p.member).w; }

 private:
  ops::Weight put(const ops::Weight& w);
  ops::Ops& ops_;
  model::LayerWeights base_, w_;
  std::vector<ops::Buffer> owned_;  // the base layer's copy on a device backend
};

}  // namespace lathe::engine::qz
