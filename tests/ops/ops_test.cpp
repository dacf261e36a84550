// Parity of the CPU backend against the scalar reference: every Ops method on fresh seeded random
// inputs over many shapes (odd sizes, every weight dtype, GQA ratios, windows, soft-capping, decode
// against a filled cache and prefill). The criterion is the max absolute error relative to the
// largest reference magnitude, err = max|cpu - ref| / max(max|ref|, 1e-3); each test prints its
// worst case.
//
// Tolerances (float32 math vs the double-accumulating reference):
//   matmul 1e-5 (k up to 4096), attention 2e-5, rms_norm / rope / add / embedding 1e-6,
//   glu and softcap 2e-6 (transcendental approximations are within a few ulp).
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "ops/ops.h"
#include "support/batch_attention.h"
#include "support/parity.h"

namespace lathe::ops {
namespace {

using lathe::testing::HostWeight;
using lathe::testing::random_floats;
using lathe::testing::random_weight;
using lathe::testing::rel_error;
using lathe::testing::Worst;

constexpr double kMatmulTol = 1e-5;
constexpr double kAttentionTol = 2e-5;
constexpr double kExactishTol = 1e-6;
constexpr double kTranscendentalTol = 2e-6;

class OpsParity : public ::testing::Test {
 protected:
  std::unique_ptr<Ops> cpu = make_cpu_ops();
  std::unique_ptr<Ops> ref = make_ref_ops();
  std::mt19937 rng{1234};
};

TEST_F(OpsParity, Name) { EXPECT_STREQ(cpu->name(), "cpu"); }

// A strided copy to the host (a matrix's diagonal: GPTQ's act-order) takes every stride-th element.
TEST_F(OpsParity, CopyToHostStridedTakesTheDiagonal) {
  const int64_t k = 37;
  std::vector<double> m(size_t(k * k));
  for (size_t i = 0; i < m.size(); ++i) m[i] = double(i) * 0.5;
  for (Ops* ops : {cpu.get(), ref.get()}) {
    std::vector<double> diag(size_t(k), -1.0);
    ops->copy_to_host_strided(diag.data(), m.data(), sizeof(double), k, sizeof(double) * size_t(k + 1));
    for (int64_t i = 0; i < k; ++i) EXPECT_EQ(diag[size_t(i)], m[size_t(i * (k + 1))]) << ops->name() << " " << i;
  }
}

// ---- accumulate_gram (the quantizer's input Hessians) ----------------------------------------

// h += x^T x in double, onto what h holds, both triangles; rows past one slice (1024) included.
TEST_F(OpsParity, AccumulateGramAddsXtX) {
  for (const auto& [rows, dim] : {std::pair<int64_t, int64_t>{2, 3}, {1, 1}, {37, 5}, {1500, 7}, {0, 4}}) {
    const std::vector<float> x = random_floats(rng, size_t(rows * dim));
    std::vector<double> h(size_t(dim * dim));
    for (size_t i = 0; i < h.size(); ++i) h[i] = 0.25 * double(i);
    std::vector<double> want = h;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < dim; ++i)
        for (int64_t j = 0; j < dim; ++j) want[size_t(i * dim + j)] += double(x[size_t(r * dim + i)]) * x[size_t(r * dim + j)];
    cpu->accumulate_gram({h.data(), x.data(), rows, dim});
    for (size_t i = 0; i < h.size(); ++i)
      EXPECT_NEAR(h[i], want[i], 1e-12 * (1.0 + std::fabs(want[i]))) << rows << "x" << dim << " at " << i;
  }
  double h = 0;
  const float x = 1.f;
  EXPECT_THROW(cpu->accumulate_gram({&h, &x, -1, 1}), Error);
}

// ---- matmul ---------------------------------------------------------------------------------

void check_matmul(Ops& cpu, Ops& ref, std::mt19937& rng, Worst& worst, int64_t n, int64_t m, int64_t k,
                  DType dtype, bool with_bias) {
  const HostWeight w = random_weight(rng, m, k, dtype);
  const std::vector<float> x = random_floats(rng, size_t(n * k));
  const std::vector<float> bias = random_floats(rng, size_t(m));
  std::vector<float> y_cpu(size_t(n * m), NAN), y_ref(size_t(n * m), NAN);
  MatmulParams p;
  p.x = x.data();
  p.w = w.w;
  p.bias = with_bias ? bias.data() : nullptr;
  p.n = n;
  p.y = y_cpu.data();
  cpu.matmul(p);
  p.y = y_ref.data();
  ref.matmul(p);
  worst.check(rel_error(y_cpu, y_ref), kMatmulTol,
              "n=" + std::to_string(n) + " m=" + std::to_string(m) + " k=" + std::to_string(k) + " " +
                  dtype_name(dtype) + (with_bias ? " bias" : ""));
}

TEST_F(OpsParity, MatmulOddShapesAllDtypes) {
  Worst worst("matmul odd shapes");
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t k : {1, 3, 17, 257, 1000})
      for (int64_t n : {1, 2, 3, 4, 5, 6, 7, 8, 9, 33, 130})
        for (int64_t m : {1, 17, 131})
          for (bool bias : {false, true}) check_matmul(*cpu, *ref, rng, worst, n, m, k, dt, bias);
}

