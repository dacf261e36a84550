// Op micro-benchmarks, ops/cpu vs ops/ref, at the reference model's shapes (ref-llama-14m: hidden
// 256, intermediate 768, 2 heads x 128 with 1 KV head, vocab 32000, 8 layers, bf16 weights).
//
//   ops_bench [--benchmark_filter=...]
//
// Reports GFLOP/s and GB/s (weights + activations touched once) per case, a model-level forward
// (tokens/s for prefill of 512 tokens and for one decode step at a 512-token context) and, at the
// end, the cpu-over-ref speedup of every case both backends ran.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "ops/ops.h"

namespace lathe::ops {
namespace {

constexpr int64_t kHidden = 256, kInter = 768, kVocab = 32000, kLayers = 8;
constexpr int64_t kHeads = 2, kKvHeads = 1, kHeadDim = 128;

// Work per iteration of each case (by name without the backend suffix), for the summary table.
struct CaseInfo {
  double flops = 0, bytes = 0, tokens = 0;
};
std::map<std::string, CaseInfo>& cases() {
  static std::map<std::string, CaseInfo> m;
  return m;
}

Ops& backend(const std::string& name) {
  static std::unique_ptr<Ops> cpu = make_cpu_ops(), ref = make_ref_ops();
  return name == "cpu" ? *cpu : *ref;
}

std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<uint16_t> random_bf16(size_t n, uint32_t seed, float scale) {
  const std::vector<float> f = random_floats(n, seed, scale);
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = f32_to_bf16(f[i]);
  return h;
}

// ---- matmul ---------------------------------------------------------------------------------

// copies > 1: that many weight matrices are cycled, so their sum exceeds the last-level cache and
// each call streams its weights from DRAM, as a model's layers do.
void BM_Matmul(benchmark::State& state, std::string be, int64_t n, int64_t m, int64_t k, int copies = 1) {
  std::vector<std::vector<uint16_t>> ws;
  for (int c = 0; c < copies; ++c) ws.push_back(random_bf16(size_t(m * k), 1 + uint32_t(c), 0.05f));
  const std::vector<uint16_t>& w = ws[0];
  const std::vector<float> x = random_floats(size_t(n * k), 2);
  std::vector<float> y(size_t(n * m));
  MatmulParams p;
  p.x = x.data();
  p.w = Weight{w.data(), DType::kBF16, m, k};
  p.y = y.data();
  p.n = n;
  Ops& ops = backend(be);
  int i = 0;
  for (auto _ : state) {
    p.w.data = ws[size_t(i++ % copies)].data();
    ops.matmul(p);
    benchmark::DoNotOptimize(y.data());
  }
  const double flops = 2.0 * double(n) * double(m) * double(k);
  const double bytes = 2.0 * double(m * k) + 4.0 * double(n * k + n * m);
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["B/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
}

// EXL2 at 4 bits (groups of 128 input rows), packed words random: every bit pattern is a valid code.
void BM_MatmulExl2(benchmark::State& state, std::string be, int64_t n, int64_t m, int64_t k, int copies) {
  const int64_t G = k / 128, Np = (m + 31) / 32 * 32;
  std::mt19937 rng(7);
  std::vector<std::vector<uint32_t>> qws(size_t(copies), std::vector<uint32_t>(size_t(k / 8 * Np)));
  std::vector<uint32_t> qs(size_t(G * Np / 8));
  for (auto& qw : qws)
    for (auto& v : qw) v = rng();
  const std::vector<uint32_t>& qw = qws[0];
  for (auto& v : qs) v = rng();
  const std::vector<uint16_t> smax(size_t(G), f32_to_f16(0.01f));
  std::vector<int32_t> perm(static_cast<size_t>(k)), groups;
  for (int64_t i = 0; i < k; ++i) perm[size_t(i)] = int32_t(i);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t v : {int64_t(4), int64_t(128), g * 16, g * 128}) groups.push_back(int32_t(v));
  const std::vector<float> x = random_floats(size_t(n * k), 2);
  std::vector<float> y(size_t(n * m));
  Exl2MatmulParams p;
  p.x = x.data();
  p.y = y.data();
  p.n = n;
  p.w.q_weight = qw.data();
  p.w.q_scale = qs.data();
  p.w.q_scale_max = smax.data();
  p.w.perm = perm.data();
  p.w.groups = groups.data();
  p.w.in_features = k;
  p.w.out_features = m;
  p.w.num_groups = G;
  Ops& ops = backend(be);
  int i = 0;
  for (auto _ : state) {
    p.w.q_weight = qws[size_t(i++ % copies)].data();
    ops.matmul_exl2(p);
    benchmark::DoNotOptimize(y.data());
  }
  const double bytes = 4.0 * double(qw.size() + qs.size()) + 4.0 * double(n * k + n * m);
  state.counters["B/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- attention ------------------------------------------------------------------------------

void BM_Attention(benchmark::State& state, std::string be, int64_t n, int64_t kv_len, int64_t heads,
                  int64_t kv_heads, int64_t head_dim) {
  const std::vector<float> q = random_floats(size_t(n * heads * head_dim), 3);
  const std::vector<float> k = random_floats(size_t(kv_len * kv_heads * head_dim), 4);
  const std::vector<float> v = random_floats(size_t(kv_len * kv_heads * head_dim), 5);
  std::vector<float> out(q.size());
  AttentionParams p;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.out = out.data();
  p.n = n;
  p.kv_len = kv_len;
  p.n_heads = heads;
  p.n_kv_heads = kv_heads;
  p.head_dim = head_dim;
  p.scale = 1.f / std::sqrt(float(head_dim));
  Ops& ops = backend(be);
  for (auto _ : state) {
    ops.attention(p);
    benchmark::DoNotOptimize(out.data());
  }
  double visible = 0;  // causal: query t sees kv_len - n + t + 1 keys
  for (int64_t t = 0; t < n; ++t) visible += double(kv_len - n + t + 1);
  const double flops = 4.0 * double(heads) * double(head_dim) * visible;  // QK^T and PV
  const double bytes = 4.0 * (2.0 * double(kv_len * kv_heads * head_dim) + 2.0 * double(q.size()));
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["B/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- whole reference-model forward (ops only: no KV-cache management, no sampling) ----------

struct Model {
  struct Layer {
    std::vector<uint16_t> q, k, v, o, gate, up, down, norm1, norm2;
  };
  std::vector<uint16_t> embed, final_norm;  // tied embeddings: embed doubles as lm_head
  std::vector<Layer> layers;
  Model() {
    uint32_t seed = 10;
    embed = random_bf16(size_t(kVocab * kHidden), seed++, 0.05f);
    final_norm = random_bf16(size_t(kHidden), seed++, 1.f);
    layers.resize(size_t(kLayers));
    for (auto& l : layers) {
      l.q = random_bf16(size_t(kHeads * kHeadDim * kHidden), seed++, 0.05f);
      l.k = random_bf16(size_t(kKvHeads * kHeadDim * kHidden), seed++, 0.05f);
      l.v = random_bf16(size_t(kKvHeads * kHeadDim * kHidden), seed++, 0.05f);
      l.o = random_bf16(size_t(kHidden * kHeads * kHeadDim), seed++, 0.05f);
      l.gate = random_bf16(size_t(kInter * kHidden), seed++, 0.05f);
      l.up = random_bf16(size_t(kInter * kHidden), seed++, 0.05f);
      l.down = random_bf16(size_t(kHidden * kInter), seed++, 0.05f);
      l.norm1 = random_bf16(size_t(kHidden), seed++, 1.f);
      l.norm2 = random_bf16(size_t(kHidden), seed++, 1.f);
    }
  }
};

// n new tokens after `past` cached ones; logits for every new token (perplexity-style prefill).
void BM_ModelForward(benchmark::State& state, std::string be, int64_t n, int64_t past) {
  static const Model model;
  Ops& ops = backend(be);
  const int64_t ctx = past + n, qdim = kHeads * kHeadDim, kvdim = kKvHeads * kHeadDim;
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[size_t(i)] = int32_t((i * 7919) % kVocab);
  std::vector<float> h(size_t(n * kHidden)), xn(h.size()), q(size_t(n * qdim)), att(q.size()), tmp(h.size());
  std::vector<float> g(size_t(n * kInter)), u(g.size()), logits(size_t(n * kVocab));
  std::vector<std::vector<float>> kcache(size_t(kLayers), random_floats(size_t(ctx * kvdim), 7));
  std::vector<std::vector<float>> vcache(size_t(kLayers), random_floats(size_t(ctx * kvdim), 8));
  const std::vector<float> cs = random_floats(size_t(n * kHeadDim / 2), 9), sn = random_floats(cs.size(), 10);
  auto mm = [&](const float* x, const std::vector<uint16_t>& w, int64_t rows, int64_t cols, float* y) {
    MatmulParams p;
    p.x = x;
    p.w = Weight{w.data(), DType::kBF16, rows, cols};
    p.y = y;
    p.n = n;
    ops.matmul(p);
  };
  auto norm = [&](const float* x, const std::vector<uint16_t>& w, float* y) {
    RmsNormParams p;
    p.x = x;
    p.y = y;
    p.w = Weight{w.data(), DType::kBF16, 1, kHidden};
    p.n = n;
    p.dim = kHidden;
    ops.rms_norm(p);
  };
  auto rope = [&](float* x, int64_t heads) {
    RopeParams p;
    p.x = x;
    p.cos = cs.data();
    p.sin = sn.data();
    p.n = n;
    p.n_heads = heads;
    p.head_dim = kHeadDim;
    p.rot_dim = kHeadDim;
    ops.rope(p);
  };
  for (auto _ : state) {
    EmbeddingParams ep;
    ep.table = Weight{model.embed.data(), DType::kBF16, kVocab, kHidden};
    ep.ids = ids.data();
    ep.out = h.data();
    ep.n = n;
    ops.embedding(ep);
    for (int64_t li = 0; li < kLayers; ++li) {
      const auto& l = model.layers[size_t(li)];
      float* kc = kcache[size_t(li)].data();
      float* vc = vcache[size_t(li)].data();
      norm(h.data(), l.norm1, xn.data());
      mm(xn.data(), l.q, qdim, kHidden, q.data());
      mm(xn.data(), l.k, kvdim, kHidden, kc + past * kvdim);  // new K/V rows land in the cache
      mm(xn.data(), l.v, kvdim, kHidden, vc + past * kvdim);
      rope(q.data(), kHeads);
      rope(kc + past * kvdim, kKvHeads);
      AttentionParams ap;
      ap.q = q.data();
      ap.k = kc;
      ap.v = vc;
      ap.out = att.data();
      ap.n = n;
      ap.kv_len = ctx;
      ap.n_heads = kHeads;
      ap.n_kv_heads = kKvHeads;
      ap.head_dim = kHeadDim;
      ap.scale = 1.f / std::sqrt(float(kHeadDim));
      ops.attention(ap);
      mm(att.data(), l.o, kHidden, qdim, tmp.data());
      ops.add(h.data(), tmp.data(), n * kHidden);
      norm(h.data(), l.norm2, xn.data());
      mm(xn.data(), l.gate, kInter, kHidden, g.data());
      mm(xn.data(), l.up, kInter, kHidden, u.data());
      GluParams gp;
      gp.gate = g.data();
      gp.up = u.data();
      gp.out = g.data();
      gp.n = n;
      gp.dim = kInter;
      ops.glu(gp);
      mm(g.data(), l.down, kHidden, kInter, tmp.data());
      ops.add(h.data(), tmp.data(), n * kHidden);
    }
    norm(h.data(), model.final_norm, xn.data());
    mm(xn.data(), model.embed, kVocab, kHidden, logits.data());
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["tok/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}

// ---- registration ---------------------------------------------------------------------------

void register_all() {
  struct Shape {
    const char* name;
    int64_t m, k;
  };
  const Shape shapes[] = {{"up_k256_m768", kInter, kHidden}, {"down_k768_m256", kHidden, kInter},
                          {"lmhead_k256_m32000", kVocab, kHidden}};
  auto add = [](const std::string& base, const std::string& be, CaseInfo info, benchmark::TimeUnit unit,
                bool slow, auto fn) {
    cases()[base] = info;
    auto* b = benchmark::RegisterBenchmark((base + "/" + be).c_str(), fn);
    b->Unit(unit)->UseRealTime();
    if (be == "ref" && slow) b->Iterations(1);  // the scalar oracle takes seconds here
  };
  for (const std::string be : {"cpu", "ref"}) {
    for (const Shape& s : shapes)
      for (int64_t n : {1, 8, 512}) {
        const double flops = 2.0 * double(n * s.m * s.k);
        const double bytes = 2.0 * double(s.m * s.k) + 4.0 * double(n * s.k + n * s.m);
        add(std::string("matmul_bf16/") + s.name + "/n" + std::to_string(n), be, {flops, bytes, 0},
            benchmark::kMicrosecond, n * s.m * s.k > (1 << 26),
            [=](benchmark::State& st) { BM_Matmul(st, be, n, s.m, s.k); });
      }
    struct Attn {
      const char* name;
      int64_t n, kv, heads, kv_heads;
    };
    const Attn attns[] = {{"attention_h2_kv1_d128/decode/kv512", 1, 512, 2, 1},
                          {"attention_h2_kv1_d128/decode/kv2048", 1, 2048, 2, 1},
                          {"attention_h8_kv2_d128/decode/kv512", 1, 512, 8, 2},
                          {"attention_h8_kv2_d128/decode/kv2048", 1, 2048, 8, 2},
                          {"attention_h2_kv1_d128/prefill/kv512", 512, 512, 2, 1},
                          {"attention_h2_kv1_d128/prefill/kv2048", 2048, 2048, 2, 1}};
    for (const Attn& a : attns) {
      double visible = 0;
      for (int64_t t = 0; t < a.n; ++t) visible += double(a.kv - a.n + t + 1);
      const double flops = 4.0 * double(a.heads * kHeadDim) * visible;
      const double bytes = 4.0 * double(2 * a.kv * a.kv_heads * kHeadDim + 2 * a.n * a.heads * kHeadDim);
      add(a.name, be, {flops, bytes, 0}, benchmark::kMicrosecond, a.n > 1,
          [=](benchmark::State& st) { BM_Attention(st, be, a.n, a.kv, a.heads, a.kv_heads, kHeadDim); });
    }
    // A 7B-model layer, 4-bit EXL2 (8.4 MB) vs bf16 (32 MB), with copies cycled to 256 MB so both
    // stream from DRAM as a model's layers do.
    if (be == "cpu")
      for (int64_t n : {1, 4}) {
        const double flops = 2.0 * double(n) * 4096.0 * 4096.0;
        add("matmul_exl2_4bit/k4096_m4096/n" + std::to_string(n), be,
            {flops, 4096.0 * 4096.0 / 2 + 4096.0 * 4096.0 / 256 + 8.0 * 4096 * double(n), 0}, benchmark::kMicrosecond,
            false, [=](benchmark::State& st) { BM_MatmulExl2(st, be, n, 4096, 4096, 30); });
        add("matmul_bf16/k4096_m4096/n" + std::to_string(n), be,
            {flops, 2.0 * 4096.0 * 4096.0 + 8.0 * 4096 * double(n), 0}, benchmark::kMicrosecond, false,
            [=](benchmark::State& st) { BM_Matmul(st, be, n, 4096, 4096, 8); });
      }
    add("model_forward/prefill512", be, {0, 0, 512}, benchmark::kMillisecond, true,
        [=](benchmark::State& st) { BM_ModelForward(st, be, 512, 0); });
    add("model_forward/decode_ctx512", be, {0, 0, 1}, benchmark::kMillisecond, false,
        [=](benchmark::State& st) { BM_ModelForward(st, be, 1, 511); });
  }
}

// Console output as usual, plus the best (minimum) real time of every case over repetitions: the
// machine may be shared, and the minimum is the least disturbed run.
class BestTimeReporter : public benchmark::ConsoleReporter {
 public:
  std::map<std::string, double> best_seconds;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.iterations <= 0 || r.run_type != Run::RT_Iteration) continue;
      const double sec = r.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(r.time_unit);
      auto [it, fresh] = best_seconds.emplace(r.run_name.function_name, sec);
      if (!fresh) it->second = std::min(it->second, sec);
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

}  // namespace
}  // namespace lathe::ops

int main(int argc, char** argv) {
  using namespace lathe::ops;
  benchmark::Initialize(&argc, argv);
  register_all();
  BestTimeReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  std::printf("\nSummary (best of repetitions; speedup = ref time / cpu time)\n");
  std::printf("%-40s %11s %9s %8s %9s %9s\n", "case", "cpu time", "GFLOP/s", "GB/s", "tok/s", "vs ref");
  for (const auto& [base, info] : cases()) {
    const auto cpu = reporter.best_seconds.find(base + "/cpu");
    if (cpu == reporter.best_seconds.end()) continue;
    const double t = cpu->second;
    const auto ref = reporter.best_seconds.find(base + "/ref");
    char speed[32] = "-";
    if (ref != reporter.best_seconds.end()) std::snprintf(speed, sizeof speed, "%.1fx", ref->second / t);
    std::printf("%-40s %9.1fus %9.1f %8.1f %9.0f %9s\n", base.c_str(), t * 1e6, info.flops / t * 1e-9,
                info.bytes / t * 1e-9, info.tokens / t, speed);
  }
  benchmark::Shutdown();
  return 0;
}
