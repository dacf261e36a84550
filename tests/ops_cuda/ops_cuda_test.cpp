// Parity of the CUDA backend against the scalar reference: every Ops method on fresh seeded random
// inputs (odd shapes, every weight dtype, GQA/MQA ratios, head dims, windows, soft-capping, decode
// against long caches and full prefill), plus device memory round trips and errors. Skips (loudly)
// when no GPU is present.
//
// Criterion, as in tests/ops: err = max|cuda - ref| / max(max|ref|, 1e-3), printed per test as
// "[ worst ] <test>: <err> at <case>". Tolerances:
//   * 1e-4 for matmul and attention (fp32 math vs the double-accumulating reference).
//   * matmul with n > 8 and BF16/F16 weights runs cuBLAS on activations rounded to the weight dtype
//     (by design: tensor cores, fp32 accumulate). There the reference is computed on x rounded the
//     same way, so the comparison isolates the GEMM itself and stays at 1e-4.
//   * 1e-5 for rms_norm / rope / embedding / glu / softcap / gather / scatter, 0 for add.
//   * 2e-2 for fast-mode prefill attention (bf16 tensor cores): see kAttentionBf16Tol.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "ops/kv_quant.h"
#include "ops/ops.h"
#include "support/batch_attention.h"
#include "support/exl2_case.h"
#include "support/parity.h"

namespace lathe::ops {
namespace {

using lathe::testing::HostWeight;
using lathe::testing::random_floats;
using lathe::testing::random_weight;
using lathe::testing::rel_error;
using lathe::testing::Worst;

constexpr double kMatmulTol = 1e-4;
constexpr double kAttentionTol = 1e-4;
// Fast mode (exact_matmul off) runs prefill attention on bf16 tensor cores: Q, K, V and the softmax
// probabilities are rounded to bf16 (relative error <= 2^-9 each), products accumulate in fp32.
// With q, k ~ U(-2, 2) the scaled scores spread ~1.3, so a score moves by ~4e-3 and each
// probability by ~0.5%; these errors are independent across keys and average out in P V, leaving
// ~1e-3..5e-3 of the output scale. 2e-2 keeps headroom, while an indexing or masking slip (a wrong
// or missing key) shows up as an O(0.1..1) error.
constexpr double kAttentionBf16Tol = 2e-2;
constexpr double kElementTol = 1e-5;

template <typename T>
Buffer upload(Ops& ops, const std::vector<T>& v) {
  Buffer b(ops, v.size() * sizeof(T));
  ops.copy_to_backend(b.data(), v.data(), v.size() * sizeof(T));
  return b;
}

std::vector<float> download(Ops& ops, const void* src, size_t n) {
  std::vector<float> out(n, NAN);
  ops.copy_to_host(out.data(), src, n * sizeof(float));
  return out;
}

// A weight copied to the device; .w points at device memory.
struct DeviceWeight {
  Buffer buf;
  Weight w;
};
DeviceWeight upload(Ops& ops, const HostWeight& hw) {
  DeviceWeight d;
  d.buf = Buffer(ops, hw.bytes());
  ops.copy_to_backend(d.buf.data(), hw.w.data, hw.bytes());
  d.w = hw.w;
  d.w.data = d.buf.data();
  return d;
}

class CudaParity : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount found none): CUDA tests skipped";
    cuda = make_cuda_ops();
    ASSERT_NE(cuda, nullptr) << "a GPU is present but the CUDA backend failed to start (see stderr)";
  }
  std::unique_ptr<Ops> cuda;
  std::unique_ptr<Ops> ref = make_ref_ops();
  std::mt19937 rng{1234};
};

TEST_F(CudaParity, Name) { EXPECT_STREQ(cuda->name(), "cuda"); EXPECT_FALSE(cuda->host_memory()); }

// ---- memory ---------------------------------------------------------------------------------

TEST_F(CudaParity, MemoryRoundTripsAndZeroFill) {
  for (size_t n : {size_t(1), size_t(3), size_t(1000), size_t(1) << 20}) {
    Buffer z(*cuda, n * sizeof(float));
    const auto zeros = download(*cuda, z.data(), n);
    EXPECT_TRUE(std::all_of(zeros.begin(), zeros.end(), [](float v) { return v == 0.f; })) << "alloc not zeroed, n=" << n;
    const auto src = random_floats(rng, n);
    Buffer a = upload(*cuda, src);
    EXPECT_EQ(download(*cuda, a.data(), n), src) << "H2D/D2H round trip, n=" << n;
    // D2D into the middle of a bigger buffer (unaligned offset), then back.
    Buffer b(*cuda, (n + 5) * sizeof(float));
    cuda->copy(b.f32() + 3, a.data(), n * sizeof(float));
    const auto back = download(*cuda, b.data(), n + 5);
    EXPECT_EQ(std::vector<float>(back.begin() + 3, back.begin() + 3 + long(n)), src) << "D2D copy, n=" << n;
    EXPECT_EQ(back[0], 0.f);
    EXPECT_EQ(back[n + 4], 0.f);
  }
  // A strided copy to the host (one cudaMemcpy2D): a float matrix's diagonal and every 3rd element.
  {
    const int64_t k = 513;
    const auto m = random_floats(rng, size_t(k * k));
    Buffer dm = upload(*cuda, m);
    std::vector<float> diag(size_t(k), -1.f), third(size_t(k * k / 3), -1.f);
    cuda->copy_to_host_strided(diag.data(), dm.data(), sizeof(float), k, sizeof(float) * size_t(k + 1));
    cuda->copy_to_host_strided(third.data(), dm.data(), sizeof(float), int64_t(third.size()), 3 * sizeof(float));
    for (int64_t i = 0; i < k; ++i) EXPECT_EQ(diag[size_t(i)], m[size_t(i * (k + 1))]) << i;
    for (size_t i = 0; i < third.size(); ++i) ASSERT_EQ(third[i], m[3 * i]) << i;
  }
  Buffer empty(*cuda, 0);
  EXPECT_NE(empty.data(), nullptr);
  cuda->copy_to_backend(empty.data(), nullptr, 0);
  cuda->synchronize();
}

TEST_F(CudaParity, OutOfMemoryIsOutOfRangeAndRecoverable) {
  try {
    Buffer huge(*cuda, size_t(1) << 50);  // 1 PiB
    ADD_FAILURE() << "a 1 PiB allocation succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kOutOfRange) << e.what();
    EXPECT_NE(std::string(e.what()).find("MiB"), std::string::npos) << e.what();
    std::printf("[ info ] OOM message: %s\n", e.what());
  }
  // The backend keeps working afterwards.
  const auto src = random_floats(rng, 100);
  Buffer a = upload(*cuda, src);
  cuda->add(a.f32(), a.f32(), 100);
  const auto got = download(*cuda, a.data(), 100);
  for (size_t i = 0; i < src.size(); ++i) EXPECT_EQ(got[i], src[i] + src[i]);
}

// ---- matmul ---------------------------------------------------------------------------------

float round_to(DType dt, float v) {
  if (dt == DType::kBF16) return bf16_to_f32(f32_to_bf16(v));
  if (dt == DType::kF16) return f16_to_f32(f32_to_f16(v));
  return v;
}

void check_matmul(Ops& cuda, Ops& ref, std::mt19937& rng, Worst& worst, int64_t n, int64_t m, int64_t k, DType dtype,
                  bool with_bias, bool fast = false) {
  const HostWeight w = random_weight(rng, m, k, dtype);
  const std::vector<float> x = random_floats(rng, size_t(n * k));
  const std::vector<float> bias = random_floats(rng, size_t(m));
  // The fast cuBLAS path (n > 8, 16-bit weights, exact_matmul off) rounds x to the weight dtype:
  // compare like with like. The exact path (default) splits x into hi + lo and must match unrounded.
  std::vector<float> x_ref = x;
  const bool rounded = fast && n > 8 && dtype != DType::kF32;
  if (rounded)
    for (auto& v : x_ref) v = round_to(dtype, v);
  std::vector<float> y_ref(size_t(n * m), NAN);
  MatmulParams p;
  p.x = x_ref.data();
  p.w = w.w;
  p.bias = with_bias ? bias.data() : nullptr;
  p.n = n;
  p.y = y_ref.data();
  ref.matmul(p);

  DeviceWeight dw = upload(cuda, w);
  Buffer dx = upload(cuda, x), db = upload(cuda, bias);
  Buffer dy(cuda, size_t(n * m) * sizeof(float));
  p.x = dx.f32();
  p.w = dw.w;
  p.bias = with_bias ? db.f32() : nullptr;
  p.y = dy.f32();
  cuda.matmul(p);
  worst.check(rel_error(download(cuda, dy.data(), size_t(n * m)), y_ref), kMatmulTol,
              "n=" + std::to_string(n) + " m=" + std::to_string(m) + " k=" + std::to_string(k) + " " +
                  dtype_name(dtype) + (with_bias ? " bias" : "") + (rounded ? " (x rounded)" : ""));
}

TEST_F(CudaParity, MatmulOddShapesAllDtypes) {
  Worst worst("matmul odd shapes");
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t k : {1, 3, 17, 257, 1000})
      for (int64_t n : {1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 130})
        for (int64_t m : {1, 17, 131})
          for (bool bias : {false, true}) check_matmul(*cuda, *ref, rng, worst, n, m, k, dt, bias);
}

TEST_F(CudaParity, MatmulLongReductionAndModelShapes) {
  Worst worst("matmul long k / model shapes");
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int64_t n : {1, 2, 4, 8, 9, 33}) check_matmul(*cuda, *ref, rng, worst, n, 67, 4096, dt, n % 2 == 1);
    check_matmul(*cuda, *ref, rng, worst, 3, 1001, 2048, dt, true);
  }
  check_matmul(*cuda, *ref, rng, worst, 1, 4096, 1024, DType::kBF16, false);
  check_matmul(*cuda, *ref, rng, worst, 512, 768, 256, DType::kBF16, false);
  check_matmul(*cuda, *ref, rng, worst, 200, 256, 768, DType::kBF16, true);
  check_matmul(*cuda, *ref, rng, worst, 130, 250, 1000, DType::kF32, true);
}

TEST_F(CudaParity, MatmulFastPathRoundsActivations) {
  auto fast = make_cuda_ops(BackendOptions{.exact_matmul = false});
  ASSERT_TRUE(fast);
  Worst worst("matmul fast (bf16/f16 x)");
  for (DType dt : {DType::kF16, DType::kBF16})
    for (int64_t n : {9, 33, 130})
      for (int64_t k : {17, 1000, 4096}) check_matmul(*fast, *ref, rng, worst, n, 67, k, dt, n % 2 == 1, /*fast=*/true);
  check_matmul(*fast, *ref, rng, worst, 512, 768, 256, DType::kBF16, false, true);
}

// q/k/v and gate/up in one launch (decode) or one matmul per output (prefill): each output equals
// its own reference matmul.
TEST_F(CudaParity, MatmulMultiMatchesSeparateMatmuls) {
  Worst worst("matmul_multi");
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t n : {1, 3, 8, 9, 40})
      for (int64_t k : {64, 257}) {
        const int64_t rows[3] = {96, 33, 17};
        std::vector<HostWeight> hw;
        std::vector<DeviceWeight> dw;
        std::vector<std::vector<float>> bias;
        std::vector<Buffer> db, dy;
        const std::vector<float> x = random_floats(rng, size_t(n * k));
        Buffer dx = upload(*cuda, x);
        MultiMatmulParams mp;
        mp.x = dx.f32();
        mp.n = n;
        mp.count = 3;
        for (int i = 0; i < 3; ++i) {
          hw.push_back(random_weight(rng, rows[i], k, dt));
          bias.push_back(random_floats(rng, size_t(rows[i])));
        }
        for (int i = 0; i < 3; ++i) {
          dw.push_back(upload(*cuda, hw[size_t(i)]));
          db.push_back(upload(*cuda, bias[size_t(i)]));
          dy.emplace_back(*cuda, size_t(n * rows[i]) * sizeof(float));
          mp.w[i] = dw.back().w;
          mp.bias[i] = i == 1 ? nullptr : db.back().f32();
          mp.y[i] = dy.back().f32();
        }
        cuda->matmul_multi(mp);
        for (int i = 0; i < 3; ++i) {
          std::vector<float> y_ref(size_t(n * rows[i]));
          MatmulParams p;
          p.x = x.data();
          p.w = hw[size_t(i)].w;
          p.bias = i == 1 ? nullptr : bias[size_t(i)].data();
          p.y = y_ref.data();
          p.n = n;
          ref->matmul(p);
          worst.check(rel_error(download(*cuda, dy[size_t(i)].data(), y_ref.size()), y_ref), kMatmulTol,
                      "n=" + std::to_string(n) + " k=" + std::to_string(k) + " out " + std::to_string(i) + " " +
                          dtype_name(dt));
        }
      }
}