TEST_F(OpsParity, MatmulLongReductionAndModelShapes) {
  Worst worst("matmul long k / model shapes");
  for (DType dt : {DType::kF32, DType::kBF16}) {
    check_matmul(*cpu, *ref, rng, worst, 1, 64, 4096, dt, false);
    check_matmul(*cpu, *ref, rng, worst, 33, 70, 4096, dt, true);
  }
  check_matmul(*cpu, *ref, rng, worst, 512, 768, 256, DType::kBF16, false);
  check_matmul(*cpu, *ref, rng, worst, 200, 256, 768, DType::kBF16, false);
  check_matmul(*cpu, *ref, rng, worst, 8, 1000, 256, DType::kBF16, false);
}

TEST_F(OpsParity, MatmulAnyThreadCount) {
  // Work partitioning must not depend on the thread count (including more threads than cores).
  Worst worst("matmul thread counts");
  const int saved = num_threads();
  for (int threads : {1, 3, 4}) {
    set_num_threads(threads);
    for (int64_t n : {1, 5, 40})
      check_matmul(*cpu, *ref, rng, worst, n, 97, 300, DType::kBF16, true);
  }
  set_num_threads(saved);
}

// ---- attention ------------------------------------------------------------------------------

struct AttnCase {
  int64_t n, kv_len, heads, kv_heads, head_dim, window;
  float softcap;
};

void check_attention(Ops& cpu, Ops& ref, std::mt19937& rng, Worst& worst, const AttnCase& c) {
  // The cache is allocated a little larger than kv_len: ops must only read the first kv_len rows.
  const int64_t cap = c.kv_len + 3;
  const std::vector<float> q = random_floats(rng, size_t(c.n * c.heads * c.head_dim), -2.f, 2.f);
  const std::vector<float> k = random_floats(rng, size_t(cap * c.kv_heads * c.head_dim), -2.f, 2.f);
  const std::vector<float> v = random_floats(rng, size_t(cap * c.kv_heads * c.head_dim));
  std::vector<float> o_cpu(q.size(), NAN), o_ref(q.size(), NAN);
  AttentionParams p;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.n = c.n;
  p.kv_len = c.kv_len;
  p.n_heads = c.heads;
  p.n_kv_heads = c.kv_heads;
  p.head_dim = c.head_dim;
  p.scale = 1.f / std::sqrt(float(c.head_dim));
  p.softcap = c.softcap;
  p.window = c.window;
  p.out = o_cpu.data();
  cpu.attention(p);
  p.out = o_ref.data();
  ref.attention(p);
  char what[160];
  std::snprintf(what, sizeof what, "n=%lld kv=%lld heads=%lld/%lld d=%lld window=%lld softcap=%g",
                (long long)c.n, (long long)c.kv_len, (long long)c.heads, (long long)c.kv_heads,
                (long long)c.head_dim, (long long)c.window, c.softcap);
  worst.check(rel_error(o_cpu, o_ref), kAttentionTol, what);
}

TEST_F(OpsParity, AttentionGqaHeadDimsWindowsSoftcap) {
  Worst worst("attention");
  // (heads, kv_heads): MHA, GQA 2/4/8, MQA.
  const int64_t head_configs[][2] = {{2, 2}, {4, 2}, {8, 2}, {8, 1}, {3, 1}};
  // (n, kv_len): decode against a cache, small chunk, chunked prefill, full prefill.
  const int64_t lengths[][2] = {{1, 300}, {3, 90}, {20, 150}, {70, 70}};
  for (int64_t hd : {16, 32, 64, 80, 96, 128, 256})
    for (const auto& h : head_configs)
      for (const auto& len : lengths)
        for (int64_t window : {0, 17})
          for (float softcap : {0.f, 5.f}) {
            // Keep the run short: the full window x softcap grid only for a few head dims.
            if ((window || softcap > 0) && hd != 64 && hd != 80 && len[0] != 20) continue;
            check_attention(*cpu, *ref, rng, worst, {len[0], len[1], h[0], h[1], hd, window, softcap});
          }
}

