#include "engine/quantize_measure.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <algorithm>
#include <map>

#include "core/error.h"
#include "core/parallel.h"
#include "io/json_file.h"

namespace lathe::engine::qz {

namespace fs = std::filesystem;
using model::Sublayer;
using nlohmann::json;

namespace {

// Widths a projection can take (targets of the format's whole accounting, overhead included).
constexpr double kWidths[] = {2.2, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 8.0};
constexpr size_t kNumWidths = sizeof(kWidths) / sizeof(kWidths[0]);
// The configuration whose effect on the model's output is measured in every sublayer (the output
// probe), and on how many calibration windows.
constexpr Layout kProbe{4.0, 128};
constexpr int64_t kProbeRows = 4;
// Below ~4 bits small groups pay for their scales (finer scales matter most at few levels); both
// group sizes are measured there as whole-sublayer candidates, and mixes use this one.
int64_t default_group(double bpw) { return bpw < 3.5 ? 32 : 128; }
Layout width(size_t i) { return {kWidths[i], default_group(kWidths[i])}; }

uint64_t fnv1a(const void* data, size_t bytes, uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// Up to 4096 evenly spaced elements of a weight, with its shape and dtype: enough to tell two
// models (or two fine-tunes of one) apart without reading every byte of a large one.
uint64_t weight_fingerprint(const ops::Weight& w, uint64_t h) {
  const int64_t n = w.rows * w.cols, step = std::max<int64_t>(1, n / 4096);
  const size_t es = dtype_size(w.dtype);
  const int64_t shape[3] = {w.rows, w.cols, int64_t(w.dtype)};
  h = fnv1a(shape, sizeof(shape), h);
  for (int64_t i = 0; i < n && w.data; i += step) h = fnv1a(static_cast<const char*>(w.data) + size_t(i) * es, es, h);
  return h;
}

std::string hex(uint64_t h) { return fmt::format("{:016x}", h); }

json layouts_json(const std::vector<Layout>& ls) {
  json a = json::array();
  for (const Layout& l : ls) a.push_back({l.bpw, l.group});
  return a;
}

std::vector<Layout> layouts_from(const json& a) {
  std::vector<Layout> ls;
  for (const json& l : a) ls.push_back({l.at(0).get<double>(), l.at(1).get<int64_t>()});
  return ls;
}

void save_atomically(const fs::path& file, const json& j) {
  const fs::path tmp = file.string() + ".tmp";
  {
    std::ofstream out(tmp);
    out << j.dump(1) << "\n";
    if (!out) fail(ErrorKind::kIo, "cannot write the measurement to {}", tmp.string());
  }
  fs::rename(tmp, file);  // readers see the old file or the new one, never a torn one
}

// The saved measurement if `file` exists and belongs to `identity`; else a fresh one.
json load_or_start(const fs::path& file, const json& identity) {
  json meas = {{"identity", identity}, {"sublayers", json::object()}};
  if (file.empty() || !fs::exists(file)) return meas;
  json old;
  try {
    old = io::read_json_file(file);
  } catch (const Error& e) {
    fail(ErrorKind::kFormat, "{} is not a lathe measurement ({}); remove it or pass another --measurement file",
         file.string(), e.what());
  }
  if (!old.is_object() || !old.contains("identity") || !old.contains("sublayers") || !old["sublayers"].is_object())
    fail(ErrorKind::kFormat, "{} is not a lathe measurement; remove it or pass another --measurement file",
         file.string());
  for (auto [part, label] : {std::pair{"model", "model"}, {"calibration", "calibration"}, {"settings", "setting"}}) {
    const json& have = old["identity"].value(part, json());
    if (have != identity[part])
      fail(ErrorKind::kInvalidArgument,
           "{} was measured with another {} ({} there, {} here); remove it or pass another --measurement file",
           file.string(), label, have.dump(), identity[part].dump());
  }
  old["identity"] = identity;
  return old;
}

struct Metrics {
  double sse = 0, ref = 0, delta = 0, rfn = 0;
};

// y_q against y (the unquantized sublayer's stream) with x the stream before it, window by window.
Metrics compare(const std::vector<float>& yq, const std::vector<float>& y, const std::vector<float>& x, int64_t rows) {
  const size_t row = y.size() / size_t(rows);
  std::vector<Metrics> per(static_cast<size_t>(rows));  // per window, summed in order below
  parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      double sse = 0, ref = 0, delta = 0;
      for (size_t i = size_t(r) * row; i < size_t(r + 1) * row; ++i) {
        const double e = double(yq[i]) - y[i], d = double(y[i]) - x[i];
        sse += e * e;
        ref += double(y[i]) * y[i];
        delta += d * d;
      }
      per[size_t(r)] = {sse, ref, delta, std::sqrt(sse / std::max(ref, 1e-30)) / double(rows)};
    }
  });
  Metrics m;
  for (const Metrics& p : per) {
    m.sse += p.sse;
    m.ref += p.ref;
    m.delta += p.delta;
    m.rfn += p.rfn;
  }
  return m;
}