TEST_F(CudaParity, MatmulUnalignedOperandsTakeScalarPath) {
  // x starting one float into a buffer: the 16-byte GEMV loads are not allowed and must not be used.
  Worst worst("matmul unaligned x");
  for (DType dt : {DType::kF32, DType::kBF16}) {
    const int64_t n = 3, m = 40, k = 64;
    const HostWeight w = random_weight(rng, m, k, dt);
    const std::vector<float> x = random_floats(rng, size_t(n * k));
    std::vector<float> y_ref(static_cast<size_t>(n * m));
    MatmulParams p;
    p.x = x.data();
    p.w = w.w;
    p.n = n;
    p.y = y_ref.data();
    ref->matmul(p);
    std::vector<float> padded(x.size() + 1, 0.f);
    std::copy(x.begin(), x.end(), padded.begin() + 1);
    Buffer dx = upload(*cuda, padded);
    DeviceWeight dw = upload(*cuda, w);
    Buffer dy(*cuda, size_t(n * m) * sizeof(float));
    p.x = dx.f32() + 1;
    p.w = dw.w;
    p.y = dy.f32();
    cuda->matmul(p);
    worst.check(rel_error(download(*cuda, dy.data(), size_t(n * m)), y_ref), kMatmulTol, dtype_name(dt));
  }
}

// ---- attention ------------------------------------------------------------------------------

struct AttnCase {
  int64_t n, kv_len, heads, kv_heads, head_dim, window;
  float softcap;
  int64_t kv_offset = 0;  // floats the cache starts into its buffer (misaligned K/V)
};

// The scalar reference, split by query rows over host threads for the big prefill cases. A chunk
// of queries [t0, t1) is the same call with n = t1 - t0 and kv_len shortened by n - t1 (each query
// keeps its position), so the result is bit-identical to one call.
void ref_attention(Ops& ref, const AttentionParams& p) {
  const double work = double(p.n) * double(p.kv_len) * double(p.n_heads) * double(p.head_dim);
  const unsigned threads = work < 5e6 ? 1u : std::max(1u, std::min(32u, std::thread::hardware_concurrency()));
  if (threads == 1) return ref.attention(p);
  const int64_t chunk = 8;
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    for (int64_t t0; (t0 = next.fetch_add(chunk)) < p.n;) {
      const int64_t t1 = std::min(p.n, t0 + chunk);
      AttentionParams c = p;
      c.q = p.q + t0 * p.n_heads * p.head_dim;
      c.out = p.out + t0 * p.n_heads * p.head_dim;
      c.n = t1 - t0;
      c.kv_len = p.kv_len - (p.n - t1);
      ref.attention(c);
    }
  };
  std::vector<std::thread> pool;
  for (unsigned i = 0; i < threads; ++i) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
}

// Returns the error (also recorded in `worst` against `tol`).
double check_attention(Ops& cuda, Ops& ref, std::mt19937& rng, Worst& worst, const AttnCase& c,
                       double tol = kAttentionTol) {
  const int64_t cap = c.kv_len + 3;  // ops must read only the first kv_len rows
  const std::vector<float> q = random_floats(rng, size_t(c.n * c.heads * c.head_dim), -2.f, 2.f);
  const std::vector<float> k = random_floats(rng, size_t(cap * c.kv_heads * c.head_dim + c.kv_offset), -2.f, 2.f);
  const std::vector<float> v = random_floats(rng, size_t(cap * c.kv_heads * c.head_dim + c.kv_offset));
  std::vector<float> o_ref(q.size(), NAN);
  AttentionParams p;
  p.q = q.data();
  p.k = k.data() + c.kv_offset;
  p.v = v.data() + c.kv_offset;
  p.n = c.n;
  p.kv_len = c.kv_len;
  p.n_heads = c.heads;
  p.n_kv_heads = c.kv_heads;
  p.head_dim = c.head_dim;
  p.scale = 1.f / std::sqrt(float(c.head_dim));
  p.softcap = c.softcap;
  p.window = c.window;
  p.out = o_ref.data();
  ref_attention(ref, p);

  Buffer dq = upload(cuda, q), dk = upload(cuda, k), dv = upload(cuda, v);
  Buffer dout(cuda, q.size() * sizeof(float));
  p.q = dq.f32();
  p.k = dk.f32() + c.kv_offset;
  p.v = dv.f32() + c.kv_offset;
  p.out = dout.f32();
  cuda.attention(p);
  char what[200];
  std::snprintf(what, sizeof what, "n=%lld kv=%lld heads=%lld/%lld d=%lld window=%lld softcap=%g%s", (long long)c.n,
                (long long)c.kv_len, (long long)c.heads, (long long)c.kv_heads, (long long)c.head_dim,
                (long long)c.window, c.softcap, c.kv_offset ? " misaligned" : "");
  const double err = rel_error(download(cuda, dout.data(), q.size()), o_ref);
  worst.check(err, tol, what);
  return err;
}

TEST_F(CudaParity, AttentionGqaHeadDimsWindowsSoftcap) {
  Worst worst("attention");
  // (heads, kv_heads): MHA, GQA 2/4/8, MQA, odd MQA.
  const int64_t head_configs[][2] = {{2, 2}, {4, 2}, {8, 2}, {16, 2}, {8, 1}, {3, 1}};
  // (n, kv_len): decode against a cache, small chunk, chunked prefill, full prefill.
  const int64_t lengths[][2] = {{1, 300}, {3, 90}, {20, 150}, {70, 70}};
  for (int64_t hd : {16, 64, 80, 96, 128, 256})
    for (const auto& h : head_configs)
      for (const auto& len : lengths)
        for (int64_t window : {0, 17})
          for (float softcap : {0.f, 5.f}) {
            if ((window || softcap > 0) && hd != 64 && hd != 80 && len[0] != 20) continue;
            check_attention(*cuda, *ref, rng, worst, {len[0], len[1], h[0], h[1], hd, window, softcap});
          }
}

TEST_F(CudaParity, AttentionDecodeLongContext) {
  Worst worst("attention decode (split-KV)");
  for (int64_t n : {1, 2, 3, 4})
    for (int64_t kv : {1, 33, 1000, 5000}) {
      if (kv < n) continue;
      check_attention(*cuda, *ref, rng, worst, {n, kv, 8, 2, 128, 0, 0.f});
      if (kv >= 1000) check_attention(*cuda, *ref, rng, worst, {n, kv, 4, 1, 64, 300, 0.f});
    }
  check_attention(*cuda, *ref, rng, worst, {1, 5000, 32, 8, 128, 0, 0.f});
  check_attention(*cuda, *ref, rng, worst, {1, 4096, 8, 8, 256, 0, 30.f});
  check_attention(*cuda, *ref, rng, worst, {1, 3000, 16, 2, 80, 1024, 0.f});
  check_attention(*cuda, *ref, rng, worst, {2, 2500, 12, 4, 96, 0, 0.f});
}

TEST_F(CudaParity, AttentionPrefill) {
  Worst worst("attention prefill");
  for (int64_t n : {1, 2, 31, 32, 33, 130, 300})
    check_attention(*cuda, *ref, rng, worst, {n, n, 8, 2, 128, 0, 0.f});
  check_attention(*cuda, *ref, rng, worst, {300, 300, 32, 32, 64, 0, 0.f});   // enough blocks: no key split
  check_attention(*cuda, *ref, rng, worst, {300, 300, 8, 1, 64, 64, 50.f});  // MQA + window + softcap
  check_attention(*cuda, *ref, rng, worst, {200, 200, 4, 4, 256, 0, 0.f});
  check_attention(*cuda, *ref, rng, worst, {130, 400, 4, 4, 128, 64, 30.f});  // chunked prefill
  check_attention(*cuda, *ref, rng, worst, {250, 250, 6, 2, 80, 100, 0.f});
}

TEST_F(CudaParity, AttentionOddHeadDimsAndMisalignedCache) {
  Worst worst("attention generic head_dim / misaligned");
  for (int64_t hd : {1, 17, 72, 200})
    for (int64_t n : {1, 4, 40}) check_attention(*cuda, *ref, rng, worst, {n, 100, 4, 2, hd, 0, 0.f});
  // A cache starting 1 float into its buffer: the 16-byte tile loads must fall back to scalar.
  check_attention(*cuda, *ref, rng, worst, {1, 700, 4, 2, 128, 0, 0.f, 1});
  check_attention(*cuda, *ref, rng, worst, {50, 50, 4, 2, 64, 0, 0.f, 1});
}

// Several sequences in one launch over a paged pool (continuous batching), exact fp32 kernel and
// the fast mode's tensor-core kernel for the long ones.
TEST_F(CudaParity, AttentionBatchPaged) {
  using lathe::testing::BatchAttnCase;
  using lathe::testing::check_batch_attention;
  Worst worst("attention batch (paged)");
  // decode batch, mixed prefill chunks and decodes, one sequence, long contexts with key splits.
  check_batch_attention(*cuda, *ref, rng, worst, {{1, 1, 1, 1, 1}, {5, 40, 17, 1, 300}, 8, 2, 128, 0, 0.f, 16}, kAttentionTol);
  check_batch_attention(*cuda, *ref, rng, worst, {{7, 1, 33, 2}, {7, 90, 60, 2}, 4, 1, 64, 0, 0.f, 8}, kAttentionTol);
  check_batch_attention(*cuda, *ref, rng, worst, {{3}, {700}, 8, 8, 80, 0, 0.f, 32, 0, DType::kF32, true}, kAttentionTol);
  check_batch_attention(*cuda, *ref, rng, worst, {{1, 2, 1}, {3000, 1500, 64}, 16, 4, 128, 0, 0.f, 64}, kAttentionTol);
  check_batch_attention(*cuda, *ref, rng, worst, {{1, 1}, {900, 20}, 8, 2, 64, 100, 20.f, 16}, kAttentionTol);
  check_batch_attention(*cuda, *ref, rng, worst, {{1, 1, 1}, {5, 700, 64}, 4, 2, 72, 0, 0.f, 10}, kAttentionTol);
  // A recorded decode graph's shape: bounds from the table size, not the lengths.
  check_batch_attention(*cuda, *ref, rng, worst, {{1, 1, 1, 1}, {1, 130, 64, 5}, 8, 2, 128, 0, 0.f, 64, 3}, kAttentionTol);
  auto fast = make_cuda_ops(BackendOptions{.exact_matmul = false});
  check_batch_attention(*fast, *ref, rng, worst, {{100, 1, 130, 70}, {100, 50, 400, 70}, 8, 2, 128, 0, 0.f, 16},
                        kAttentionBf16Tol);
  check_batch_attention(*fast, *ref, rng, worst, {{200, 64}, {230, 64}, 4, 1, 64, 50, 30.f, 32, 0, DType::kF32, true},
                        kAttentionBf16Tol);
  check_batch_attention(*fast, *ref, rng, worst, {{65, 80}, {65, 81}, 4, 4, 256, 0, 0.f, 64, 2}, kAttentionBf16Tol);
}