TEST_F(OpsParity, AttentionOddHeadDimAndLongContext) {
  Worst worst("attention odd d / long context");
  for (int64_t hd : {1, 17, 72})
    for (int64_t n : {1, 4, 40}) check_attention(*cpu, *ref, rng, worst, {n, 100, 4, 2, hd, 0, 0.f});
  check_attention(*cpu, *ref, rng, worst, {1, 2048, 2, 1, 128, 0, 0.f});   // decode, key splits
  check_attention(*cpu, *ref, rng, worst, {1, 2048, 8, 8, 64, 100, 0.f});  // long ctx + window
  check_attention(*cpu, *ref, rng, worst, {130, 130, 2, 1, 128, 0, 0.f});
  check_attention(*cpu, *ref, rng, worst, {130, 400, 4, 4, 128, 64, 30.f});
}

// Several sequences over a paged pool: the host backends run each sequence on its own (blocks in
// place when consecutive; else the CPU reads them through the table a tile at a time, the
// reference gathers them); the result must equal the per-sequence reference.
TEST_F(OpsParity, AttentionBatchPaged) {
  using lathe::testing::check_batch_attention;
  Worst worst("attention batch (paged)");
  check_batch_attention(*cpu, *ref, rng, worst, {{1, 1, 1}, {5, 40, 17}, 4, 2, 32, 0, 0.f, 4}, kAttentionTol);
  check_batch_attention(*cpu, *ref, rng, worst, {{7, 1, 20}, {7, 90, 60}, 4, 1, 64, 9, 5.f, 8}, kAttentionTol);
  check_batch_attention(*cpu, *ref, rng, worst, {{3, 1}, {300, 64}, 2, 2, 16, 0, 0.f, 64, 2}, kAttentionTol);
  // A long decode split over threads, and a prefill of 40 queries (K^T packed through the table).
  check_batch_attention(*cpu, *ref, rng, worst, {{1, 40}, {1500, 300}, 4, 1, 64, 0, 0.f, 16}, kAttentionTol);
}

TEST_F(OpsParity, AttentionAnyThreadCount) {
  Worst worst("attention thread counts");
  const int saved = num_threads();
  for (int threads : {1, 3}) {
    set_num_threads(threads);
    check_attention(*cpu, *ref, rng, worst, {1, 700, 2, 1, 64, 0, 0.f});
    check_attention(*cpu, *ref, rng, worst, {40, 60, 4, 2, 32, 9, 0.f});
  }
  set_num_threads(saved);
}

// ---- rms_norm / rope ------------------------------------------------------------------------

TEST_F(OpsParity, RmsNormDtypesOffsetsAliasing) {
  Worst worst("rms_norm");
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t dim : {1, 17, 256, 1000})
      for (int64_t n : {1, 5, 33})
        for (float offset : {0.f, 1.f})
          for (bool alias : {false, true}) {
            const HostWeight w = random_weight(rng, 1, dim, dt);
            const std::vector<float> x = random_floats(rng, size_t(n * dim), -3.f, 3.f);
            std::vector<float> y_cpu = x, y_ref(x.size(), NAN);
            RmsNormParams p;
            p.w = w.w;
            p.n = n;
            p.dim = dim;
            p.eps = 1e-5f;
            p.weight_offset = offset;
            p.x = alias ? y_cpu.data() : x.data();
            p.y = y_cpu.data();
            cpu->rms_norm(p);
            p.x = x.data();
            p.y = y_ref.data();
            ref->rms_norm(p);
            worst.check(rel_error(y_cpu, y_ref), kExactishTol,
                        "dim=" + std::to_string(dim) + " n=" + std::to_string(n) + " " + dtype_name(dt) +
                            (alias ? " in-place" : ""));
          }
}

TEST_F(OpsParity, AddRmsNormFused) {
  Worst worst("add_rms_norm");
  for (DType dt : {DType::kF32, DType::kBF16})
    for (int64_t dim : {1, 17, 256, 1000})
      for (int64_t n : {1, 33}) {
        const HostWeight w = random_weight(rng, 1, dim, dt);
        const std::vector<float> x = random_floats(rng, size_t(n * dim), -3.f, 3.f);
        const std::vector<float> delta = random_floats(rng, size_t(n * dim), -3.f, 3.f);
        std::vector<float> x_cpu = x, x_ref = x, y_cpu(x.size(), NAN), y_ref(x.size(), NAN);
        RmsNormParams p;
        p.w = w.w;
        p.n = n;
        p.dim = dim;
        p.weight_offset = 1.f;
        p.y = y_cpu.data();
        cpu->add_rms_norm(x_cpu.data(), delta.data(), p);
        p.y = y_ref.data();
        ref->add_rms_norm(x_ref.data(), delta.data(), p);
        const std::string what = "dim=" + std::to_string(dim) + " n=" + std::to_string(n) + " " + dtype_name(dt);
        worst.check(rel_error(x_cpu, x_ref), 0.0, what + " residual");
        worst.check(rel_error(y_cpu, y_ref), kExactishTol, what + " norm");
      }
}

