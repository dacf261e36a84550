#include "engine/quantize_layers.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "quant/exl2_groups.h"

namespace lathe::engine::qz {

using model::LayerWeights;
using model::Sublayer;
using model::TapPoint;

std::span<const Proj> projections(Sublayer part) {
  static const Proj kAttn[] = {{"q_proj", &LayerWeights::q, TapPoint::kAttnIn},
                               {"k_proj", &LayerWeights::k, TapPoint::kAttnIn},
                               {"v_proj", &LayerWeights::v, TapPoint::kAttnIn},
                               {"o_proj", &LayerWeights::o, TapPoint::kAttnOut}};
  static const Proj kMlp[] = {{"gate_proj", &LayerWeights::gate, TapPoint::kFfnIn},
                              {"up_proj", &LayerWeights::up, TapPoint::kFfnIn},
                              {"down_proj", &LayerWeights::down, TapPoint::kFfnMid}};
  if (part == Sublayer::kAttention) return kAttn;
  return kMlp;
}

std::string sublayer_name(int64_t layer, Sublayer part) {
  return fmt::format("model.layers.{}.{}", layer, part == Sublayer::kAttention ? "self_attn" : "mlp");
}

std::string Layout::key() const { return fmt::format("{:.2f}/g{}", bpw, group); }

std::vector<quant::Exl2Group> layout_groups(const Layout& l, const ops::Weight& w) {
  return quant::exl2_groups_for_bpw(l.bpw, w.cols, w.rows, l.group);
}

double layout_bits(const Layout& l, const model::Linear& lin) {
  return quant::exl2_bits_per_weight(lin.w.cols, lin.w.rows, layout_groups(l, lin.w), lin.bias != nullptr) *
         double(lin.w.rows * lin.w.cols);
}

Calibration::Calibration(const model::Model& model, ops::Ops& ops, std::span<const int32_t> tokens, int64_t rows,
                         int64_t length)
    : runner_(model, ops),
      ws_(ops),
      scratch_(model.config(), length, ops),
      xb_(ops, size_t(length * model.config().hidden_size) * sizeof(float)),
      rows_(rows),
      length_(length),
      hidden_(model.config().hidden_size) {
  if (int64_t(tokens.size()) != rows * length)
    fail(ErrorKind::kInternal, "calibration: {} tokens for {} windows of {}", tokens.size(), rows, length);
  // Packed EXL2 matmuls only serve tiny steps; the windows here are long, so keep the float path.
  runner_.set_packed_quantized(false);
  x_.resize(size_t(rows * length * hidden_));
  const size_t bytes = size_t(length * hidden_) * sizeof(float);
  for (int64_t r = 0; r < rows; ++r) {
    runner_.embed(tokens.subspan(size_t(r * length), size_t(length)), xb_.f32(), ws_);
    ops.copy_to_host(x_.data() + r * length * hidden_, xb_.data(), bytes);
  }
}

void Calibration::run(int64_t layer, Sublayer part, const LayerWeights* weights, std::vector<float>& out,
                      Hessians* h, std::span<const TapPoint> taps) {
  ops::Ops& ops = runner_.ops();
  // Hessians accumulate where the activations are (the backend).
  if (h && !taps.empty()) {
    runner_.set_tap([&](int64_t, TapPoint point, const float* x, int64_t n, int64_t d) {
      if (std::find(taps.begin(), taps.end(), point) == taps.end()) return;
      auto [it, fresh] = h->try_emplace(point);
      if (fresh) it->second = ops::Buffer(ops, size_t(d * d) * sizeof(double));  // zero-filled
      if (it->second.bytes() != size_t(d * d) * sizeof(double))
        fail(ErrorKind::kInternal, "calibration: Hessian sizes differ at one tap");
      ops.accumulate_gram({static_cast<double*>(it->second.data()), x, n, d});
    });
  }
  out.resize(x_.size());
  const int64_t row = length_ * hidden_;
  const size_t bytes = size_t(row) * sizeof(float);
  try {
    for (int64_t r = 0; r < rows_; ++r) {
      ops.copy_to_backend(xb_.data(), x_.data() + r * row, bytes);
      runner_.run_sublayer(layer, part, xb_.f32(), length_, scratch_, ws_, weights);
      ops.copy_to_host(out.data() + r * row, xb_.data(), bytes);
    }
  } catch (...) {
    runner_.set_tap(nullptr);
    throw;
  }
  runner_.set_tap(nullptr);
}

ops::Buffer Calibration::head_hessian() {
  ops::Ops& ops = runner_.ops();
  ops::Buffer acc(ops, size_t(hidden_ * hidden_) * sizeof(double));
  const size_t bytes = size_t(length_ * hidden_) * sizeof(float);
  for (int64_t r = 0; r < rows_; ++r) {
    ops.copy_to_backend(xb_.data(), x_.data() + r * length_ * hidden_, bytes);
    runner_.final_norm(xb_.f32(), xb_.f32(), length_);
    ops.accumulate_gram({static_cast<double*>(acc.data()), xb_.f32(), length_, hidden_});
  }
  return acc;
}

OutputProbe::OutputProbe(const model::Model& model, ops::Ops& ops, std::span<const int32_t> tokens, int64_t rows,
                         int64_t length)
    : model_(model),
      runner_(model, ops),
      ws_(ops),
      scratch_(model.config(), length, ops),
      xb_(ops, size_t(length * model.config().hidden_size) * sizeof(float)),
      logits_(ops, size_t(length * model.config().vocab_size) * sizeof(float)),
      rows_(rows),
      length_(length) {
  runner_.set_packed_quantized(false);
  Calibration cal(model, ops, tokens, rows, length);
  for (int64_t l = 0; l < model.config().num_layers; ++l)
    for (Sublayer part : {Sublayer::kAttention, Sublayer::kFeedForward}) cal.run(l, part, nullptr, cal.states());
  final_ = std::move(cal.states());
}

void OutputProbe::logprobs(const float* stream_row, std::vector<float>& out) {
  ops::Ops& ops = runner_.ops();
  const int64_t H = model_.config().hidden_size, V = model_.config().vocab_size;
  ops.copy_to_backend(xb_.data(), stream_row, size_t(length_ * H) * sizeof(float));
  runner_.final_norm(xb_.f32(), xb_.f32(), length_);
  runner_.lm_head(xb_.f32(), logits_.f32(), length_);
  out.resize(size_t(length_ * V));
  ops.copy_to_host(out.data(), logits_.data(), out.size() * sizeof(float));
  parallel_for(length_, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* row = out.data() + t * V;
      const float mx = *std::max_element(row, row + V);
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v] - mx));
      const float lse = mx + float(std::log(sum));
      for (int64_t v = 0; v < V; ++v) row[v] -= lse;
    }
  });
}