// Fast mode's bf16 K/V pool. Decode-sized calls (queries x group <= 16 per kv head) take the
// register-resident decode kernel in fp32 math, so against the reference on the same rounded K/V
// they meet the fp32 tolerance: one split, many splits merged by the last block (run twice so the
// split counters are seen to reset), windows and soft-capping, 4 queries x group 4 = 16 rows,
// head_dim 64/128/256, a graph's spare table entries. Longer chunks take the tensor-core kernel
// reading bf16 tiles.
TEST_F(CudaParity, AttentionBatchPagedBf16Cache) {
  using lathe::testing::BatchAttnCase;
  using lathe::testing::check_batch_attention;
  auto fast = make_cuda_ops(BackendOptions{.exact_matmul = false});
  ASSERT_EQ(fast->kv_dtype(128), DType::kBF16);
  ASSERT_EQ(fast->kv_dtype(80), DType::kF32);
  ASSERT_EQ(cuda->kv_dtype(128), DType::kF32);
  const DType bf = DType::kBF16;
  {
    Worst worst("attention batch, bf16 cache, decode kernel");
    for (int rep = 0; rep < 2; ++rep) {
      check_batch_attention(*fast, *ref, rng, worst,
                            {{1, 1, 1, 1, 1}, {5, 40, 17, 1, 300}, 8, 2, 128, 0, 0.f, 16, 0, bf, rep == 1}, kAttentionTol);
      check_batch_attention(*fast, *ref, rng, worst, {{1}, {4000}, 32, 8, 128, 0, 0.f, 16, 0, bf, rep == 1},
                            kAttentionTol);
      check_batch_attention(*fast, *ref, rng, worst, {{1, 1}, {3000, 77}, 8, 1, 64, 0, 0.f, 32, 0, bf}, kAttentionTol);
    }
    check_batch_attention(*fast, *ref, rng, worst, {{1, 1}, {900, 20}, 8, 2, 64, 100, 20.f, 16, 0, bf}, kAttentionTol);
    check_batch_attention(*fast, *ref, rng, worst, {{4, 2, 3}, {4, 700, 90}, 16, 4, 128, 0, 0.f, 16, 0, bf}, kAttentionTol);
    check_batch_attention(*fast, *ref, rng, worst, {{1, 2}, {2500, 9}, 8, 4, 256, 0, 0.f, 32, 0, bf}, kAttentionTol);
    check_batch_attention(*fast, *ref, rng, worst, {{1, 1, 1, 1}, {1, 130, 64, 5}, 8, 2, 128, 0, 0.f, 64, 3, bf},
                          kAttentionTol);
  }
  {
    Worst worst("attention batch, bf16 cache, tensor cores");
    check_batch_attention(*fast, *ref, rng, worst, {{100, 1, 130, 70}, {100, 50, 400, 70}, 8, 2, 128, 0, 0.f, 16, 0, bf},
                          kAttentionBf16Tol);
    check_batch_attention(*fast, *ref, rng, worst, {{8, 1, 3}, {8, 600, 3}, 32, 8, 128, 0, 0.f, 16, 0, bf},
                          kAttentionBf16Tol);
    check_batch_attention(*fast, *ref, rng, worst, {{200, 64}, {230, 64}, 4, 1, 64, 50, 30.f, 32, 0, bf, true},
                          kAttentionBf16Tol);
    check_batch_attention(*fast, *ref, rng, worst, {{65, 80}, {65, 81}, 4, 4, 256, 0, 0.f, 64, 2, bf}, kAttentionBf16Tol);
  }
}

// A quantized pool (--kv-cache q8|q4) in both precision modes: decode-sized calls widen the codes
// in the decode kernel's registers (fp32 math: the fp32 tolerance against the reference on the
// dequantized values), longer chunks in the tensor-core kernel's bf16 tiles.
TEST_F(CudaParity, AttentionBatchPagedQuantizedCache) {
  using lathe::testing::BatchAttnCase;
  using lathe::testing::check_batch_attention;
  auto fast = make_cuda_ops(BackendOptions{.exact_matmul = false});
  EXPECT_TRUE(cuda->supports_kv_quant(128));
  EXPECT_FALSE(cuda->supports_kv_quant(96));
  const auto with = [](BatchAttnCase c, KvQuant q) {
    c.kv_quant = q;
    return c;
  };
  for (KvQuant q : {KvQuant::kQ8, KvQuant::kQ4})
    for (Ops* ops : {cuda.get(), fast.get()}) {
      {
        Worst worst(std::string("attention batch, ") + kv_quant_name(q) + " cache, decode kernel");
        for (int rep = 0; rep < 2; ++rep) {
          check_batch_attention(*ops, *ref, rng, worst, with({{1, 1, 1, 1, 1}, {5, 40, 17, 1, 300}, 8, 2, 128, 0, 0.f, 16}, q),
                                kAttentionTol);
          check_batch_attention(*ops, *ref, rng, worst, with({{1}, {4000}, 32, 8, 128, 0, 0.f, 16}, q), kAttentionTol);
        }
        check_batch_attention(*ops, *ref, rng, worst, with({{1, 1}, {3000, 77}, 8, 1, 64, 0, 0.f, 32}, q), kAttentionTol);
        check_batch_attention(*ops, *ref, rng, worst, with({{1, 1}, {900, 20}, 8, 2, 64, 100, 20.f, 16}, q), kAttentionTol);
        check_batch_attention(*ops, *ref, rng, worst, with({{4, 2, 3}, {4, 700, 90}, 16, 4, 128, 0, 0.f, 16}, q),
                              kAttentionTol);
        check_batch_attention(*ops, *ref, rng, worst, with({{1, 2}, {2500, 9}, 8, 4, 256, 0, 0.f, 32}, q), kAttentionTol);
        check_batch_attention(*ops, *ref, rng, worst, with({{1, 1, 1, 1}, {1, 130, 64, 5}, 8, 2, 128, 0, 0.f, 64, 3}, q),
                              kAttentionTol);
      }
      {
        Worst worst(std::string("attention batch, ") + kv_quant_name(q) + " cache, tensor cores");
        check_batch_attention(*ops, *ref, rng, worst, with({{100, 1, 130, 70}, {100, 50, 400, 70}, 8, 2, 128, 0, 0.f, 16}, q),
                              kAttentionBf16Tol);
        check_batch_attention(*ops, *ref, rng, worst, with({{8, 1, 3}, {8, 600, 3}, 32, 8, 128, 0, 0.f, 16}, q),
                              kAttentionBf16Tol);
        check_batch_attention(*ops, *ref, rng, worst, with({{200, 64}, {230, 64}, 4, 1, 64, 50, 30.f, 32}, q),
                              kAttentionBf16Tol);
        check_batch_attention(*ops, *ref, rng, worst, with({{65, 80}, {65, 81}, 4, 4, 256, 0, 0.f, 64, 2}, q),
                              kAttentionBf16Tol);
      }
    }
}

TEST_F(CudaParity, AttentionRejectsUnsupported) {
  AttentionParams p;
  p.n = 1;
  p.kv_len = 1;
  p.n_heads = 2;
  p.n_kv_heads = 2;
  p.head_dim = 512;
  try {
    cuda->attention(p);
    ADD_FAILURE() << "head_dim 512 was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported) << e.what();
  }
  p.head_dim = 64;
  p.n_kv_heads = 3;
  EXPECT_THROW(cuda->attention(p), Error);
}

// ---- attention on tensor cores (fast mode) ---------------------------------------------------

class CudaFastAttention : public CudaParity {
 protected:
  void SetUp() override {
    CudaParity::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    fast = make_cuda_ops(BackendOptions{.exact_matmul = false});
    ASSERT_NE(fast, nullptr);
  }
  std::unique_ptr<Ops> fast;
};

// Every prefill-like shape (n >= 64, head_dim 64/128) against the reference: odd n (partial row
// blocks and key tiles), kv_len == n and a cached prefix, GQA / MHA / MQA, windows narrower and
// wider than a key tile, soft-capping.
TEST_F(CudaFastAttention, TensorCoresPrefillSweep) {
  Worst worst("attention tensor cores (fast, bf16) sweep");
  const int64_t head_configs[][2] = {{32, 8}, {8, 8}, {16, 1}};
  for (int64_t hd : {64, 128})
    for (int64_t n : {64, 65, 127, 300})
      for (int64_t prefix : {0, 256})
        for (const auto& h : head_configs)
          for (int64_t window : {0, 17, 100})
            for (float softcap : {0.f, 3.f})
              check_attention(*fast, *ref, rng, worst, {n, n + prefix, h[0], h[1], hd, window, softcap},
                              kAttentionBf16Tol);
}

// Long prefill, other group ratios (block row ranges cutting a position's heads apart), key splits
// (few row blocks against a long cache: the combine kernel), head_dim 256.
TEST_F(CudaFastAttention, TensorCoresLongSplitsAndRatios) {
  Worst worst("attention tensor cores (fast, bf16) long/split/ratios");
  const AttnCase cases[] = {
      {1024, 1024, 32, 8, 128, 0, 0.f},  {1024, 1024, 16, 1, 64, 0, 3.f},   {1024, 1280, 8, 8, 128, 300, 0.f},
      {1024, 1024, 8, 8, 64, 1000, 0.f}, {64, 3000, 32, 8, 128, 0, 0.f},    {100, 2100, 16, 1, 64, 700, 0.f},
      {200, 1000, 8, 8, 128, 0, 3.f},    {65, 4000, 4, 4, 64, 0, 0.f},      {200, 200, 12, 4, 128, 0, 0.f},
      {130, 130, 6, 1, 64, 50, 0.f},     {300, 300, 10, 2, 128, 0, 3.f},    {129, 129, 40, 8, 64, 0, 0.f},
      {128, 128, 8, 2, 256, 0, 0.f},     {300, 500, 4, 4, 256, 64, 3.f},    {64, 1500, 4, 1, 256, 0, 0.f},
  };
  for (const AttnCase& c : cases) check_attention(*fast, *ref, rng, worst, c, kAttentionBf16Tol);
}

// Routing: exact mode stays on the fp32 kernel for prefill (its 1e-4 tolerance is far below bf16
// rounding, so a bf16 kernel could not pass it); fast mode really takes the bf16 kernel (an error far
// above fp32 rounding); fast-mode calls the tensor-core kernel does not take (fewer than 64 queries,
// unsupported head_dim, misaligned cache) stay fp32.
TEST_F(CudaFastAttention, TensorCoresRouting) {
  {
    Worst worst("attention prefill, exact mode (fp32 kernel)");
    check_attention(*cuda, *ref, rng, worst, {256, 256, 32, 8, 128, 0, 0.f});
    check_attention(*cuda, *ref, rng, worst, {300, 400, 16, 1, 64, 100, 3.f});
  }
  {
    Worst worst("attention prefill, fast mode takes bf16");
    const double err = check_attention(*fast, *ref, rng, worst, {256, 256, 32, 8, 128, 0, 0.f}, kAttentionBf16Tol);
    EXPECT_GT(err, 1e-5) << "fast mode matched fp32 to " << err << ": the tensor-core kernel did not run";
  }
  {
    Worst worst("attention fast mode, fp32 fallbacks");
    check_attention(*fast, *ref, rng, worst, {63, 63, 8, 2, 128, 0, 0.f});
    check_attention(*fast, *ref, rng, worst, {1, 500, 8, 2, 128, 0, 0.f});
    check_attention(*fast, *ref, rng, worst, {128, 128, 8, 2, 80, 0, 0.f});
    check_attention(*fast, *ref, rng, worst, {128, 128, 8, 2, 128, 0, 0.f, 1});  // misaligned K/V
  }
}

// ---- lowp activations (ops.h) ---------------------------------------------------------------

std::vector<uint16_t> round16(const std::vector<float>& v, DType t) {
  std::vector<uint16_t> r;
  for (float x : v) r.push_back(t == DType::kBF16 ? f32_to_bf16(x) : f32_to_f16(x));
  return r;
}

std::vector<uint16_t> download16(Ops& ops, const void* src, size_t n) {
  std::vector<uint16_t> v(n);
  ops.copy_to_host(v.data(), src, n * 2);
  return v;
}

