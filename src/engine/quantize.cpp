#include "engine/quantize.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "quant/bitpack.h"
#include "quant/gptq_solver.h"

namespace lathe::engine {

namespace fs = std::filesystem;

namespace {

// Accumulated input Hessians, one per (layer, tap point); the head's under layer -1.
struct Hessians {
  std::map<std::pair<int64_t, model::TapPoint>, std::vector<double>> h;
  std::map<std::pair<int64_t, model::TapPoint>, int64_t> dim;

  void add(int64_t layer, model::TapPoint point, const float* x, int64_t rows, int64_t d) {
    auto key = std::make_pair(layer, point);
    auto& m = h[key];
    if (m.empty()) {
      m.assign(size_t(d * d), 0.0);
      dim[key] = d;
    }
    quant::accumulate_hessian(m.data(), x, rows, d);
  }
  const double* get(int64_t layer, model::TapPoint point) const {
    auto it = h.find({layer, point});
    return it == h.end() ? nullptr : it->second.data();
  }
};

// The candidate widths of the measurement (targets for exl2_groups_for_bpw).
const double kCandidates[] = {2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 8.0};

int64_t group_for(double bpw) { return bpw < 3.5 ? 32 : 128; }

// tr(D H D^T) / tr(W H W^T) with D = W - Wq: the layer's relative output error on the calibration
// inputs (H = sum of x^T x), or the plain relative weight error without a Hessian.
double output_error(const std::vector<float>& w, const quant::Exl2Matrix& m, const double* h) {
  const int64_t N = m.out_features, K = m.in_features;
  std::vector<float> dq(static_cast<size_t>(N * K));
  quant::exl2_dequantize(m, dq.data());
  double num = 0, den = 0;
  std::vector<double> d(static_cast<size_t>(K)), hd(static_cast<size_t>(K)), wh(static_cast<size_t>(K));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) d[size_t(k)] = double(w[size_t(n * K + k)]) - dq[size_t(n * K + k)];
    if (!h) {
      for (int64_t k = 0; k < K; ++k) num += d[size_t(k)] * d[size_t(k)], den += double(w[size_t(n * K + k)]) * w[size_t(n * K + k)];
      continue;
    }
    parallel_for(K, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const double* hi = h + i * K;
        double a = 0, b = 0;
        for (int64_t k = 0; k < K; ++k) a += hi[k] * d[size_t(k)], b += hi[k] * double(w[size_t(n * K + k)]);
        hd[size_t(i)] = a;
        wh[size_t(i)] = b;
      }
    });
    for (int64_t k = 0; k < K; ++k) num += d[size_t(k)] * hd[size_t(k)], den += double(w[size_t(n * K + k)]) * wh[size_t(k)];
  }
  return den > 0 ? num / den : 0.0;
}

std::vector<float> to_f32(const ops::Weight& w) {
  std::vector<float> out(size_t(w.rows * w.cols));
  convert_to_f32(w.data, w.dtype, out.data(), out.size());
  return out;
}

}  // namespace