double OutputProbe::kl(int64_t layer, Sublayer part, std::span<const float> stream) {
  const model::ModelConfig& c = model_.config();
  const int64_t row = length_ * c.hidden_size, V = c.vocab_size;
  if (int64_t(stream.size()) != rows_ * row) fail(ErrorKind::kInternal, "output probe: wrong stream size");
  ops::Ops& ops = runner_.ops();
  std::vector<float> x(static_cast<size_t>(row)), got;
  if (ref_.empty()) {  // the unquantized model's log-probabilities, once
    ref_.resize(size_t(rows_));
    for (int64_t r = 0; r < rows_; ++r) logprobs(final_.data() + r * row, ref_[size_t(r)]);
  }
  double kl = 0;
  for (int64_t r = 0; r < rows_; ++r) {
    // The rest of the model, unquantized, from the perturbed stream.
    ops.copy_to_backend(xb_.data(), stream.data() + r * row, size_t(row) * sizeof(float));
    for (int64_t l = layer; l < c.num_layers; ++l)
      for (Sublayer p : {Sublayer::kAttention, Sublayer::kFeedForward})
        if (l > layer || (p == Sublayer::kFeedForward && part == Sublayer::kAttention))
          runner_.run_sublayer(l, p, xb_.f32(), length_, scratch_, ws_);
    ops.copy_to_host(x.data(), xb_.data(), size_t(row) * sizeof(float));
    logprobs(x.data(), got);
    const std::vector<float>& ref = ref_[size_t(r)];
    std::vector<double> per(static_cast<size_t>(length_));
    parallel_for(length_, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        double s = 0;
        for (int64_t v = t * V; v < (t + 1) * V; ++v) s += std::exp(double(ref[size_t(v)])) * (double(ref[size_t(v)]) - got[size_t(v)]);
        per[size_t(t)] = s;
      }
    });
    for (double s : per) kl += s;
  }
  return kl / double(rows_ * length_);
}

LayerStandIn::LayerStandIn(const LayerWeights& base, ops::Ops& ops) : ops_(ops), base_(base) {
  if (!ops.host_memory()) {  // the host layer's tensors, copied once to the backend
    for (ops::Weight* w : {&base_.attn_norm, &base_.attn_post_norm, &base_.ffn_norm, &base_.ffn_post_norm,
                           &base_.q_norm, &base_.k_norm})
      *w = put(*w);
    for (Sublayer part : {Sublayer::kAttention, Sublayer::kFeedForward})
      for (const Proj& p : projections(part)) {
        model::Linear& l = base_.*p.member;
        l.w = put(l.w);
        if (l.bias) {
          owned_.emplace_back(ops_, size_t(l.w.rows) * sizeof(float));
          ops_.copy_to_backend(owned_.back().data(), l.bias, size_t(l.w.rows) * sizeof(float));
          l.bias = owned_.back().f32();
        }
      }
  }
  for (Sublayer part : {Sublayer::kAttention, Sublayer::kFeedForward})
    for (const Proj& p : projections(part)) (base_.*p.member).exl2 = nullptr;  // run the float path
  w_ = base_;
}

ops::Weight LayerStandIn::put(const ops::Weight& w) {
  if (!w.data) return w;
  const size_t bytes = size_t(w.rows * w.cols) * dtype_size(w.dtype);
  owned_.emplace_back(ops_, bytes);
  ops_.copy_to_backend(owned_.back().data(), w.data, bytes);
  ops::Weight d = w;
  d.data = owned_.back().data();
  return d;
}

void LayerStandIn::set(const Proj& p, const uint16_t* f16) {
  model::Linear& l = w_.*p.member;
  l.w.data = f16;
  l.w.dtype = DType::kF16;
  // The bias stays the model's: GPTQ leaves it alone (the file stores it as float16).
}

}  // namespace lathe::engine::qz