// A norm's 16-bit copy is exactly its fp32 output rounded (with the fp32 output skipped, and with
// the residual add updating x the same way); a matmul handed x_lowp equals one rounding x itself.
TEST_F(CudaParity, LowpActivationsHandOver) {
  auto fast = make_cuda_ops(BackendOptions{.exact_matmul = false});
  EXPECT_TRUE(fast->lowp_activations(9, DType::kBF16));
  EXPECT_TRUE(fast->lowp_activations(9, DType::kF16));
  EXPECT_FALSE(fast->lowp_activations(8, DType::kBF16));  // GEMV sizes keep fp32 activations
  EXPECT_FALSE(fast->lowp_activations(100, DType::kF32));
  EXPECT_FALSE(cuda->lowp_activations(100, DType::kBF16));  // exact mode
  for (DType lp : {DType::kBF16, DType::kF16})
    for (int64_t dim : {17, 4096})
      for (int64_t n : {1, 40})
        for (bool with_delta : {false, true}) {
          const HostWeight w = random_weight(rng, 1, dim, DType::kBF16);
          const auto x = random_floats(rng, size_t(n * dim), -3.f, 3.f);
          const auto delta = random_floats(rng, x.size());
          DeviceWeight dw = upload(*fast, w);
          Buffer xa = upload(*fast, x), xb = upload(*fast, x), dd = upload(*fast, delta);
          Buffer y32(*fast, x.size() * 4), y16(*fast, x.size() * 2);
          RmsNormParams p;
          p.w = dw.w;
          p.n = n;
          p.dim = dim;
          p.eps = 1e-5f;
          p.x = xa.f32();
          p.y = y32.f32();
          if (with_delta) fast->add_rms_norm(xa.f32(), dd.f32(), p);
          else fast->rms_norm(p);
          p.x = xb.f32();
          p.y = nullptr;
          p.y_lowp = y16.data();
          p.lowp_dtype = lp;
          if (with_delta) fast->add_rms_norm(xb.f32(), dd.f32(), p);
          else fast->rms_norm(p);
          const std::string what = std::string(dtype_name(lp)) + " dim=" + std::to_string(dim) + " n=" +
                                   std::to_string(n) + (with_delta ? " add" : "");
          EXPECT_EQ(download16(*fast, y16.data(), x.size()), round16(download(*fast, y32.data(), x.size()), lp)) << what;
          EXPECT_EQ(download(*fast, xb.data(), x.size()), download(*fast, xa.data(), x.size())) << what;
        }
  for (DType dt : {DType::kBF16, DType::kF16})
    for (int64_t n : {9, 130}) {
      const int64_t m = 67, k = 4096;
      const HostWeight w = random_weight(rng, m, k, dt);
      const auto x = random_floats(rng, size_t(n * k));
      DeviceWeight dw = upload(*fast, w);
      Buffer dx = upload(*fast, x), dxl = upload(*fast, round16(x, dt));
      Buffer y1(*fast, size_t(n * m) * 4), y2(*fast, size_t(n * m) * 4);
      MatmulParams mp;
      mp.w = dw.w;
      mp.n = n;
      mp.x = dx.f32();
      mp.y = y1.f32();
      fast->matmul(mp);
      mp.x = nullptr;
      mp.x_lowp = dxl.data();
      mp.y = y2.f32();
      fast->matmul(mp);
      EXPECT_EQ(download(*fast, y2.data(), size_t(n * m)), download(*fast, y1.data(), size_t(n * m)))
          << dtype_name(dt) << " n=" << n;
    }
}

// ---- rms_norm / rope ------------------------------------------------------------------------

TEST_F(CudaParity, RmsNormDtypesOffsetsAliasing) {
  Worst worst("rms_norm");
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t dim : {1, 17, 256, 1000, 4096})
      for (int64_t n : {1, 5, 33})
        for (float offset : {0.f, 1.f})
          for (bool alias : {false, true}) {
            const HostWeight w = random_weight(rng, 1, dim, dt);
            const std::vector<float> x = random_floats(rng, size_t(n * dim), -3.f, 3.f);
            std::vector<float> y_ref(x.size(), NAN);
            RmsNormParams p;
            p.w = w.w;
            p.n = n;
            p.dim = dim;
            p.eps = 1e-5f;
            p.weight_offset = offset;
            p.x = x.data();
            p.y = y_ref.data();
            ref->rms_norm(p);
            DeviceWeight dw = upload(*cuda, w);
            Buffer dx = upload(*cuda, x);
            Buffer dy(*cuda, x.size() * sizeof(float));
            p.w = dw.w;
            p.x = dx.f32();
            p.y = alias ? dx.f32() : dy.f32();
            cuda->rms_norm(p);
            worst.check(rel_error(download(*cuda, p.y, x.size()), y_ref), kElementTol,
                        "dim=" + std::to_string(dim) + " n=" + std::to_string(n) + " " + dtype_name(dt) +
                            (alias ? " in-place" : ""));
          }
}

TEST_F(CudaParity, RopeFullAndPartial) {
  Worst worst("rope");
  for (int64_t hd : {16, 64, 80, 128, 256})
    for (int64_t rot : {hd, hd / 2, int64_t(6)})
      for (int64_t n : {1, 7, 130})
        for (int64_t heads : {1, 3, 32}) {
          const std::vector<float> x = random_floats(rng, size_t(n * heads * hd));
          const std::vector<float> cs = random_floats(rng, size_t(n * rot / 2));
          const std::vector<float> sn = random_floats(rng, size_t(n * rot / 2));
          std::vector<float> x_ref = x;
          RopeParams p;
          p.cos = cs.data();
          p.sin = sn.data();
          p.n = n;
          p.n_heads = heads;
          p.head_dim = hd;
          p.rot_dim = rot;
          p.x = x_ref.data();
          ref->rope(p);
          Buffer dx = upload(*cuda, x), dc = upload(*cuda, cs), ds = upload(*cuda, sn);
          p.x = dx.f32();
          p.cos = dc.f32();
          p.sin = ds.f32();
          cuda->rope(p);
          worst.check(rel_error(download(*cuda, dx.data(), x.size()), x_ref), kElementTol,
                      "d=" + std::to_string(hd) + " rot=" + std::to_string(rot) + " n=" + std::to_string(n) +
                          " heads=" + std::to_string(heads));
        }
}

// ---- glu / embedding / add / softcap --------------------------------------------------------

TEST_F(CudaParity, GluActivationsAndAliasing) {
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
          std::vector<float> out_ref(gate.size(), NAN);
          GluParams p;
          p.n = n;
          p.dim = dim;
          p.act = acts[a];
          p.gate = gate.data();
          p.up = up.data();
          p.out = out_ref.data();
          ref->glu(p);
          Buffer dg = upload(*cuda, gate), du = upload(*cuda, up);
          Buffer dout(*cuda, gate.size() * sizeof(float));
          p.gate = dg.f32();
          p.up = du.f32();
          p.out = alias == 1 ? dg.f32() : alias == 2 ? du.f32() : dout.f32();
          cuda->glu(p);
          worst.check(rel_error(download(*cuda, p.out, gate.size()), out_ref), kElementTol,
                      std::string(names[a]) + " dim=" + std::to_string(dim) + " alias=" + std::to_string(alias));
        }
}

TEST_F(CudaParity, EmbeddingDtypesAndClamping) {
  Worst worst("embedding");
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t dim : {1, 17, 256, 4096})
      for (float scale : {1.f, 16.f}) {
        const int64_t vocab = 50;
        const HostWeight table = random_weight(rng, vocab, dim, dt);
        const std::vector<int32_t> ids = {0, 49, 7, 7, 23, 1, 48};
        std::vector<float> o_ref(ids.size() * size_t(dim), NAN);
        EmbeddingParams p;
        p.table = table.w;
        p.ids = ids.data();
        p.n = int64_t(ids.size());
        p.scale = scale;
        p.out = o_ref.data();
        ref->embedding(p);
        DeviceWeight dt_w = upload(*cuda, table);
        Buffer dids = upload(*cuda, ids);
        Buffer dout(*cuda, o_ref.size() * sizeof(float));
        p.table = dt_w.w;
        p.ids = static_cast<const int32_t*>(dids.data());
        p.out = dout.f32();
        cuda->embedding(p);
        worst.check(rel_error(download(*cuda, dout.data(), o_ref.size()), o_ref), kElementTol,
                    std::string(dtype_name(dt)) + " dim=" + std::to_string(dim));
        // Documented device behaviour: ids out of range are clamped (the model validates on the host).
        const std::vector<int32_t> bad = {-1, 50};
        Buffer dbad = upload(*cuda, bad);
        p.ids = static_cast<const int32_t*>(dbad.data());
        p.n = 2;
        cuda->embedding(p);
        const auto got = download(*cuda, dout.data(), size_t(2 * dim));
        EXPECT_EQ(got[0], o_ref[0]) << "id -1 should clamp to row 0";
        EXPECT_EQ(got[size_t(dim)], o_ref[size_t(dim)]) << "id 50 should clamp to row 49";
      }
}

TEST_F(CudaParity, AddAndSoftcap) {
  Worst worst("add/softcap");
  for (int64_t n : {1, 15, 16, 17, 100003, 3000000}) {
    const std::vector<float> x = random_floats(rng, size_t(n), -50.f, 50.f);
    const std::vector<float> y = random_floats(rng, size_t(n), -50.f, 50.f);
    std::vector<float> a_ref = y;
    ref->add(a_ref.data(), x.data(), n);
    Buffer dx = upload(*cuda, x), dy = upload(*cuda, y);
    cuda->add(dy.f32(), dx.f32(), n);
    worst.check(rel_error(download(*cuda, dy.data(), size_t(n)), a_ref), 0.0, "add n=" + std::to_string(n));
    for (float cap : {30.f, 50.f}) {
      std::vector<float> s_ref = x;
      ref->softcap(s_ref.data(), n, cap);
      Buffer ds = upload(*cuda, x);
      cuda->softcap(ds.f32(), n, cap);
      worst.check(rel_error(download(*cuda, ds.data(), size_t(n)), s_ref), kElementTol,
                  "softcap n=" + std::to_string(n) + " cap=" + std::to_string(int(cap)));
    }
  }
}

// ---- gather / scatter -----------------------------------------------------------------------

TEST_F(CudaParity, GatherAndScatterAddRows) {
  Worst worst("gather/scatter rows");
  for (int64_t dim : {1, 17, 4096})
    for (int64_t rows : {1, 9, 200}) {
      const std::vector<float> src = random_floats(rng, size_t(rows * dim));
      std::vector<int32_t> perm(static_cast<size_t>(rows));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      const int64_t n = std::max<int64_t>(1, rows / 2 + 1);
      const std::vector<int32_t> idx(perm.begin(), perm.begin() + n);  // unique within the call
      const std::vector<float> w = random_floats(rng, size_t(n), 0.f, 1.f);

      std::vector<float> g_ref(size_t(n * dim), NAN);
      GatherRowsParams g;
      g.src = src.data();
      g.idx = idx.data();
      g.dst = g_ref.data();
      g.n = n;
      g.dim = dim;
      ref->gather_rows(g);
      Buffer dsrc = upload(*cuda, src), didx = upload(*cuda, idx), dw = upload(*cuda, w);
      Buffer dg(*cuda, g_ref.size() * sizeof(float));
      g.src = dsrc.f32();
      g.idx = static_cast<const int32_t*>(didx.data());
      g.dst = dg.f32();
      cuda->gather_rows(g);
      worst.check(rel_error(download(*cuda, dg.data(), g_ref.size()), g_ref), 0.0,
                  "gather dim=" + std::to_string(dim) + " rows=" + std::to_string(rows));

      const std::vector<float> contrib = random_floats(rng, size_t(n * dim));
      std::vector<float> s_ref = src;
      ScatterAddRowsParams s;
      s.dst = s_ref.data();
      s.idx = idx.data();
      s.weight = w.data();
      s.src = contrib.data();
      s.n = n;
      s.dim = dim;
      ref->scatter_add_rows(s);
      Buffer dcontrib = upload(*cuda, contrib);
      s.dst = dsrc.f32();
      s.idx = static_cast<const int32_t*>(didx.data());
      s.weight = dw.f32();
      s.src = dcontrib.f32();
      cuda->scatter_add_rows(s);
      worst.check(rel_error(download(*cuda, dsrc.data(), s_ref.size()), s_ref), kElementTol,
                  "scatter dim=" + std::to_string(dim) + " rows=" + std::to_string(rows));

      // scatter_rows: K/V rows into their cache slots (other rows untouched).
      std::vector<float> c_ref = src;
      ScatterRowsParams c;
      c.dst = c_ref.data();
      c.idx = idx.data();
      c.src = contrib.data();
      c.n = n;
      c.dim = dim;
      ref->scatter_rows(c);
      Buffer dst = upload(*cuda, src);
      c.dst = dst.f32();
      c.idx = static_cast<const int32_t*>(didx.data());
      c.src = dcontrib.f32();
      cuda->scatter_rows(c);
      worst.check(rel_error(download(*cuda, dst.data(), c_ref.size()), c_ref), 0.0,
                  "scatter_rows dim=" + std::to_string(dim) + " rows=" + std::to_string(rows));
    }
}

// ---- fused feed-forward and rope + K/V store ------------------------------------------------