TEST_F(OpsParity, RopeFullAndPartial) {
  Worst worst("rope");
  for (int64_t hd : {16, 64, 80, 128})
    for (int64_t rot : {hd, hd / 2, int64_t(6)})
      for (int64_t n : {1, 7})
        for (int64_t heads : {1, 3}) {
          const std::vector<float> x = random_floats(rng, size_t(n * heads * hd));
          const std::vector<float> cs = random_floats(rng, size_t(n * rot / 2));
          const std::vector<float> sn = random_floats(rng, size_t(n * rot / 2));
          std::vector<float> x_cpu = x, x_ref = x;
          RopeParams p;
          p.cos = cs.data();
          p.sin = sn.data();
          p.n = n;
          p.n_heads = heads;
          p.head_dim = hd;
          p.rot_dim = rot;
          p.x = x_cpu.data();
          cpu->rope(p);
          p.x = x_ref.data();
          ref->rope(p);
          worst.check(rel_error(x_cpu, x_ref), kExactishTol,
                      "d=" + std::to_string(hd) + " rot=" + std::to_string(rot) + " n=" + std::to_string(n));
        }
}

// ---- glu / embedding / add / softcap --------------------------------------------------------

TEST_F(OpsParity, GluActivationsAndAliasing) {
  Worst worst("glu");
  const Activation acts[] = {Activation::kSilu, Activation::kGeluTanh, Activation::kGelu, Activation::kRelu};
  const char* names[] = {"silu", "gelu_tanh", "gelu", "relu"};
  for (int a = 0; a < 4; ++a)
    for (int64_t dim : {1, 15, 17, 768, 40000})
      for (int64_t n : {1, 3})
        for (int alias : {0, 1, 2}) {  // 0: separate out, 1: out == gate, 2: out == up
          std::vector<float> gate = random_floats(rng, size_t(n * dim), -9.f, 9.f);
          if (gate.size() > 4) {  // saturation: exp overflow must give 0 / x, not NaN
            gate[0] = -120.f;
            gate[1] = 120.f;
            gate[2] = -30.f;
            gate[3] = 0.f;
          }
          const std::vector<float> up = random_floats(rng, size_t(n * dim), -2.f, 2.f);
          std::vector<float> out_ref(gate.size(), NAN), g_cpu = gate, u_cpu = up, out_sep(gate.size(), NAN);
          GluParams p;
          p.n = n;
          p.dim = dim;
          p.act = acts[a];
          p.gate = gate.data();
          p.up = up.data();
          p.out = out_ref.data();
          ref->glu(p);
          p.gate = g_cpu.data();
          p.up = u_cpu.data();
          p.out = alias == 1 ? g_cpu.data() : alias == 2 ? u_cpu.data() : out_sep.data();
          cpu->glu(p);
          const std::vector<float>& got = alias == 1 ? g_cpu : alias == 2 ? u_cpu : out_sep;
          worst.check(rel_error(got, out_ref), kTranscendentalTol,
                      std::string(names[a]) + " dim=" + std::to_string(dim) + " alias=" + std::to_string(alias));
        }
}

TEST_F(OpsParity, EmbeddingDtypesAndBounds) {
  Worst worst("embedding");
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t dim : {1, 17, 256})
      for (float scale : {1.f, 16.f}) {
        const int64_t vocab = 50;
        const HostWeight table = random_weight(rng, vocab, dim, dt);
        const std::vector<int32_t> ids = {0, 49, 7, 7, 23, 1, 48};
        std::vector<float> o_cpu(ids.size() * size_t(dim), NAN), o_ref(o_cpu.size(), NAN);
        EmbeddingParams p;
        p.table = table.w;
        p.ids = ids.data();
        p.n = int64_t(ids.size());
        p.scale = scale;
        p.out = o_cpu.data();
        cpu->embedding(p);
        p.out = o_ref.data();
        ref->embedding(p);
        worst.check(rel_error(o_cpu, o_ref), kExactishTol, std::string(dtype_name(dt)) + " dim=" + std::to_string(dim));
        for (int32_t bad : {-1, 50, 1 << 30}) {
          const std::vector<int32_t> bad_ids = {3, bad};
          p.ids = bad_ids.data();
          p.n = 2;
          try {
            cpu->embedding(p);
            ADD_FAILURE() << "id " << bad << " was accepted";
          } catch (const Error& e) {
            EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
          }
        }
      }
}