// Dequantized candidates of one sublayer's projections (float16 in backend memory), keyed by
// (projection, layout), least recently used evicted first beyond a byte budget; the current
// candidate's are never evicted while it is being assembled.
class DequantCache {
 public:
  using Key = std::pair<size_t, Layout>;
  DequantCache(ops::Ops& ops, size_t budget) : ops_(ops), budget_(budget) {}
  void begin_candidate() {
    pinned_.clear();
  }
  template <typename Make>
  const uint16_t* get(const Key& key, size_t bytes, const Make& make) {
    pinned_.push_back(key);
    auto it = entries_.find(key);
    if (it == entries_.end()) {
      evict(bytes);
      it = entries_.emplace(key, Entry{ops::Buffer(ops_, bytes), 0}).first;
      used_ += bytes;
      make(static_cast<uint16_t*>(it->second.buf.data()));
    }
    it->second.last = ++clock_;
    return static_cast<const uint16_t*>(it->second.buf.data());
  }

 private:
  struct Entry {
    ops::Buffer buf;
    uint64_t last;
  };
  void evict(size_t incoming) {
    while (used_ + incoming > budget_) {
      auto victim = entries_.end();
      for (auto it = entries_.begin(); it != entries_.end(); ++it)
        if (std::find(pinned_.begin(), pinned_.end(), it->first) == pinned_.end() &&
            (victim == entries_.end() || it->second.last < victim->second.last))
          victim = it;
      if (victim == entries_.end()) return;  // only the current candidate's: go over the budget
      used_ -= victim->second.buf.bytes();
      entries_.erase(victim);
    }
  }
  ops::Ops& ops_;
  size_t budget_, used_ = 0;
  uint64_t clock_ = 0;
  std::map<Key, Entry> entries_;
  std::vector<Key> pinned_;
};

// The candidates' cache budget: half of the device's free memory (at least one candidate's
// projections), or 4 GiB of host memory.
size_t cache_budget(ops::Ops& ops, const model::LayerWeights& base, std::span<const Proj> projs) {
  size_t one = 0;
  for (const Proj& p : projs) one += size_t((base.*p.member).w.rows * (base.*p.member).w.cols) * 2;
  const ops::MemoryStats m = ops.memory_stats();
  const size_t budget = m.device_total > m.device_used ? (m.device_total - m.device_used) / 2 : size_t(4) << 30;
  return std::max(budget, one);
}

}  // namespace

std::vector<Candidate> candidates(Sublayer part) {
  const size_t P = projections(part).size();
  std::vector<Candidate> out;
  auto add = [&](std::vector<Layout> ls) { out.push_back({std::move(ls)}); };
  // Every projection at one width; below 4.5 bpw with groups of 32 and of 128.
  for (double w : kWidths) {
    if (w < 4.5) {
      add(std::vector<Layout>(P, Layout{w, 32}));
      add(std::vector<Layout>(P, Layout{w, 128}));
    } else {
      add(std::vector<Layout>(P, Layout{w, default_group(w)}));
    }
  }
  // Mixes, one or two width steps apart (the projections' sensitivities differ: in attention v and
  // o carry the values themselves, k and v are narrow under GQA so more bits cost little; in the
  // feed-forward down reads the widest input).
  for (size_t i = 0; i + 1 < kNumWidths; ++i) {
    const bool two = i + 2 < kNumWidths;
    if (part == Sublayer::kAttention) {
      add({width(i), width(i), width(i + 1), width(i + 1)});     // q, k low; v, o high
      if (two) add({width(i), width(i + 2), width(i + 2), width(i)});  // k, v two steps up
    } else {
      add({width(i), width(i), width(i + 1)});      // down one step up
      if (two) add({width(i), width(i), width(i + 2)});  // down two steps up
    }
  }
  return out;
}

json measurement_identity(const model::Model& model, std::span<const int32_t> tokens, int64_t rows, int64_t length,
                          const std::string& dataset, const GptqOptions& gptq) {
  const model::ModelConfig& c = model.config();
  const model::ModelWeights& W = model.loader().weights();
  uint64_t h = weight_fingerprint(W.embed, 1469598103934665603ull);
  for (const model::LayerWeights& L : W.layers)
    for (Sublayer part : {Sublayer::kAttention, Sublayer::kFeedForward})
      for (const Proj& p : projections(part)) h = weight_fingerprint((L.*p.member).w, h);
  std::string cands;
  for (Sublayer part : {Sublayer::kAttention, Sublayer::kFeedForward})
    for (const Candidate& cand : candidates(part)) cands += layouts_json(cand.layouts).dump();
  return {{"model",
           {{"architecture", c.architecture},
            {"layers", c.num_layers},
            {"hidden", c.hidden_size},
            {"intermediate", c.intermediate_size},
            {"weights", hex(h)}}},
          {"calibration",
           {{"dataset", dataset},
            {"rows", rows},
            {"length", length},
            {"tokens", hex(fnv1a(tokens.data(), tokens.size_bytes()))}}},
          {"settings",
           {{"damp", gptq.damp},
            {"candidates", hex(fnv1a(cands.data(), cands.size()))},
            {"probe", fmt::format("{} on {} windows", kProbe.key(), std::min(rows, kProbeRows))}}}};
}