// Fast mode keeps the feed-forward's intermediates in bf16 (x, gate and up rounded once each, as a
// bf16 engine does): relative error ~1e-2 of the output scale. Exact mode and the GEMV sizes run
// the fp32 default and must match to 1e-4.
TEST_F(CudaParity, FfnFusedAndDefault) {
  Worst worst("ffn");
  auto fast = make_cuda_ops(BackendOptions{.exact_matmul = false});
  for (Activation act : {Activation::kSilu, Activation::kGeluTanh})
    for (int64_t n : {3, 9, 40})
      for (int mode = 0; mode < 3; ++mode) {  // exact; fast; fast with gate and up side by side
        const bool use_fast = mode > 0, paired = mode == 2;
        Ops& dev = use_fast ? *fast : *cuda;
        const int64_t hidden = 256, inter = 704;
        const auto x = random_floats(rng, size_t(n * hidden));
        const HostWeight g = random_weight(rng, inter, hidden, DType::kBF16, -0.1f, 0.1f);
        const HostWeight u = random_weight(rng, inter, hidden, DType::kBF16, -0.1f, 0.1f);
        const HostWeight d = random_weight(rng, hidden, inter, DType::kBF16, -0.1f, 0.1f);
        std::vector<float> gbuf(static_cast<size_t>(n * inter)), ubuf(gbuf.size()), want(size_t(n * hidden), NAN);
        FfnParams p;
        p.x = x.data();
        p.gate = g.w;
        p.up = u.w;
        p.down = d.w;
        p.gate_buf = gbuf.data();
        p.up_buf = ubuf.data();
        p.out = want.data();
        p.n = n;
        p.act = act;
        ref->ffn(p);
        DeviceWeight dg = upload(dev, g), du = upload(dev, u), dd = upload(dev, d);
        Buffer pair(dev, g.bytes() + u.bytes());
        dev.copy_to_backend(pair.data(), g.w.data, g.bytes());
        dev.copy_to_backend(static_cast<char*>(pair.data()) + g.bytes(), u.w.data, u.bytes());
        Buffer dx = upload(dev, x), dgb(dev, gbuf.size() * 4), dub(dev, ubuf.size() * 4), dout(dev, want.size() * 4);
        p.x = dx.f32();
        p.gate = dg.w;
        p.up = du.w;
        if (paired) {
          p.gate.data = pair.data();
          p.up.data = static_cast<char*>(pair.data()) + g.bytes();
        }
        p.down = dd.w;
        p.gate_buf = dgb.f32();
        p.up_buf = dub.f32();
        p.out = dout.f32();
        dev.ffn(p);
        const bool lowp = use_fast && n > 8;
        worst.check(rel_error(download(dev, dout.data(), want.size()), want), lowp ? 3e-2 : kMatmulTol,
                    std::string(lowp ? (paired ? "fused bf16 (gate|up one GEMM)" : "fused bf16") : "fp32 default") +
                        " n=" + std::to_string(n) +
                        " act=" + std::to_string(int(act)));
      }
}

// n distinct cache rows out of `rows`, shuffled.
std::vector<int32_t> distinct_slots(std::mt19937& rng, int64_t rows, int64_t n) {
  std::vector<int32_t> slots(static_cast<size_t>(rows));
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(size_t(n));
  return slots;
}

RopeStoreParams rope_store_shape(int64_t n, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t rot_dim) {
  RopeStoreParams p;
  p.n = n;
  p.n_heads = heads;
  p.n_kv_heads = kv_heads;
  p.head_dim = head_dim;
  p.rot_dim = rot_dim;
  return p;
}

// The fused projection's layout (q|k|v interleaved per token, q to a dense q_out, partial rotary
// tails copied): the reference's fp32 results (q_ref, k/v cache rows kc/vc) and the inputs uploaded,
// with `dev` the device call's params, caches left for the test to set.
struct StridedRopeCase {
  int64_t n, row, rows;
  std::vector<float> q_ref, kc, vc;
  Buffer dqkv, dc, ds, dsl, dq;
  RopeStoreParams dev;
};
StridedRopeCase strided_rope_case(Ops& ref, Ops& cuda, std::mt19937& rng, int64_t nh, int64_t hd, int64_t rot, int64_t n) {
  const int64_t nkv = 2, row = nkv * hd, qrow = nh * hd, width = qrow + 2 * row, rows = n + 3, half = rot / 2;
  const auto qkv = random_floats(rng, size_t(n * width));
  const auto cos = random_floats(rng, size_t(n * half)), sin = random_floats(rng, size_t(n * half));
  const std::vector<int32_t> slots = distinct_slots(rng, rows, n);
  StridedRopeCase c{n, row, rows, std::vector<float>(size_t(n * qrow)), std::vector<float>(size_t(rows * row), 0.f),
                    std::vector<float>(size_t(rows * row), 0.f), {}, {}, {}, {}, {}, {}};
  std::vector<float> in = qkv;
  RopeStoreParams p = rope_store_shape(n, nh, nkv, hd, rot);
  p.q = in.data();
  p.k = in.data() + qrow;
  p.v = in.data() + qrow + row;
  p.q_stride = p.k_stride = p.v_stride = width;
  p.q_out = c.q_ref.data();
  p.cos = cos.data();
  p.sin = sin.data();
  p.k_cache = c.kc.data();
  p.v_cache = c.vc.data();
  p.slots = slots.data();
  ref.rope_store_kv(p);
  c.dqkv = upload(cuda, qkv);
  c.dc = upload(cuda, cos);
  c.ds = upload(cuda, sin);
  c.dsl = upload(cuda, slots);
  c.dq = Buffer(cuda, c.q_ref.size() * sizeof(float));
  p.q = c.dqkv.f32();
  p.k = c.dqkv.f32() + qrow;
  p.v = c.dqkv.f32() + qrow + row;
  p.q_out = c.dq.f32();
  p.cos = c.dc.f32();
  p.sin = c.ds.f32();
  p.k_cache = p.v_cache = nullptr;
  p.slots = static_cast<const int32_t*>(c.dsl.data());
  c.dev = p;
  return c;
}

TEST_F(CudaParity, RopeStoreKv) {
  Worst worst("rope_store_kv");
  for (int64_t hd : {64, 96, 128})
    for (int64_t rot : {hd, hd / 2})
      for (int64_t n : {1, 7, 300}) {
        const int64_t nh = 8, nkv = 2, row = nkv * hd, rows = n + 5, half = rot / 2;
        auto q = random_floats(rng, size_t(n * nh * hd));
        auto k = random_floats(rng, size_t(n * row));
        const auto v = random_floats(rng, size_t(n * row));
        const auto cos = random_floats(rng, size_t(n * half)), sin = random_floats(rng, size_t(n * half));
        const std::vector<int32_t> slots = distinct_slots(rng, rows, n);
        const auto kc0 = random_floats(rng, size_t(rows * row)), vc0 = random_floats(rng, size_t(rows * row));
        std::vector<float> qr = q, kr = k, kc = kc0, vc = vc0;
        RopeStoreParams p = rope_store_shape(n, nh, nkv, hd, rot);
        p.q = qr.data();
        p.k = kr.data();
        p.v = v.data();
        p.cos = cos.data();
        p.sin = sin.data();
        p.k_cache = kc.data();
        p.v_cache = vc.data();
        p.slots = slots.data();
        ref->rope_store_kv(p);
        Buffer dq = upload(*cuda, q), dk = upload(*cuda, k), dv = upload(*cuda, v), dc = upload(*cuda, cos),
               ds = upload(*cuda, sin), dkc = upload(*cuda, kc0), dvc = upload(*cuda, vc0), dsl = upload(*cuda, slots);
        p.q = dq.f32();
        p.k = dk.f32();
        p.v = dv.f32();
        p.cos = dc.f32();
        p.sin = ds.f32();
        p.k_cache = dkc.f32();
        p.v_cache = dvc.f32();
        p.slots = static_cast<const int32_t*>(dsl.data());
        cuda->rope_store_kv(p);
        const std::string what = "d=" + std::to_string(hd) + " rot=" + std::to_string(rot) + " n=" + std::to_string(n);
        worst.check(rel_error(download(*cuda, dq.data(), qr.size()), qr), kElementTol, "q " + what);
        worst.check(rel_error(download(*cuda, dkc.data(), kc.size()), kc), kElementTol, "k cache " + what);
        worst.check(rel_error(download(*cuda, dvc.data(), vc.size()), vc), 0.0, "v cache " + what);
      }
}

// The fused projection's layout (q|k|v interleaved per token, q to a dense q_out, partial rotary
// tails copied) into a bf16 cache, as fast mode stores it: equal to the reference's fp32 cache
// rounded to bf16 (one bf16 ulp where fp32 contraction differences meet a rounding boundary).
TEST_F(CudaParity, RopeStoreKvStridedIntoBf16Cache) {
  Worst worst("rope_store_kv (strided, bf16 cache)");
  for (int64_t hd : {64, 128})
    for (int64_t rot : {hd, hd / 2})
      for (int64_t n : {1, 5, 300}) {
        StridedRopeCase c = strided_rope_case(*ref, *cuda, rng, 8, hd, rot, n);
        const std::vector<uint16_t> zero16(c.kc.size(), 0);
        Buffer dkc = upload(*cuda, zero16), dvc = upload(*cuda, zero16);
        RopeStoreParams p = c.dev;
        p.k_cache = dkc.data();
        p.v_cache = dvc.data();
        p.kv_dtype = DType::kBF16;
        cuda->rope_store_kv(p);
        std::vector<uint16_t> k16(c.kc.size()), v16(c.vc.size());
        cuda->copy_to_host(k16.data(), dkc.data(), k16.size() * 2);
        cuda->copy_to_host(v16.data(), dvc.data(), v16.size() * 2);
        std::vector<float> kg, vg, kr, vr;
        for (size_t i = 0; i < c.kc.size(); ++i) {
          kg.push_back(bf16_to_f32(k16[i]));
          vg.push_back(bf16_to_f32(v16[i]));
          kr.push_back(bf16_to_f32(f32_to_bf16(c.kc[i])));
          vr.push_back(bf16_to_f32(f32_to_bf16(c.vc[i])));
        }
        const std::string what = "d=" + std::to_string(hd) + " rot=" + std::to_string(rot) + " n=" + std::to_string(n);
        worst.check(rel_error(download(*cuda, c.dq.data(), c.q_ref.size()), c.q_ref), kElementTol, "q_out " + what);
        worst.check(rel_error(kg, kr), 1e-2, "k cache " + what);
        worst.check(rel_error(vg, vr), 0.0, "v cache " + what);
      }
}

