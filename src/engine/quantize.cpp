#include "engine/quantize.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "engine/quantize_gptq.h"
#include "engine/quantize_measure.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "quant/bitpack.h"
#include "quant/exl2_groups.h"

namespace lathe::engine {

namespace fs = std::filesystem;

QuantAdvice advise_bpw(const model::Model& model, size_t memory_bytes, int64_t ctx, int head_bits, ops::KvQuant kv_quant) {
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
  a.kv_bytes = model::KvPool::block_bytes(c, ctx, ops::fast_kv_dtype(c.head_dim), kv_quant);
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
  using model::Sublayer;
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
  if (!(opt.damp > 0 && opt.damp < 10)) fail(ErrorKind::kInvalidArgument, "--damp {} must be in (0, 10)", opt.damp);
  if (fs::exists(out_dir) && fs::equivalent(out_dir, model.dir()))
    fail(ErrorKind::kInvalidArgument, "the output folder is the model's own folder; choose another");
  const bool measured = !opt.rtn && !opt.uniform;
  const qz::Objective objective = qz::parse_objective(opt.objective);

  // 1. Calibration windows, spread over the whole text so the calibration sees all of it.
  const std::string text = opt.calib.empty() ? std::string(builtin_calibration_text()) : io::read_text_file(opt.calib);
  const std::vector<int32_t> all = tokenizer.encode(text, /*add_special=*/false);
  const int64_t length = std::min<int64_t>(opt.calib_length, c.max_position_embeddings);
  const int64_t rows = std::min<int64_t>(opt.calib_rows, int64_t(all.size()) / length);
  if (rows < 1)
    fail(ErrorKind::kInvalidArgument, "{} has {} tokens; calibration needs at least {} (one window)",
         opt.calib.empty() ? std::string("the built-in calibration text") : opt.calib.string(), all.size(), length);
  auto windows = [&](int64_t n) {  // n windows spread over the whole text
    std::vector<int32_t> t;
    for (int64_t r = 0; r < n; ++r) {
      const int64_t start = (int64_t(all.size()) - length) * r / std::max<int64_t>(1, n - 1);
      t.insert(t.end(), all.begin() + start, all.begin() + start + length);
    }
    return t;
  };
  const std::vector<int32_t> tokens = windows(rows);
  const std::string dataset = opt.calib.empty() ? std::string("(built-in)") : opt.calib.filename().string();
  qz::GptqOptions gptq;
  gptq.damp = opt.damp;
  std::unique_ptr<ops::Ops> own_ops = opt.backend ? nullptr : ops::make_cpu_ops();
  ops::Ops* ops = opt.backend ? opt.backend : own_ops.get();
  fs::create_directories(out_dir);

  QuantizeReport report;
  report.calib_tokens = rows * length;
  const model::ModelWeights& W = model.loader().weights();

  // 2. Each sublayer's layouts: measured and chosen, or one layout everywhere.
  std::vector<std::vector<qz::Layout>> layouts;  // [2 * layer + part][projection]
  if (measured) {
    const fs::path file = opt.measurement.empty() ? out_dir / "measurement.json" : opt.measurement;
    // The measurement runs every candidate over its windows, so it may take fewer of them than the
    // final pass, as ExLlamaV2 does; they depend only on their number, so one measurement serves
    // any --calib-rows.
    const int64_t mrows = opt.measure_rows > 0 ? std::min(opt.measure_rows, rows) : rows;
    const std::vector<int32_t> mtokens = windows(mrows);
    const auto tm = clock::now();
    const auto meas = qz::measure(model, *ops, mtokens, mrows, length,
                                  qz::measurement_identity(model, mtokens, mrows, length, dataset, gptq), file, gptq,
                                  opt.progress, &report.measured);
    report.measure_seconds = std::chrono::duration<double>(clock::now() - tm).count();
    for (const qz::Choice& ch : qz::optimize(meas, model, opt.bpw, objective)) {
      layouts.push_back(ch.layouts);
      report.predicted_err += ch.err;
    }
  } else {
    const qz::Layout one{opt.bpw, opt.bpw < 3.5 ? 32 : 128};
    for (int64_t l = 0; l < c.num_layers; ++l)
      for (Sublayer part : {Sublayer::kAttention, Sublayer::kFeedForward})
        layouts.emplace_back(qz::projections(part).size(), one);
  }

  // 3. Sublayer by sublayer on the current (quantized) states; round-to-nearest needs no states.
  std::unique_ptr<qz::Calibration> cal;
  if (!opt.rtn) {
    cal = std::make_unique<qz::Calibration>(model, *ops, tokens, rows, length);
    if (opt.progress) opt.progress("calibrate", rows, rows);
  }
  std::vector<std::unique_ptr<quant::Exl2Matrix>> layers;
  std::vector<io::NamedTensor> tensors;
  std::map<std::string, bool> replaced;  // original tensor names now stored quantized
  double bits_sum = 0, weights_sum = 0;
  const int64_t steps = 2 * c.num_layers + 1;
  // One projection: GPTQ on the backend against its input's factor, packed for the file; its
  // dequantized weight (float16, backend memory) is written to wq for the stand-in when asked.
  auto quantize_one = [&](const std::string& name, const ops::Weight& host_w, const ops::Weight& w, const float* bias,
                          const qz::GptqFactor& f, const std::vector<quant::Exl2Group>& groups, QuantizedLayer q,
                          uint16_t* wq) {
    q.name = name;
    ops::Buffer own;
    if (!wq) {
      own = ops::Buffer(*ops, size_t(w.rows * w.cols) * sizeof(uint16_t));
      wq = static_cast<uint16_t*>(own.data());
    }
    const qz::GptqResult r = qz::gptq_solve(*ops, f, w, groups, wq);
    layers.push_back(std::make_unique<quant::Exl2Matrix>(qz::gptq_pack(*ops, f, r, bias)));
    q.rel_err = qz::relative_error(*ops, host_w, wq, w.rows, w.cols);
    q.bpw = quant::exl2_bits_per_weight(*layers.back());
    report.layers.push_back(q);
    for (auto& t : quant::exl2_tensors(*layers.back(), name)) tensors.push_back(t);
    // The layer's stored tensors, whatever form they had (a GPTQ input's packed parts included).
    for (const char* part : {".weight", ".bias", ".qweight", ".qzeros", ".scales", ".g_idx"}) replaced[name + part] = true;
  };
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const model::LayerWeights& base = W.layers[size_t(l)];
    for (Sublayer part : {Sublayer::kAttention, Sublayer::kFeedForward}) {
      const std::span<const qz::Proj> projs = qz::projections(part);
      const std::vector<qz::Layout>& lay = layouts[size_t(2 * l + (part == Sublayer::kFeedForward))];
      qz::LayerStandIn standin(base, *ops);
      std::vector<ops::Buffer> quantized;  // the stand-in's dequantized projections
      // Projections reading the same input together (q/k/v, gate/up), then the one reading their
      // quantized outputs (o, down): each Hessian comes from the inputs it will really see.
      for (model::TapPoint tap : {projs.front().tap, projs.back().tap}) {
        qz::Hessians h;
        if (cal) {
          std::vector<float> discard;
          cal->run(l, part, &standin.weights(), discard, &h, std::span<const model::TapPoint>(&tap, 1));
        }
        std::optional<qz::GptqFactor> f;
        for (size_t i = 0; i < projs.size(); ++i) {
          if (projs[i].tap != tap) continue;
          const model::Linear& lin = base.*projs[i].member;
          if (!f) {
            if (cal) f.emplace(*ops, static_cast<const double*>(h.at(tap).data()), lin.w.cols, gptq.damp);
            else f.emplace(*ops, lin.w.cols);
          }
          QuantizedLayer q;
          q.target = lay[i].bpw;
          q.group = lay[i].group;
          quantized.emplace_back(*ops, size_t(lin.w.rows * lin.w.cols) * sizeof(uint16_t));
          auto* wq = static_cast<uint16_t*>(quantized.back().data());
          quantize_one(qz::sublayer_name(l, part) + "." + projs[i].name, lin.w, standin.original(projs[i]), lin.bias, *f,
                       qz::layout_groups(lay[i], lin.w), q, wq);
          bits_sum += report.layers.back().bpw * double(lin.w.rows * lin.w.cols);
          weights_sum += double(lin.w.rows * lin.w.cols);
          standin.set(projs[i], wq);
        }
      }
      if (cal) cal->run(l, part, &standin.weights(), cal->states());  // the next sublayer's input
      if (opt.progress) opt.progress("quantize", 2 * l + (part == Sublayer::kFeedForward) + 1, steps);
    }
  }
  report.bpw = bits_sum / weights_sum;
  {
    const ops::Weight& head = W.lm_head;
    const std::vector<quant::Exl2Group> groups(size_t(head.cols / 128 ? head.cols / 128 : 1),
                                               quant::Exl2Group{opt.head_bits, head.cols / 128 ? 128 : head.cols});
    ops::Buffer hh = cal ? cal->head_hessian() : ops::Buffer();
    const qz::GptqFactor f = cal ? qz::GptqFactor(*ops, static_cast<const double*>(hh.data()), head.cols, gptq.damp)
                                 : qz::GptqFactor(*ops, head.cols);
    ops::Weight wb = head;
    ops::Buffer copy;
    if (!ops->host_memory()) {
      const size_t bytes = size_t(head.rows * head.cols) * dtype_size(head.dtype);
      copy = ops::Buffer(*ops, bytes);
      ops->copy_to_backend(copy.data(), head.data, bytes);
      wb.data = copy.data();
    }
    QuantizedLayer q;
    q.target = opt.head_bits;
    q.group = groups.front().rows;
    quantize_one("lm_head", head, wb, nullptr, f, groups, q, nullptr);
    if (opt.progress) opt.progress("quantize", steps, steps);
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

  const fs::path st = out_dir / "output.safetensors";
  io::write_safetensors(st, tensors, {{"format", "pt"}});
  report.bytes = fs::file_size(st);
  nlohmann::json config = io::read_json_file(model.dir() / "config.json");
  config["quantization_config"] = {{"quant_method", "exl2"},
                                   {"version", "lathe"},
                                   {"converted_from", c.quant.method.empty() ? "float" : c.quant.method},
                                   {"bits", opt.bpw},
                                   {"layout", opt.rtn ? "rtn" : opt.uniform ? "uniform" : "measured"},
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