json measure(const model::Model& model, ops::Ops& ops, std::span<const int32_t> tokens, int64_t rows, int64_t length,
             const json& identity, const fs::path& file, const GptqOptions& gptq, const Progress& progress,
             int64_t* measured) {
  const model::ModelConfig& c = model.config();
  json meas = load_or_start(file, identity);
  json& done = meas["sublayers"];
  const int64_t total = 2 * c.num_layers;
  *measured = 0;
  int64_t have = 0;
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (Sublayer part : {Sublayer::kAttention, Sublayer::kFeedForward}) have += done.contains(sublayer_name(l, part));
  if (have == total) return meas;

  // Layer by layer on the unquantized model's states (the measurement must not depend on the
  // target, so no quantized activations here); measured sublayers only advance the states.
  Calibration cal(model, ops, tokens, rows, length);
  // The output probe's windows: a few of the calibration windows, spread over them.
  std::vector<int64_t> probe_rows;
  std::vector<int32_t> probe_tokens;
  for (int64_t i = 0; i < std::min<int64_t>(rows, kProbeRows); ++i) {
    probe_rows.push_back(i * rows / std::min<int64_t>(rows, kProbeRows));
    probe_tokens.insert(probe_tokens.end(), tokens.begin() + probe_rows.back() * length,
                        tokens.begin() + (probe_rows.back() + 1) * length);
  }
  OutputProbe probe(model, ops, probe_tokens, int64_t(probe_rows.size()), length);
  const size_t row = size_t(length * c.hidden_size);
  std::vector<float> y, yq;
  int64_t step = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const model::LayerWeights& base = model.loader().weights().layers[size_t(l)];
    for (Sublayer part : {Sublayer::kAttention, Sublayer::kFeedForward}) {
      const std::string name = sublayer_name(l, part);
      if (done.contains(name)) {
        cal.run(l, part, nullptr, cal.states());
        if (progress) progress("measure", ++step, total);
        continue;
      }
      const std::span<const Proj> projs = projections(part);
      std::vector<model::TapPoint> taps;
      for (const Proj& p : projs) taps.push_back(p.tap);
      Hessians h;
      cal.run(l, part, nullptr, y, &h, taps);
      // One act-order and inverse factor per input, shared by its projections and layouts.
      std::map<model::TapPoint, GptqFactor> factors;
      for (const Proj& p : projs)
        if (!factors.count(p.tap))
          factors.try_emplace(p.tap, ops, static_cast<const double*>(h.at(p.tap).data()), (base.*p.member).w.cols,
                              gptq.damp);
      LayerStandIn standin(base, ops);
      // Each projection at each layout it appears in, quantized when first needed and kept (float16,
      // backend memory) while the cache's budget allows; candidates needing an evicted one redo it.
      const std::vector<Candidate> cands = candidates(part);
      DequantCache dq(ops, cache_budget(ops, base, projs));
      json entries = json::array(), probed;
      for (const Candidate& cand : cands) {
        double bits = 0;
        dq.begin_candidate();
        for (size_t i = 0; i < projs.size(); ++i) {
          const model::Linear& lin = base.*projs[i].member;
          const ops::Weight& w = standin.original(projs[i]);
          standin.set(projs[i], dq.get({i, cand.layouts[i]}, size_t(w.rows * w.cols) * 2, [&](uint16_t* out) {
            gptq_solve(ops, factors.at(projs[i].tap), w, layout_groups(cand.layouts[i], lin.w), out);
          }));
          bits += layout_bits(cand.layouts[i], lin);
        }
        cal.run(l, part, &standin.weights(), yq);
        const Metrics m = compare(yq, y, cal.states(), rows);
        entries.push_back({{"layouts", layouts_json(cand.layouts)},
                           {"bits", bits},
                           {"sse", m.sse},
                           {"ref", m.ref},
                           {"delta", m.delta},
                           {"rfn", m.rfn}});
        if (cand.layouts == std::vector<Layout>(projs.size(), kProbe)) {
          std::vector<float> stream;
          for (int64_t r : probe_rows) stream.insert(stream.end(), yq.begin() + r * row, yq.begin() + (r + 1) * row);
          probed = {{"candidate", entries.size() - 1}, {"kl", probe.kl(l, part, stream)}};
        }
      }
      done[name] = {{"candidates", std::move(entries)}, {"probe", probed}};
      if (!file.empty()) save_atomically(file, meas);
      ++*measured;
      cal.states().swap(y);
      if (progress) progress("measure", ++step, total);
    }
  }
  return meas;
}