// The same layout into a quantized cache: a warp quantizes each 32-element group as it stores it.
// v (no rotation) gives the host reference's codes and scales exactly; k's rotated values differ
// from the host's by fp32 contraction, so a code may sit one step away where a value meets a
// rounding boundary (rare), and a scale one float16 ulp. 7 heads: the q items do not fill whole
// warps, so the k/v items start after padding.
TEST_F(CudaParity, RopeStoreKvIntoQuantizedCache) {
  for (KvQuant quant : {KvQuant::kQ8, KvQuant::kQ4}) {
    Worst worst(std::string("rope_store_kv (") + kv_quant_name(quant) + " cache): codes differing");
    for (int64_t hd : {64, 128})
      for (int64_t rot : {hd, hd / 2})
        for (int64_t n : {1, 5, 300}) {
          StridedRopeCase c = strided_rope_case(*ref, *cuda, rng, 7, hd, rot, n);
          const int64_t elems = c.rows * c.row;
          std::vector<uint8_t> kq(kv_code_bytes(quant, elems)), vq(kq.size());
          std::vector<uint16_t> ks(size_t(elems / kKvQuantGroup)), vs(ks.size());
          kv_quantize(quant, c.kc.data(), elems, kq.data(), ks.data());
          kv_quantize(quant, c.vc.data(), elems, vq.data(), vs.data());
          // The device pool starts as the quantized zero cache, so untouched slots compare equal too.
          const std::vector<float> zero(size_t(elems), 0.f);
          std::vector<uint8_t> zq(kq.size());
          std::vector<uint16_t> zs(ks.size());
          kv_quantize(quant, zero.data(), elems, zq.data(), zs.data());
          Buffer dkc = upload(*cuda, zq), dvc = upload(*cuda, zq), dks = upload(*cuda, zs), dvs = upload(*cuda, zs);
          RopeStoreParams p = c.dev;
          p.k_cache = dkc.data();
          p.v_cache = dvc.data();
          p.kv_quant = quant;
          p.k_scale = static_cast<uint16_t*>(dks.data());
          p.v_scale = static_cast<uint16_t*>(dvs.data());
          cuda->rope_store_kv(p);
          std::vector<uint8_t> gkq(kq.size()), gvq(vq.size());
          std::vector<uint16_t> gks(ks.size()), gvs(vs.size());
          cuda->copy_to_host(gkq.data(), dkc.data(), gkq.size());
          cuda->copy_to_host(gvq.data(), dvc.data(), gvq.size());
          cuda->copy_to_host(gks.data(), dks.data(), gks.size() * 2);
          cuda->copy_to_host(gvs.data(), dvs.data(), gvs.size() * 2);
          const auto code = [&](const std::vector<uint8_t>& b, int64_t e) {
            return quant == KvQuant::kQ8 ? int(int8_t(b[size_t(e)])) : int((b[size_t(e / 2)] >> (4 * (e % 2))) & 15) - 8;
          };
          int64_t k_diff = 0, k_far = 0, scale_far = 0;
          for (int64_t e = 0; e < elems; ++e) {
            const int d = std::abs(code(gkq, e) - code(kq, e));
            k_diff += d != 0;
            k_far += d > 1;
          }
          for (size_t g = 0; g < ks.size(); ++g) scale_far += std::abs(int(gks[g]) - int(ks[g])) > 1;
          const std::string what = "d=" + std::to_string(hd) + " rot=" + std::to_string(rot) + " n=" + std::to_string(n);
          worst.check(double(k_diff) / double(c.n * c.row), 2e-3, "k codes " + what);
          EXPECT_EQ(k_far, 0) << what;
          EXPECT_EQ(scale_far, 0) << what;
          EXPECT_EQ(gvq, vq) << what;
          EXPECT_EQ(gvs, vs) << what;
          EXPECT_LE(rel_error(download(*cuda, c.dq.data(), c.q_ref.size()), c.q_ref), kElementTol) << what;
        }
  }
}

// ---- EXL2 matmul -------------------------------------------------------------------------------

// Fast-mode EXL2 (tensor cores): activations rounded to bf16 (2^-9 relative), exact integer weights,
// fp32 accumulation: ~1e-3 of the output scale. A wrong bit, row, k slot or scale shows up as O(0.1..1).
constexpr double kExl2FastTol = 5e-3;
// Exact mode above 32 tokens reconstructs the layer in float16 for cuBLAS (as the loader's float16
// copy and ExLlamaV2 do): each weight rounded by up to 2^-11 relative, ~3e-4 of the output scale.
constexpr double kExl2F16WeightTol = 1e-3;

// matmul_exl2 of `dev` on x [n, K] against `ref`'s, as rel_error.
double exl2_error(Ops& ref, Ops& dev, const lathe::testing::Exl2Case& c, const std::vector<float>& x, int64_t n) {
  std::vector<float> want(size_t(n * c.N), NAN);
  Exl2MatmulParams p;
  p.x = x.data();
  p.w = c.host_view();
  p.y = want.data();
  p.n = n;
  ref.matmul_exl2(p);
  std::vector<Buffer> keep;
  Buffer dx = upload(dev, x), dy(dev, want.size() * sizeof(float));
  p.x = dx.f32();
  p.w = lathe::testing::upload_exl2(dev, c, keep);
  p.y = dy.f32();
  dev.matmul_exl2(p);
  return rel_error(download(dev, dy.data(), want.size()), want);
}

// matmul_exl2 against the host reference walking the same packed bits, in exact mode (fp32 GEMV up to
// 32 tokens, launches of 8; reconstruct + cuBLAS above) and fast mode (tensor cores, launches of up
// to 64 tokens: 1, 2, 4 m-tiles): every width, mixed widths in one layer, odd output counts (padded
// columns), bias, layers big enough for k-splits (the last-block merge; run twice: counters reset).
// A fast-mode backend with its EXL2 decode sizes on the given kernels (LATHE_EXL2_DECODE: "direct"
// for exl2_direct, "bulk" for exl2_bulk, "ring" for the ring and tensor-core kernels): all stay
// tested, whichever is the default.
std::unique_ptr<Ops> make_fast_backend(const char* decode) {
  ::setenv("LATHE_EXL2_DECODE", decode, 1);
  auto ops = make_cuda_ops(BackendOptions{.exact_matmul = false});
  ::unsetenv("LATHE_EXL2_DECODE");
  return ops;
}

TEST_F(CudaParity, MatmulExl2MatchesReference) {
  using quant::Exl2Group;
  auto fast = make_fast_backend("direct");
  auto ring = make_fast_backend("ring");
  auto bulk = make_fast_backend("bulk");
  ASSERT_TRUE(fast && ring && bulk);
  const std::vector<std::vector<Exl2Group>> layouts = {
      {{2, 64}}, {{3, 64}}, {{4, 64}}, {{5, 64}}, {{6, 64}}, {{8, 64}},
      {{8, 32}, {6, 32}, {5, 64}, {4, 128}, {3, 32}, {2, 32}},
  };
  std::vector<Exl2Group> big(32, Exl2Group{4, 128});
  big[0] = {6, 128};
  big[31] = {3, 128};
  for (int mode : {0, 1, 2, 3}) {
    const bool exact = mode == 0;
    Ops& dev = exact ? *cuda : mode == 1 ? *fast : mode == 2 ? *ring : *bulk;
    Worst worst(exact ? "matmul_exl2 (exact)" : mode == 1 ? "matmul_exl2 (fast, direct)" : mode == 2 ? "matmul_exl2 (fast, ring)" : "matmul_exl2 (fast, bulk)");
    for (int rep = 0; rep < 2; ++rep)
      for (const auto& groups : {layouts[size_t(rep * 3)], layouts[size_t(rep * 3 + 1)], layouts[size_t(rep * 3 + 2)],
                                 layouts[6], big})
        for (int64_t N : {33, 300, 4096})
          for (int64_t n : {1, 2, 5, 8, 11, 30, 40, 100})
            for (bool bias : {false, true}) {
              if (N == 4096 && groups.size() < 32 && n > 2) continue;
              if (n >= 40 && (N != 300 || bias != (rep == 1))) continue;
              const auto c = lathe::testing::random_exl2(rng, N, groups, bias);
              const int64_t K = c.m.in_features;
              const double tol = !exact ? kExl2FastTol : n > 32 ? kExl2F16WeightTol : kMatmulTol;
              worst.check(exl2_error(*ref, dev, c, random_floats(rng, size_t(n * K)), n), tol,
                          std::to_string(groups.size()) + " groups, K=" + std::to_string(K) + " N=" + std::to_string(N) +
                              " n=" + std::to_string(n) + (bias ? " bias" : ""));
            }
  }
}

// Several layers on one input in one call (q, k, v; gate, up): each equals the reference's own
// matmul_exl2, whatever their widths, group layouts and k-splits, in both modes and on every path.
TEST_F(CudaParity, MatmulExl2MultiMatchesEachLayer) {
  using quant::Exl2Group;
  auto fast = make_fast_backend("direct");
  auto ring = make_fast_backend("ring");
  auto bulk = make_fast_backend("bulk");
  ASSERT_TRUE(fast && ring && bulk);
  std::vector<Exl2Group> wide(16, Exl2Group{4, 128}), mixed = {{6, 128}, {5, 256}, {4, 1024}, {3, 512}, {2, 128}};
  wide[0] = {8, 128};
  for (int mode : {0, 1, 2, 3}) {
    const bool exact = mode == 0;
    Ops& dev = exact ? *cuda : mode == 1 ? *fast : mode == 2 ? *ring : *bulk;
    Worst worst(exact ? "matmul_exl2_multi (exact)" : mode == 1 ? "matmul_exl2_multi (fast, direct)" : mode == 2 ? "matmul_exl2_multi (fast, ring)" : "matmul_exl2_multi (fast, bulk)");
    for (int64_t n : {1, 3, 9, 16, 40, 300}) {
      if (exact && n == 40) continue;
      const std::vector<lathe::testing::Exl2Case> layers = {lathe::testing::random_exl2(rng, 2048, wide, true),
                                                            lathe::testing::random_exl2(rng, 256, mixed, false),
                                                            lathe::testing::random_exl2(rng, 300, wide, false)};
      const int64_t K = layers[0].m.in_features;
      const std::vector<float> x = random_floats(rng, size_t(n * K));
      std::vector<Buffer> keep;
      const Buffer dx = upload(dev, x);
      Exl2MultiParams p;
      p.x = dx.f32();
      p.n = n;
      p.count = 3;
      for (int i = 0; i < 3; ++i) {
        p.w[i] = lathe::testing::upload_exl2(dev, layers[size_t(i)], keep);
        keep.emplace_back(dev, size_t(n * layers[size_t(i)].N) * 4);
        p.y[i] = keep.back().f32();
      }
      dev.matmul_exl2_multi(p);
      dev.matmul_exl2_multi(p);  // again: the k-split counters were left at zero
      for (int i = 0; i < 3; ++i) {
        const auto& c = layers[size_t(i)];
        std::vector<float> want(size_t(n * c.N)), got(want.size());
        Exl2MatmulParams r;
        r.x = x.data();
        r.w = c.host_view();
        r.y = want.data();
        r.n = n;
        ref->matmul_exl2(r);
        got = download(dev, p.y[i], got.size());
        const double tol = !exact ? kExl2FastTol : n > 32 ? kExl2F16WeightTol : kMatmulTol;
        worst.check(rel_error(got, want), tol, "layer " + std::to_string(i) + " n=" + std::to_string(n));
      }
    }
  }
}

// A GLU input fused into matmul_exl2 (glu_up, a feed-forward's down projection): applied where the
// stream kernel gathers its activations (one token), or by a glu into scratch first (every other
// path), against the host reference's glu then matmul; both modes, each activation.
TEST_F(CudaParity, MatmulExl2FusedGluMatchesReference) {
  using quant::Exl2Group;
  auto fast = make_fast_backend("direct");
  auto ring = make_fast_backend("ring");
  auto bulk = make_fast_backend("bulk");
  ASSERT_TRUE(fast && ring && bulk);
  std::vector<Exl2Group> groups(8, Exl2Group{4, 128});
  groups[0] = {6, 128};
  for (int mode : {0, 1, 2, 3}) {
    const bool exact = mode == 0;
    Ops& dev = exact ? *cuda : mode == 1 ? *fast : mode == 2 ? *ring : *bulk;
    Worst worst(exact ? "matmul_exl2 fused glu (exact)" : mode == 1 ? "matmul_exl2 fused glu (fast, direct)" : mode == 2 ? "matmul_exl2 fused glu (fast, ring)" : "matmul_exl2 fused glu (fast, bulk)");
    for (Activation act : {Activation::kSilu, Activation::kGeluTanh, Activation::kGelu, Activation::kRelu})
      for (int64_t n : {1, 2, 9, 40}) {
        const auto c = lathe::testing::random_exl2(rng, 300, groups, act == Activation::kGelu);
        const int64_t K = c.m.in_features;
        const auto gate = random_floats(rng, size_t(n * K)), up = random_floats(rng, size_t(n * K));
        std::vector<float> want(size_t(n * c.N), NAN);
        Exl2MatmulParams p;
        p.x = gate.data();
        p.glu_up = up.data();
        p.glu_act = act;
        p.w = c.host_view();
        p.y = want.data();
        p.n = n;
        ref->matmul_exl2(p);
        std::vector<Buffer> keep;
        Buffer dg = upload(dev, gate), du = upload(dev, up), dy(dev, want.size() * sizeof(float));
        p.x = dg.f32();
        p.glu_up = du.f32();
        p.w = lathe::testing::upload_exl2(dev, c, keep);
        p.y = dy.f32();
        dev.matmul_exl2(p);
        const double tol = !exact ? kExl2FastTol : n > 32 ? kExl2F16WeightTol : kMatmulTol;
        worst.check(rel_error(download(dev, dy.data(), want.size()), want), tol,
                    "activation " + std::to_string(int(act)) + " n=" + std::to_string(n));
      }
  }
}