TEST_F(OpsParity, AddAndSoftcap) {
  Worst worst("add/softcap");
  for (int64_t n : {1, 15, 16, 17, 100003}) {
    const std::vector<float> x = random_floats(rng, size_t(n), -50.f, 50.f);
    const std::vector<float> y = random_floats(rng, size_t(n), -50.f, 50.f);
    std::vector<float> a_cpu = y, a_ref = y;
    cpu->add(a_cpu.data(), x.data(), n);
    ref->add(a_ref.data(), x.data(), n);
    worst.check(rel_error(a_cpu, a_ref), 0.0, "add n=" + std::to_string(n));
    for (float cap : {30.f, 50.f}) {
      std::vector<float> s_cpu = x, s_ref = x;
      cpu->softcap(s_cpu.data(), n, cap);
      ref->softcap(s_ref.data(), n, cap);
      worst.check(rel_error(s_cpu, s_ref), kTranscendentalTol, "softcap n=" + std::to_string(n));
    }
  }
}

// The library is compiled for several Highway targets (scalar, SSSE3, SSE4, AVX2, AVX-512) and
// picks one at run time; restrict the dispatcher to each target this CPU supports in turn so the
// non-native paths (other tile shapes, lane counts, tails) are checked too.
TEST_F(OpsParity, EveryCompiledTarget) {
  Worst worst("all targets");
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    hwy::SupportedTargets();  // re-evaluates the dispatch choice under the mock
    const std::string tn = hwy::TargetName(target);
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16})
      for (int64_t n : {1, 5, 8, 40}) check_matmul(*cpu, *ref, rng, worst, n, 37, 259, dt, n == 5);
    for (int64_t n : {1, 3, 40})
      for (int64_t hd : {72, 80}) check_attention(*cpu, *ref, rng, worst, {n, 300, 4, 2, hd, n == 3 ? 50 : 0, n == 40 ? 20.f : 0.f});
    for (Activation act : {Activation::kSilu, Activation::kGeluTanh, Activation::kGelu, Activation::kRelu}) {
      const std::vector<float> gate = random_floats(rng, 1003, -9.f, 9.f), up = random_floats(rng, 1003);
      std::vector<float> a(gate.size()), b(gate.size());
      GluParams p;
      p.gate = gate.data();
      p.up = up.data();
      p.n = 1;
      p.dim = int64_t(gate.size());
      p.act = act;
      p.out = a.data();
      cpu->glu(p);
      p.out = b.data();
      ref->glu(p);
      worst.check(rel_error(a, b), kTranscendentalTol, tn + " glu");
    }
    {
      const HostWeight w = random_weight(rng, 1, 300, DType::kBF16);
      const std::vector<float> x = random_floats(rng, 3 * 300);
      std::vector<float> a(x.size()), b(x.size());
      RmsNormParams p;
      p.x = x.data();
      p.w = w.w;
      p.n = 3;
      p.dim = 300;
      p.y = a.data();
      cpu->rms_norm(p);
      p.y = b.data();
      ref->rms_norm(p);
      worst.check(rel_error(a, b), kExactishTol, tn + " rms_norm");
    }
    {
      const std::vector<float> x = random_floats(rng, 2 * 3 * 80), cs = random_floats(rng, 2 * 20),
                               sn = random_floats(rng, 2 * 20);
      std::vector<float> a = x, b = x;
      RopeParams p;
      p.cos = cs.data();
      p.sin = sn.data();
      p.n = 2;
      p.n_heads = 3;
      p.head_dim = 80;
      p.rot_dim = 40;
      p.x = a.data();
      cpu->rope(p);
      p.x = b.data();
      ref->rope(p);
      worst.check(rel_error(a, b), kExactishTol, tn + " rope");
    }
    {
      const std::vector<float> x = random_floats(rng, 1001, -60.f, 60.f);
      std::vector<float> a = x, b = x;
      cpu->softcap(a.data(), int64_t(a.size()), 30.f);
      ref->softcap(b.data(), int64_t(b.size()), 30.f);
      worst.check(rel_error(a, b), kTranscendentalTol, tn + " softcap");
    }
  }
  hwy::SetSupportedTargetsForTest(0);
  hwy::SupportedTargets();
}

}  // namespace
}  // namespace lathe::ops