Objective parse_objective(const std::string& name) {
  if (name == "output") return Objective::kOutput;
  if (name == "stream") return Objective::kStream;
  if (name == "delta") return Objective::kDelta;
  if (name == "abs") return Objective::kAbs;
  if (name == "rfn") return Objective::kRfn;
  fail(ErrorKind::kInvalidArgument, "unknown objective '{}' (output, stream, delta, abs or rfn)", name);
}

std::vector<Choice> optimize(const json& measurement, const model::Model& model, double bpw, Objective objective) {
  const model::ModelConfig& c = model.config();
  const model::ModelWeights& W = model.loader().weights();
  double weights = 0;
  for (const model::LayerWeights& L : W.layers)
    for (Sublayer part : {Sublayer::kAttention, Sublayer::kFeedForward})
      for (const Proj& p : projections(part)) weights += double((L.*p.member).w.rows * (L.*p.member).w.cols);
  const double budget = bpw * weights;
  constexpr int64_t kUnits = 100000;
  const double unit = budget / double(kUnits);

  struct Option {
    int64_t cost;
    double err, bits;
    const json* entry;
  };
  std::vector<std::string> names;
  std::vector<std::vector<Option>> slots;
  double floor_bits = 0;
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (Sublayer part : {Sublayer::kAttention, Sublayer::kFeedForward}) {
      names.push_back(sublayer_name(l, part));
      const json* sub = measurement["sublayers"].contains(names.back()) ? &measurement["sublayers"][names.back()]
                                                                         : nullptr;
      if (!sub || !sub->contains("candidates") || sub->at("candidates").empty())
        fail(ErrorKind::kInternal, "the measurement has no entry for {}", names.back());
      const json* entries = &sub->at("candidates");
      // The output probe turns this sublayer's stream errors into the model's output divergence.
      double gain = 1;
      if (objective == Objective::kOutput) {
        const json& pr = sub->at("probe");
        const json& e = entries->at(pr.at("candidate").get<size_t>());
        gain = pr.at("kl").get<double>() / std::max(e.at("sse").get<double>() / e.at("ref").get<double>(), 1e-30);
      }
      std::vector<Option> opts;
      double least = std::numeric_limits<double>::infinity();
      for (const json& e : *entries) {
        const double sse = e.at("sse").get<double>();
        double err = sse;
        if (objective == Objective::kStream || objective == Objective::kOutput)
          err = gain * sse / std::max(e.at("ref").get<double>(), 1e-30);
        if (objective == Objective::kDelta) err = sse / std::max(e.at("delta").get<double>(), 1e-30);
        if (objective == Objective::kRfn) err = e.at("rfn").get<double>();
        const double bits = e.at("bits").get<double>();
        opts.push_back({int64_t(std::ceil(bits / unit)), err, bits, &e});
        least = std::min(least, bits);
      }
      floor_bits += least;
      slots.push_back(std::move(opts));
    }
  if (floor_bits > budget)
    fail(ErrorKind::kInvalidArgument, "--bpw {} is below the smallest measured configuration ({:.3f} bpw)", bpw,
         floor_bits / weights);

  // best[c]: least summed error of the slots so far within c units; pick[s][c]: the option taken.
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> best(size_t(kUnits + 1), 0.0), next(size_t(kUnits + 1));
  std::vector<std::vector<uint16_t>> pick(slots.size(), std::vector<uint16_t>(size_t(kUnits + 1)));
  for (size_t s = 0; s < slots.size(); ++s) {
    std::fill(next.begin(), next.end(), inf);
    for (size_t j = 0; j < slots[s].size(); ++j) {
      const Option& o = slots[s][j];
      for (int64_t u = o.cost; u <= kUnits; ++u) {
        const double v = best[size_t(u - o.cost)] + o.err;
        if (v < next[size_t(u)]) next[size_t(u)] = v, pick[s][size_t(u)] = uint16_t(j);
      }
    }
    best.swap(next);
  }
  int64_t u = kUnits;
  if (!(best[size_t(u)] < inf))
    fail(ErrorKind::kInvalidArgument, "--bpw {} leaves no configuration within the budget", bpw);
  std::vector<Choice> out(slots.size());
  for (size_t s = slots.size(); s-- > 0;) {
    const Option& o = slots[s][pick[s][size_t(u)]];
    out[s] = {names[s], layouts_from(o.entry->at("layouts")), o.bits, o.err};
    u -= o.cost;
  }
  return out;
}

}  // namespace lathe::engine::qz