// Fast-mode EXL2 with activations far outside fp16's range (|x| up to 1e6 and tiny ones beside
// them): bf16 activations and fp32 accumulation keep every sum finite and accurate.
TEST_F(CudaParity, MatmulExl2FastHandlesLargeActivations) {
  auto fast = make_fast_backend("direct");
  auto ring = make_fast_backend("ring");
  auto bulk = make_fast_backend("bulk");
  ASSERT_TRUE(fast && ring && bulk);
  Worst worst("matmul_exl2 (fast, large x)");
  for (int bits : {4, 8}) {
    const auto c = lathe::testing::random_exl2(rng, 300, {{bits, 128}, {bits, 128}}, false);
    const int64_t K = c.m.in_features, n = 3;
    auto x = random_floats(rng, size_t(n * K));
    for (size_t i = 0; i < x.size(); ++i) x[i] *= i % 7 == 0 ? 1e6f : i % 5 == 0 ? 1e-3f : 3e4f;
    worst.check(exl2_error(*ref, *fast, c, x, n), kExl2FastTol, std::to_string(bits) + " bits, direct");
    worst.check(exl2_error(*ref, *ring, c, x, n), kExl2FastTol, std::to_string(bits) + " bits, ring");
    worst.check(exl2_error(*ref, *bulk, c, x, n), kExl2FastTol, std::to_string(bits) + " bits, bulk");
  }
}

// ---- accumulate_gram -------------------------------------------------------------------------

// The quantizer's input Hessians on the GPU (double, cublasDgemm) against the host default, onto a
// non-zero h.
TEST_F(CudaParity, AccumulateGramMatchesHost) {
  Worst worst("accumulate_gram");
  for (const auto& [rows, dim] : {std::pair<int64_t, int64_t>{1, 1}, {3, 17}, {600, 257}, {300, 2048}}) {
    const std::vector<float> x = random_floats(rng, size_t(rows * dim));
    std::vector<double> h0(static_cast<size_t>(dim * dim));
    for (size_t i = 0; i < h0.size(); ++i) h0[i] = double(i % 97) * 0.5;
    std::vector<double> want = h0;
    ref->accumulate_gram({want.data(), x.data(), rows, dim});
    const Buffer dx = upload(*cuda, x);
    Buffer dh = upload(*cuda, h0);
    cuda->accumulate_gram({static_cast<double*>(dh.data()), dx.f32(), rows, dim});
    cuda->accumulate_gram({static_cast<double*>(dh.data()), dx.f32(), 0, dim});  // no rows: no change
    std::vector<double> got(want.size());
    cuda->copy_to_host(got.data(), dh.data(), got.size() * sizeof(double));
    double err = 0, norm = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      err = std::max(err, std::fabs(got[i] - want[i]));
      norm = std::max(norm, std::fabs(want[i]));
    }
    worst.check(err / norm, 1e-12, std::to_string(rows) + "x" + std::to_string(dim));
  }
}

// ---- GPTQ (the quantizer's solves) ------------------------------------------------------------

namespace gptq_case {

// A Hessian of correlated, unevenly scaled inputs (some channels dead when asked) and its act-order.
struct Hessian {
  std::vector<double> h;
  std::vector<int32_t> perm;
  double mean_diag = 0;
};

Hessian make_hessian(std::mt19937& rng, int64_t K, bool dead) {
  const int64_t rows = 3 * K;
  std::vector<float> z = random_floats(rng, size_t(rows * K)), x(static_cast<size_t>(rows * K));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < K; ++k) {
      const float mixed = z[size_t(r * K + k)] + 0.5f * z[size_t(r * K + (k + 1) % K)];
      x[size_t(r * K + k)] = (dead && k % 11 == 3) ? 0.f : mixed * (k % 7 == 0 ? 4.f : 1.f);
    }
  Hessian H;
  H.h.assign(size_t(K * K), 0.0);
  auto ref = lathe::ops::make_ref_ops();
  ref->accumulate_gram({H.h.data(), x.data(), rows, K});
  H.perm.resize(size_t(K));
  std::iota(H.perm.begin(), H.perm.end(), 0);
  std::stable_sort(H.perm.begin(), H.perm.end(),
                   [&](int32_t a, int32_t b) { return H.h[size_t(a * K + a)] > H.h[size_t(b * K + b)]; });
  for (int64_t k = 0; k < K; ++k) H.mean_diag += std::max(H.h[size_t(k * K + k)], 1.0) / double(K);
  return H;
}

// trace((W - Wq) H (W - Wq)^T) / trace(W H W^T): the layer's output error on the calibration inputs.
double output_error(const std::vector<float>& w, const std::vector<uint16_t>& wq, const std::vector<double>& h,
                    int64_t N, int64_t K) {
  double num = 0, den = 0;
  std::vector<double> d(static_cast<size_t>(K)), o(static_cast<size_t>(K));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      o[size_t(k)] = w[size_t(n * K + k)];
      d[size_t(k)] = o[size_t(k)] - double(f16_to_f32(wq[size_t(n * K + k)]));
    }
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = 0; j < K; ++j) {
        num += d[size_t(i)] * h[size_t(i * K + j)] * d[size_t(j)];
        den += o[size_t(i)] * h[size_t(i * K + j)] * o[size_t(j)];
      }
  }
  return num / den;
}

}  // namespace gptq_case

// The inverse factor (cuSOLVER, double) against Eigen's; a matrix that is not positive definite is
// reported by both.
TEST_F(CudaParity, GptqFactorMatchesHost) {
  Worst worst("gptq_factor");
  for (int64_t K : {1, 64, 200, 1000}) {
    const auto H = gptq_case::make_hessian(rng, K, K > 1);
    const double damp = 0.01 * H.mean_diag;
    std::vector<float> want(static_cast<size_t>(K * K)), got(static_cast<size_t>(K * K));
    ASSERT_TRUE(ref->gptq_factor({H.h.data(), H.perm.data(), K, damp, want.data()}));
    const Buffer dh = upload(*cuda, H.h), dp = upload(*cuda, H.perm);
    Buffer du(*cuda, want.size() * sizeof(float));
    ASSERT_TRUE(cuda->gptq_factor({static_cast<const double*>(dh.data()), static_cast<const int32_t*>(dp.data()), K,
                                   damp, du.f32()}));
    cuda->copy_to_host(got.data(), du.data(), got.size() * sizeof(float));
    double err = 0, norm = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      err = std::max(err, double(std::fabs(got[i] - want[i])));
      norm = std::max(norm, double(std::fabs(want[i])));
    }
    worst.check(err / norm, 1e-5, "K=" + std::to_string(K));
  }
  const std::vector<double> indefinite{1, 2, 2, 1};
  const std::vector<int32_t> perm{0, 1};
  std::vector<float> u(4);
  EXPECT_FALSE(ref->gptq_factor({indefinite.data(), perm.data(), 2, 0.0, u.data()}));
  const Buffer dh = upload(*cuda, indefinite), dp = upload(*cuda, perm);
  Buffer du(*cuda, 4 * sizeof(float));
  EXPECT_FALSE(cuda->gptq_factor({static_cast<const double*>(dh.data()), static_cast<const int32_t*>(dp.data()), 2, 0.0,
                                  du.f32()}));
}

// GPTQ for EXL2 on the GPU against the host reference on the same factor: blocks of whole groups,
// groups larger than a block, groups straddling 128-row boundaries, dead channels, every width and
// weight dtype, and round to nearest (no factor). Sums run in other orders, so a value at a rounding
// boundary may land on the other level: most values agree exactly, the output error matches, and the
// float16 weight written is exactly the one the stored values, codes and maxima give.
TEST_F(CudaParity, GptqExl2MatchesHost) {
  Worst agree("gptq_exl2 values differing"), quality("gptq_exl2 output error vs host");
  struct Case {
    int64_t N, K;
    std::vector<GptqGroup> groups;
    DType dtype;
    bool rtn;
  };
  const std::vector<Case> cases = {
      {300, 256, {{6, 32}, {4, 64}, {3, 128}, {2, 32}}, DType::kBF16, true},
      {200, 384, {{8, 32}, {5, 32}, {4, 32}, {4, 32}, {4, 128}, {3, 128}}, DType::kF32, false},
      {96, 300, {{4, 200}, {3, 100}}, DType::kF16, false},
      {130, 320, {{5, 96}, {4, 64}, {4, 64}, {2, 96}}, DType::kBF16, false},
      {64, 1000, {{4, 300}, {3, 700}}, DType::kF32, false},
  };
  for (const Case& c : cases) {
    const int64_t N = c.N, K = c.K, G = int64_t(c.groups.size());
    const auto H = gptq_case::make_hessian(rng, K, true);
    std::vector<float> u(static_cast<size_t>(K * K));
    ASSERT_TRUE(ref->gptq_factor({H.h.data(), H.perm.data(), K, 0.05 * H.mean_diag, u.data()}));
    std::vector<float> w32 = random_floats(rng, size_t(N * K));
    std::vector<uint16_t> w16(w32.size());
    for (size_t i = 0; i < w32.size(); ++i) {
      w16[i] = c.dtype == DType::kBF16 ? f32_to_bf16(w32[i]) : f32_to_f16(w32[i]);
      if (c.dtype != DType::kF32) w32[i] = c.dtype == DType::kBF16 ? bf16_to_f32(w16[i]) : f16_to_f32(w16[i]);
    }
    const void* host_w = c.dtype == DType::kF32 ? static_cast<const void*>(w32.data()) : w16.data();
    struct Out {
      std::vector<uint8_t> q, codes;
      std::vector<float> maxes;
      std::vector<uint16_t> wq;
    };
    auto params = [&](const void* w, const int32_t* perm, const double* h, const float* uu, Out& o) {
      GptqExl2Params p;
      p.w = Weight{w, c.dtype, N, K};
      p.perm = perm;
      p.h = h;
      p.u = c.rtn ? nullptr : uu;
      p.groups = c.groups.data();
      p.num_groups = G;
      return p;
    };
    Out want{std::vector<uint8_t>(size_t(K * N)), std::vector<uint8_t>(size_t(G * N)), std::vector<float>(size_t(G)),
             std::vector<uint16_t>(size_t(N * K))};
    GptqExl2Params hp = params(host_w, H.perm.data(), H.h.data(), u.data(), want);
    hp.q = want.q.data(), hp.codes = want.codes.data(), hp.maxes = want.maxes.data(), hp.wq = want.wq.data();
    ref->gptq_exl2(hp);

    const Buffer dw = c.dtype == DType::kF32 ? upload(*cuda, w32) : upload(*cuda, w16);
    const Buffer dp = upload(*cuda, H.perm), dh = upload(*cuda, H.h), du = upload(*cuda, u);
    Buffer dq(*cuda, size_t(K * N)), dc(*cuda, size_t(G * N)), dm(*cuda, size_t(G) * 4), dwq(*cuda, size_t(N * K) * 2);
    Out got = want;
    GptqExl2Params cp = params(dw.data(), static_cast<const int32_t*>(dp.data()), static_cast<const double*>(dh.data()),
                               du.f32(), got);
    cp.q = static_cast<uint8_t*>(dq.data()), cp.codes = static_cast<uint8_t*>(dc.data()), cp.maxes = dm.f32();
    cp.wq = static_cast<uint16_t*>(dwq.data());
    cuda->gptq_exl2(cp);
    cuda->copy_to_host(got.q.data(), dq.data(), got.q.size());
    cuda->copy_to_host(got.codes.data(), dc.data(), got.codes.size());
    cuda->copy_to_host(got.maxes.data(), dm.data(), got.maxes.size() * 4);
    cuda->copy_to_host(got.wq.data(), dwq.data(), got.wq.size() * 2);

    const std::string label = "N=" + std::to_string(N) + " K=" + std::to_string(K) + (c.rtn ? " rtn" : "");
    int64_t differ = 0;
    for (size_t i = 0; i < got.q.size(); ++i) differ += got.q[i] != want.q[i];
    agree.check(double(differ) / double(got.q.size()), c.rtn ? 1e-3 : 0.05, label);
    if (c.rtn) {
      EXPECT_EQ(got.codes, want.codes) << label;
      EXPECT_EQ(got.maxes, want.maxes) << label;
    }
    // The float16 weight from the device's own values, codes and maxima.
    int64_t row = 0;
    for (int64_t g = 0; g < G; ++g) {
      const int zero = 1 << (c.groups[size_t(g)].bits - 1);
      for (int64_t r = row; r < row + c.groups[size_t(g)].rows; ++r)
        for (int64_t n = 0; n < N; ++n) {
          const float v = float(int(got.q[size_t(r * N + n)]) - zero) *
                          exl2_scale(got.codes[size_t(g * N + n)], got.maxes[size_t(g)]);
          ASSERT_EQ(got.wq[size_t(n * K + H.perm[size_t(r)])], f32_to_f16(v)) << label << " row " << r << " col " << n;
        }
      row += c.groups[size_t(g)].rows;
    }
    const double e_want = gptq_case::output_error(w32, want.wq, H.h, N, K);
    const double e_got = gptq_case::output_error(w32, got.wq, H.h, N, K);
    std::printf("[ gptq ] %s: output error host %.5f, cuda %.5f\n", label.c_str(), e_want, e_got);
    quality.check(std::fabs(e_got - e_want) / e_want, 0.02, label);
  }
}