QuantAdvice advise_bpw(const model::Model& model, size_t memory_bytes, int64_t ctx, int head_bits) {
  const model::ModelConfig& c = model.config();
  if (ctx < 1) fail(ErrorKind::kInvalidArgument, "--ctx must be positive");
  double linear = 0;
  for (const auto& L : model.loader().weights().layers) {
    for (const model::Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
      linear += double(l->w.rows) * double(l->w.cols);
    for (const auto& e : L.experts)
      for (const model::Linear* l : {&e.gate, &e.up, &e.down}) linear += double(l->w.rows) * double(l->w.cols);
  }
  const double head = double(c.vocab_size) * double(c.hidden_size);
  const double embed_bytes = head * 2.0;  // float16
  QuantAdvice a;
  // The GPU's K/V cache in fast precision (the default for generation).
  a.kv_bytes = model::KvPool::block_bytes(c, ctx, ops::fast_kv_dtype(c.head_dim));
  // Activations of a 512-token step and one row of logits, plus the runtime's own reserve.
  a.other_bytes = size_t(8 * std::max(c.hidden_size, c.intermediate_size) + c.vocab_size) * sizeof(float) * 512 +
                  (size_t(512) << 20);
  for (int step = 110; step >= 0; --step) {  // 8.0 down to 2.5 bpw
    const double bpw = 2.5 + 0.05 * step;
    a.bpw = bpw;
    a.weight_bytes = size_t(linear * bpw / 8.0 + head * (head_bits + 0.1) / 8.0 + embed_bytes);
    if (a.total() <= memory_bytes) {
      a.fits = true;
      return a;
    }
  }
  return a;
}

QuantizeReport quantize_exl2(const model::Model& model, const tok::Tokenizer& tokenizer, const fs::path& out_dir,
                             const QuantizeOptions& opt) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const model::ModelConfig& c = model.config();
  // GPTQ input is converted: its layers load dequantized, and are calibrated and quantized from
  // there like float weights. EXL2 input would only stack a second rounding on the first.
  if (!c.quant.method.empty() && c.quant.method != "gptq")
    fail(ErrorKind::kInvalidArgument, "{} is already quantized ({}); quantize the original model instead",
         model.dir().string(), c.quant.method);
  if (model.arch().moe || model.arch().fused_qkv || model.arch().fused_gate_up)
    fail(ErrorKind::kUnsupported, "lathe quantize does not handle {} yet (MoE and fused projections)", c.architecture);
  if (!(opt.bpw >= 2.5 && opt.bpw <= 8.0))
    fail(ErrorKind::kInvalidArgument, "--bpw {} is outside what EXL2 can store here (2.5 to 8.0)", opt.bpw);
  if (!quant::exl2_bits_supported(opt.head_bits))
    fail(ErrorKind::kInvalidArgument, "--head-bits {} is not an EXL2 width (2, 3, 4, 5, 6, 8)", opt.head_bits);
  if (opt.calib_rows < 1 || opt.calib_length < 16)
    fail(ErrorKind::kInvalidArgument, "calibration needs at least one window of 16 or more tokens");
  if (fs::exists(out_dir) && fs::equivalent(out_dir, model.dir()))
    fail(ErrorKind::kInvalidArgument, "the output folder is the model's own folder; choose another");

  // 1. Calibration: windows of the tokenized text through the model, Hessians at every tap.
  const std::string text = opt.calib.empty() ? std::string(builtin_calibration_text()) : io::read_text_file(opt.calib);
  const std::vector<int32_t> tokens = tokenizer.encode(text, /*add_special=*/false);
  const int64_t length = std::min<int64_t>(opt.calib_length, c.max_position_embeddings);
  const int64_t rows = std::min<int64_t>(opt.calib_rows, int64_t(tokens.size()) / length);
  if (rows < 1)
    fail(ErrorKind::kInvalidArgument, "{} has {} tokens; calibration needs at least {} (one window)",
         opt.calib.empty() ? std::string("the built-in calibration text") : opt.calib.string(), tokens.size(), length);
  auto ops = ops::make_cpu_ops();
  model::Runner runner(model, *ops);
  Hessians hs;
  runner.set_tap([&](int64_t layer, model::TapPoint point, const float* x, int64_t n, int64_t d) {
    hs.add(layer, point, x, n, d);
  });
  {
    model::KvCache cache(c, length, *ops);
    model::Workspace ws(*ops);
    Tensor logits;
    for (int64_t r = 0; r < rows; ++r) {
      cache.clear();
      // Windows spread over the whole text, so the calibration sees all of it.
      const int64_t start = (int64_t(tokens.size()) - length) * r / std::max<int64_t>(1, rows - 1);
      runner.forward(std::span<const int32_t>(tokens.data() + start, size_t(length)), cache, ws,
                     model::LogitsFor::kAll, &logits);
      if (opt.progress) opt.progress("calibrate", r + 1, rows);
    }
  }
  runner.set_tap(nullptr);

  // 2. Every decoder linear layer by GPTQ, then the head.
  QuantizeReport report;
  report.calib_tokens = rows * length;
  const model::ModelWeights& W = model.loader().weights();
  const int64_t group = opt.bpw < 3.5 ? 32 : 128;
  std::vector<std::unique_ptr<quant::Exl2Matrix>> layers;
  std::vector<io::NamedTensor> tensors;
  std::map<std::string, bool> replaced;  // original tensor names now stored quantized
  struct Job {
    std::string name;
    const model::Linear* lin;
    int64_t layer;
    model::TapPoint tap;
  };
  std::vector<Job> jobs;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const model::LayerWeights& L = W.layers[size_t(l)];
    const std::string p = fmt::format("model.layers.{}.", l);
    jobs.push_back({p + "self_attn.q_proj", &L.q, l, model::TapPoint::kAttnIn});
    jobs.push_back({p + "self_attn.k_proj", &L.k, l, model::TapPoint::kAttnIn});
    jobs.push_back({p + "self_attn.v_proj", &L.v, l, model::TapPoint::kAttnIn});
    jobs.push_back({p + "self_attn.o_proj", &L.o, l, model::TapPoint::kAttnOut});
    jobs.push_back({p + "mlp.gate_proj", &L.gate, l, model::TapPoint::kFfnIn});
    jobs.push_back({p + "mlp.up_proj", &L.up, l, model::TapPoint::kFfnIn});
    jobs.push_back({p + "mlp.down_proj", &L.down, l, model::TapPoint::kFfnMid});
  }
  // Per-layer widths: measured candidates and the Lagrangian choice, or the target everywhere.
  std::vector<double> target(jobs.size(), opt.bpw);
  if (opt.measure && !opt.rtn) {
    nlohmann::json meas = nlohmann::json::object();
    if (!opt.measurement.empty() && fs::exists(opt.measurement)) meas = io::read_json_file(opt.measurement);
    if (!meas.contains("layers")) meas["layers"] = nlohmann::json::object();
    meas["model"] = model.dir().string();
    for (size_t i = 0; i < jobs.size(); ++i) {
      const Job& j = jobs[i];
      if (!meas["layers"].contains(j.name)) {
        const ops::Weight& w = j.lin->w;
        const std::vector<float> wf = to_f32(w);
        nlohmann::json cands = nlohmann::json::array();
        for (double b : kCandidates) {
          const auto groups = quant::exl2_groups_for_bpw(b, w.cols, w.rows, group_for(b));
          const quant::Exl2Matrix m =
              quant::gptq_quantize_exl2(wf.data(), w.rows, w.cols, hs.get(j.layer, j.tap), groups, nullptr, {});
          cands.push_back({{"target", b},
                           {"bits", quant::exl2_bits_per_weight(m) * double(w.rows * w.cols)},
                           {"err", output_error(wf, m, hs.get(j.layer, j.tap))}});
        }
        meas["layers"][j.name] = cands;
        if (!opt.measurement.empty()) {  // after every layer, atomically: an interruption loses nothing finished
          const fs::path tmp = opt.measurement.string() + ".tmp";
          std::ofstream(tmp) << meas.dump(1) << "\n";
          fs::rename(tmp, opt.measurement);
        }
      }
      if (opt.progress) opt.progress("measure", int64_t(i + 1), int64_t(jobs.size()));
    }
    // Minimise sum(err) + lambda * sum(bits) per layer; bisect lambda for the largest total within budget.
    double budget = 0;
    for (const Job& j : jobs) budget += opt.bpw * double(j.lin->w.rows * j.lin->w.cols);
    auto choose = [&](double lambda, std::vector<double>* pick) {
      double bits = 0;
      for (size_t i = 0; i < jobs.size(); ++i) {
        const auto& cands = meas["layers"][jobs[i].name];
        double best = INFINITY, best_bits = 0, best_target = 0;
        for (const auto& c : cands) {
          const double cost = c["err"].get<double>() + lambda * c["bits"].get<double>();
          if (cost < best) best = cost, best_bits = c["bits"].get<double>(), best_target = c["target"].get<double>();
        }
        bits += best_bits;
        if (pick) (*pick)[i] = best_target;
      }
      return bits;
    };
    double lo = 0, hi = 1;
    while (choose(hi, nullptr) > budget && hi < 1e6) hi *= 2;
    for (int it = 0; it < 60; ++it) {
      const double mid = 0.5 * (lo + hi);
      if (choose(mid, nullptr) > budget) lo = mid;
      else hi = mid;
    }
    choose(hi, &target);
  }

  double bits_sum = 0, weights_sum = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Job& j = jobs[i];
    const ops::Weight& w = j.lin->w;
    const std::vector<float> wf = to_f32(w);
    const double b = target[i];
    const auto groups = quant::exl2_groups_for_bpw(b, w.cols, w.rows, opt.measure && !opt.rtn ? group_for(b) : group);
    QuantizedLayer q;
    q.name = j.name;
    q.target = b;
    layers.push_back(std::make_unique<quant::Exl2Matrix>(quant::gptq_quantize_exl2(
        wf.data(), w.rows, w.cols, opt.rtn ? nullptr : hs.get(j.layer, j.tap), groups, j.lin->bias, {}, &q.rel_err)));
    q.bpw = quant::exl2_bits_per_weight(*layers.back());
    bits_sum += q.bpw * double(w.rows * w.cols);
    weights_sum += double(w.rows * w.cols);
    report.layers.push_back(q);
    for (auto& t : quant::exl2_tensors(*layers.back(), j.name)) tensors.push_back(t);
    // The layer's stored tensors, whatever form they had (a GPTQ input's packed parts included).
    for (const char* part : {".weight", ".bias", ".qweight", ".qzeros", ".scales", ".g_idx"})
      replaced[j.name + part] = true;
    if (opt.progress) opt.progress("quantize", int64_t(i + 1), int64_t(jobs.size() + 1));
  }
  report.bpw = bits_sum / weights_sum;
  {
    const ops::Weight& head = W.lm_head;
    const std::vector<float> wf = to_f32(head);
    const std::vector<quant::Exl2Group> groups(size_t(head.cols / 128 ? head.cols / 128 : 1),
                                               quant::Exl2Group{opt.head_bits, head.cols / 128 ? 128 : head.cols});
    QuantizedLayer q;
    q.name = "lm_head";
    layers.push_back(std::make_unique<quant::Exl2Matrix>(
        quant::gptq_quantize_exl2(wf.data(), head.rows, head.cols,
                                  opt.rtn ? nullptr : hs.get(-1, model::TapPoint::kHeadIn), groups,
                                  nullptr, {}, &q.rel_err)));
    q.bpw = quant::exl2_bits_per_weight(*layers.back());
    report.layers.push_back(q);
    for (auto& t : quant::exl2_tensors(*layers.back(), "lm_head")) tensors.push_back(t);
    for (const char* part : {".weight", ".qweight", ".qzeros", ".scales", ".g_idx"}) replaced[std::string("lm_head") + part] = true;
    if (opt.progress) opt.progress("quantize", int64_t(jobs.size() + 1), int64_t(jobs.size() + 1));
  }

  // 3. Everything else (embedding, norms) as float16, as ExLlamaV2 writes it.
  std::vector<std::vector<uint16_t>> halves;
  const auto names = model.loader().store().names();
  halves.reserve(names.size());
  for (const std::string& name : names) {
    if (replaced.count(name)) continue;
    const TensorView v = *model.loader().store().find(name);
    if (!dtype_is_float(v.dtype)) fail(ErrorKind::kUnsupported, "tensor {} has dtype {}", name, dtype_name(v.dtype));
    std::vector<float> f(size_t(v.numel()));
    convert_to_f32(v.data, v.dtype, f.data(), f.size());
    halves.emplace_back(f.size());
    for (size_t k = 0; k < f.size(); ++k) halves.back()[k] = f32_to_f16(f[k]);
    tensors.push_back({name, TensorView{halves.back().data(), DType::kF16, v.shape}});
  }

  fs::create_directories(out_dir);
  const fs::path st = out_dir / "output.safetensors";
  io::write_safetensors(st, tensors, {{"format", "pt"}});
  report.bytes = fs::file_size(st);
  nlohmann::json config = io::read_json_file(model.dir() / "config.json");
  config["quantization_config"] = {{"quant_method", "exl2"},
                                   {"version", "lathe"},
                                   {"converted_from", c.quant.method.empty() ? "float" : c.quant.method},
                                   {"bits", opt.bpw},
                                   {"head_bits", opt.head_bits},
                                   {"calibration",
                                    {{"rows", rows},
                                     {"length", length},
                                     {"dataset", opt.calib.empty() ? std::string("(built-in)") : opt.calib.filename().string()}}}};
  std::ofstream(out_dir / "config.json") << config.dump(4) << "\n";
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                        "chat_template.jinja", "tokenizer.model"})
    if (fs::exists(model.dir() / f)) fs::copy_file(model.dir() / f, out_dir / f, fs::copy_options::overwrite_existing);
  report.seconds = std::chrono::duration<double>(clock::now() - t0).count();
  return report;
}

}  // namespace lathe::engine