// ---- mixture of experts ---------------------------------------------------------------------

// Small-batch MoE with routing on the device: top-k by logit (ties to the lower expert), softmax of
// the selected logits, weighted expert outputs added to the residual rows; against a double-precision
// host evaluation of the same rounded weights. Sizes outside the path are declined, not run.
TEST_F(CudaParity, MoeSmallBatchRoutesOnTheDevice) {
  Worst worst("moe_small_batch");
  const int64_t H = 64, I = 96, E = 8;
  const auto value = [](const HostWeight& w, size_t i) {
    return double(w.w.dtype == DType::kBF16 ? bf16_to_f32(w.half[i]) : f16_to_f32(w.half[i]));
  };
  for (DType dt : {DType::kBF16, DType::kF16})
    for (int64_t n : {1, 3, 8})
      for (int64_t top : {1, 2, 3}) {
        std::vector<HostWeight> gate, up, down;
        std::vector<DeviceWeight> dev;
        std::vector<const void*> table(size_t(3 * E));
        for (int64_t e = 0; e < E; ++e) {
          gate.push_back(random_weight(rng, I, H, dt, -0.2f, 0.2f));
          up.push_back(random_weight(rng, I, H, dt, -0.2f, 0.2f));
          down.push_back(random_weight(rng, H, I, dt, -0.2f, 0.2f));
        }
        for (int part = 0; part < 3; ++part)
          for (int64_t e = 0; e < E; ++e) {
            const auto& hw = part == 0 ? gate : part == 1 ? up : down;
            dev.push_back(upload(*cuda, hw[size_t(e)]));
            table[size_t(part * E + e)] = dev.back().w.data;
          }
        const auto x = random_floats(rng, size_t(n * H));
        auto logits = random_floats(rng, size_t(n * E), -2.f, 2.f);
        logits[3] = logits[5] = 3.f;  // token 0: a tie for first place
        const auto res = random_floats(rng, size_t(n * H));
        std::vector<float> want = res;
        for (int64_t t = 0; t < n; ++t) {
          std::vector<int64_t> order(static_cast<size_t>(E));
          std::iota(order.begin(), order.end(), 0);
          const float* lg = logits.data() + t * E;
          std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lg[a] > lg[b]; });
          double sum = 0;
          for (int64_t j = 0; j < top; ++j) sum += std::exp(double(lg[order[size_t(j)]]) - lg[order[0]]);
          for (int64_t j = 0; j < top; ++j) {
            const int64_t e = order[size_t(j)];
            const double w = std::exp(double(lg[e]) - lg[order[0]]) / sum;
            std::vector<double> mid(static_cast<size_t>(I));
            for (int64_t r = 0; r < I; ++r) {
              double g = 0, u = 0;
              for (int64_t c = 0; c < H; ++c) {
                g += value(gate[size_t(e)], size_t(r * H + c)) * x[size_t(t * H + c)];
                u += value(up[size_t(e)], size_t(r * H + c)) * x[size_t(t * H + c)];
              }
              mid[size_t(r)] = g / (1 + std::exp(-g)) * u;
            }
            for (int64_t r = 0; r < H; ++r) {
              double d = 0;
              for (int64_t c = 0; c < I; ++c) d += value(down[size_t(e)], size_t(r * I + c)) * mid[size_t(c)];
              want[size_t(t * H + r)] += float(w * d);
            }
          }
        }
        Buffer dx = upload(*cuda, x), dl = upload(*cuda, logits), dout = upload(*cuda, res);
        Buffer dt_table(*cuda, table.size() * sizeof(void*));
        cuda->copy_to_backend(dt_table.data(), table.data(), table.size() * sizeof(void*));
        const auto* tab = static_cast<const void* const*>(dt_table.data());
        MoeParams p;
        p.x = dx.f32();
        p.logits = dl.f32();
        p.out = dout.f32();
        p.gate = tab;
        p.up = tab + E;
        p.down = tab + 2 * E;
        p.dtype = dt;
        p.n = n;
        p.hidden = H;
        p.inter = I;
        p.experts = E;
        p.top_k = top;
        ASSERT_TRUE(cuda->moe_small_batch(p));
        worst.check(rel_error(download(*cuda, dout.data(), want.size()), want), kMatmulTol,
                    std::string(dtype_name(dt)) + " n=" + std::to_string(n) + " top=" + std::to_string(top));
        MoeParams too_many = p;
        too_many.n = 9;
        EXPECT_FALSE(cuda->moe_small_batch(too_many));
        MoeParams f32 = p;
        f32.dtype = DType::kF32;
        EXPECT_FALSE(cuda->moe_small_batch(f32));
      }
}

// ---- token selection ------------------------------------------------------------------------

// Penalties then top-k on the device equal the host defaults exactly: same ids in the same order
// (ties: lower id first), same values, sums within fp32 summation-order error.
TEST_F(CudaParity, PenaltiesAndTopK) {
  Worst worst("top_k sums");
  for (int64_t vocab : {1000, 128256})
    for (int64_t k : {1, 7, 256, 1024})
      for (bool ties : {false, true}) {
        if (k > vocab) continue;
        const int64_t rows = 3;
        auto logits = random_floats(rng, size_t(rows * vocab), -10.f, 10.f);
        if (ties)
          for (auto& l : logits) l = std::round(l * 2.f) / 2.f;  // many equal logits
        std::vector<int32_t> off{0, 2, 2, 5}, ids{3, 17, 0, 999, 5}, counts{1, 4, 2, 1, 7};
        const std::vector<float> rep{1.3f, 1.f, 0.8f}, pres{0.5f, 0.f, 0.f}, freq{0.1f, 0.f, 0.2f},
            inv_t{1.f, 0.5f, 2.f};
        std::vector<float> host = logits;
        PenaltyParams pp;
        pp.logits = host.data();
        pp.rows = rows;
        pp.vocab = vocab;
        pp.offsets = off.data();
        pp.ids = ids.data();
        pp.counts = counts.data();
        pp.repetition = rep.data();
        pp.presence = pres.data();
        pp.frequency = freq.data();
        ref->apply_penalties(pp);
        std::vector<int32_t> want_ids(static_cast<size_t>(rows * k));
        std::vector<float> want_vals(want_ids.size()), want_sums(static_cast<size_t>(rows));
        TopKParams tk;
        tk.logits = host.data();
        tk.rows = rows;
        tk.vocab = vocab;
        tk.k = k;
        tk.inv_temperature = inv_t.data();
        tk.ids = want_ids.data();
        tk.values = want_vals.data();
        tk.sums = want_sums.data();
        ref->top_k(tk);

        Buffer dl = upload(*cuda, logits), doff = upload(*cuda, off), dids = upload(*cuda, ids),
               dcnt = upload(*cuda, counts), drep = upload(*cuda, rep), dpres = upload(*cuda, pres),
               dfreq = upload(*cuda, freq), dinv = upload(*cuda, inv_t);
        Buffer oi(*cuda, want_ids.size() * 4), ov(*cuda, want_vals.size() * 4), os(*cuda, want_sums.size() * 4);
        pp.logits = dl.f32();
        pp.offsets = static_cast<const int32_t*>(doff.data());
        pp.ids = static_cast<const int32_t*>(dids.data());
        pp.counts = static_cast<const int32_t*>(dcnt.data());
        pp.repetition = drep.f32();
        pp.presence = dpres.f32();
        pp.frequency = dfreq.f32();
        cuda->apply_penalties(pp);
        EXPECT_EQ(download(*cuda, dl.data(), host.size()), host) << "penalties vocab=" << vocab;
        tk.logits = dl.f32();
        tk.inv_temperature = dinv.f32();
        tk.ids = static_cast<int32_t*>(oi.data());
        tk.values = ov.f32();
        tk.sums = os.f32();
        cuda->top_k(tk);
        std::vector<int32_t> got_ids(want_ids.size());
        cuda->copy_to_host(got_ids.data(), oi.data(), got_ids.size() * 4);
        EXPECT_EQ(got_ids, want_ids) << "vocab=" << vocab << " k=" << k << " ties=" << ties;
        EXPECT_EQ(download(*cuda, ov.data(), want_vals.size()), want_vals) << "values k=" << k;
        worst.check(rel_error(download(*cuda, os.data(), want_sums.size()), want_sums), 1e-5,
                    "sums vocab=" + std::to_string(vocab) + " k=" + std::to_string(k));
      }
}

// ---- graphs ---------------------------------------------------------------------------------

// A recorded chain replays with whatever the buffers hold at replay time, and recording itself
// runs nothing.
TEST_F(CudaParity, GraphReplaysWithNewInputs) {
  const int64_t n = 5000;
  auto x = random_floats(rng, size_t(n));
  Buffer a = upload(*cuda, x);
  Buffer b(*cuda, size_t(n) * sizeof(float));
  auto graph = cuda->capture([&] {
    cuda->add(b.f32(), a.f32(), n);
    cuda->softcap(b.f32(), n, 3.f);
  });
  ASSERT_NE(graph, nullptr);
  EXPECT_EQ(download(*cuda, b.data(), size_t(n)), std::vector<float>(size_t(n), 0.f)) << "capture executed work";
  std::vector<float> want(size_t(n), 0.f);
  for (int round = 0; round < 3; ++round) {
    x = random_floats(rng, size_t(n));
    cuda->copy_to_backend(a.data(), x.data(), x.size() * sizeof(float));
    graph->replay();
    for (int64_t i = 0; i < n; ++i) want[size_t(i)] = 3.f * std::tanh((want[size_t(i)] + x[size_t(i)]) / 3.f);
    const auto got = download(*cuda, b.data(), size_t(n));
    EXPECT_LT(rel_error(got, want), 1e-5) << "round " << round;
  }
  // Ops that allocate or synchronise are refused while recording, and the stream stays usable.
  EXPECT_THROW(cuda->capture([&] { Buffer tmp(*cuda, 64); }), Error);
  EXPECT_THROW(cuda->capture([&] { cuda->synchronize(); }), Error);
  cuda->add(b.f32(), a.f32(), n);
  cuda->synchronize();
}

// Pinned staging: an async copy from page-locked memory lands before later ops on the stream.
TEST_F(CudaParity, PinnedStagingCopies) {
  const int64_t n = 1 << 16;
  auto* pinned = static_cast<float*>(cuda->alloc_pinned(size_t(n) * sizeof(float)));
  const auto x = random_floats(rng, size_t(n));
  std::copy(x.begin(), x.end(), pinned);
  Buffer a(*cuda, size_t(n) * sizeof(float));
  cuda->copy_to_backend_async(a.data(), pinned, size_t(n) * sizeof(float));
  EXPECT_EQ(download(*cuda, a.data(), size_t(n)), x);
  cuda->free_pinned(pinned);
}

// A chain of ops with no explicit synchronize: stream order alone must make copy_to_host see it.
TEST_F(CudaParity, StreamOrderWithoutSynchronize) {
  const int64_t n = 1 << 20;
  const auto x = random_floats(rng, size_t(n));
  Buffer a = upload(*cuda, x);
  Buffer b(*cuda, size_t(n) * sizeof(float));
  for (int i = 0; i < 10; ++i) cuda->add(b.f32(), a.f32(), n);
  const auto got = download(*cuda, b.data(), size_t(n));
  for (int64_t i = 0; i < n; i += 4097) {
    float want = 0.f;
    for (int r = 0; r < 10; ++r) want += x[size_t(i)];
    ASSERT_EQ(got[size_t(i)], want) << "element " << i;
  }
}

}  // namespace
}  // namespace lathe::ops
