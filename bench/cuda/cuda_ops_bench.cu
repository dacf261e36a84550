// CUDA op benchmark at Llama-3-8B shapes, through the Ops interface (what the model actually calls):
//   GEMV  n = 1 / 8 (custom kernel) and 32 (cuBLAS), bf16 weights: GB/s and % of H100 SXM's 3.35 TB/s
//   GEMM  n = 512 / 2048 (cuBLAS, x rounded to bf16 inside the op): TFLOP/s
//   attention decode (n = 1, 32 heads / 8 kv heads, head_dim 128) at kv_len 128 / 4096 / 16384: GB/s of K/V
//   attention prefill 2048 causal, same heads: TFLOP/s
//   attention prefill n = 512 / 2048 / 4096 causal, fp32 kernel (exact mode) next to the bf16
//     tensor-core kernel (fast mode): TFLOP/s, counting 2 matmuls x 2 flops x n^2/2 x head_dim x heads
// Each measurement: 3 warm-up calls, then 20 calls each bracketed by CUDA events on the backend's
// stream; the median is reported. Weights are random (never zeros) and, where one matrix would fit
// in L2, several copies are cycled so every call streams from DRAM.
//
// Usage: cuda_ops_bench [--quick]   (--quick: fewer shapes, for smoke runs)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "ops/cuda/cuda_ops.h"
#include "ops/ops.h"

using namespace lathe;
using namespace lathe::ops;

namespace {

constexpr double kPeakBytesPerS = 3.35e12;  // H100 SXM HBM3
constexpr int kWarmup = 3;
constexpr int kIters = 20;

#define BENCH_CHECK(expr)                                                                      \
  do {                                                                                         \
    const cudaError_t e_ = (expr);                                                             \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #expr); \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

// Uniform values in [-1, 1) from a hash of the index: random-looking, reproducible, never all zero.
__device__ float hash_uniform(uint64_t i, uint32_t seed) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + seed;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return float(uint32_t(z >> 40)) / float(1u << 23) - 1.f;
}

__global__ void fill_f32(float* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = hash_uniform(i, seed) * scale;
}

__global__ void fill_bf16(uint16_t* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint32_t u = __float_as_uint(hash_uniform(i, seed) * scale);
    p[i] = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

void fill(Ops& ops, Buffer& b, DType dt, float scale, uint32_t seed) {
  cudaStream_t s = cuda_stream(ops);
  if (dt == DType::kBF16) fill_bf16<<<1024, 256, 0, s>>>(static_cast<uint16_t*>(b.data()), b.bytes() / 2, seed, scale);
  else fill_f32<<<1024, 256, 0, s>>>(b.f32(), b.bytes() / 4, seed, scale);
  BENCH_CHECK(cudaGetLastError());
}

// Median milliseconds of fn() over kIters event-bracketed calls on the backend's stream.
double time_ms(Ops& ops, const std::function<void(int)>& fn) {
  cudaStream_t s = cuda_stream(ops);
  for (int i = 0; i < kWarmup; ++i) fn(i);
  ops.synchronize();
  std::vector<cudaEvent_t> ev(2 * kIters);
  for (auto& e : ev) BENCH_CHECK(cudaEventCreate(&e));
  for (int i = 0; i < kIters; ++i) {
    BENCH_CHECK(cudaEventRecord(ev[2 * i], s));
    fn(kWarmup + i);
    BENCH_CHECK(cudaEventRecord(ev[2 * i + 1], s));
  }
  ops.synchronize();
  std::vector<double> ms(kIters);
  for (int i = 0; i < kIters; ++i) {
    float t = 0;
    BENCH_CHECK(cudaEventElapsedTime(&t, ev[2 * i], ev[2 * i + 1]));
    ms[size_t(i)] = t;
  }
  for (auto& e : ev) cudaEventDestroy(e);
  std::sort(ms.begin(), ms.end());
  return ms[kIters / 2];
}

struct Linear {
  const char* name;
  int64_t k, m;
};

void print_header(const char* title, const char* cols) {
  std::printf("\n%s\n%s\n", title, cols);
}

void bench_matmul(Ops& ops, const std::vector<Linear>& shapes, const std::vector<int64_t>& ns) {
  print_header("matmul (bf16 weights, fp32 activations)",
               "  shape                 n      time(us)   GB/s    %peak   TFLOP/s  path");
  const int64_t max_n = *std::max_element(ns.begin(), ns.end());
  for (const Linear& L : shapes) {
    const size_t wbytes = size_t(L.m * L.k) * 2;
    // Cycle copies so their sum is well beyond L2 (50 MB on H100).
    const int copies = int(std::max<size_t>(1, (size_t(256) << 20) / wbytes + 1));
    std::vector<Buffer> ws;
    for (int c = 0; c < copies; ++c) {
      ws.emplace_back(ops, wbytes);
      fill(ops, ws.back(), DType::kBF16, 0.05f, 17u + uint32_t(c));
    }
    Buffer x(ops, size_t(max_n * L.k) * 4), y(ops, size_t(max_n * L.m) * 4);
    fill(ops, x, DType::kF32, 1.f, 3u);
    for (int64_t n : ns) {
      MatmulParams p;
      p.x = x.f32();
      p.y = y.f32();
      p.n = n;
      p.w.dtype = DType::kBF16;
      p.w.rows = L.m;
      p.w.cols = L.k;
      const double ms = time_ms(ops, [&](int i) {
        p.w.data = ws[size_t(i % copies)].data();
        ops.matmul(p);
      });
      const double bytes = double(wbytes) + double(n * L.k) * 4 + double(n * L.m) * 4;
      const double gbs = bytes / (ms * 1e-3) / 1e9;
      const double tflops = 2.0 * double(n) * double(L.m) * double(L.k) / (ms * 1e-3) / 1e12;
      std::printf("  %-8s %6lldx%-6lld %5lld %10.1f %8.0f %7.1f%% %8.1f  %s\n", L.name, (long long)L.k, (long long)L.m,
                  (long long)n, ms * 1e3, gbs, 100.0 * gbs * 1e9 / kPeakBytesPerS, tflops, n <= 8 ? "gemv" : "cublas");
    }
  }
}

void bench_attention(Ops& ops, const std::vector<int64_t>& decode_lens, int64_t prefill_len) {
  const int64_t nh = 32, nkv = 8, hd = 128;
  const int64_t max_len = std::max(*std::max_element(decode_lens.begin(), decode_lens.end()), prefill_len);
  Buffer k(ops, size_t(max_len * nkv * hd) * 4), v(ops, size_t(max_len * nkv * hd) * 4);
  Buffer q(ops, size_t(prefill_len * nh * hd) * 4), out(ops, size_t(prefill_len * nh * hd) * 4);
  fill(ops, k, DType::kF32, 1.f, 5u);
  fill(ops, v, DType::kF32, 1.f, 6u);
  fill(ops, q, DType::kF32, 1.f, 7u);
  AttentionParams p;
  p.q = q.f32();
  p.k = k.f32();
  p.v = v.f32();
  p.out = out.f32();
  p.n_heads = nh;
  p.n_kv_heads = nkv;
  p.head_dim = hd;
  p.scale = 1.f / std::sqrt(float(hd));

  print_header("attention decode (n=1, 32 heads / 8 kv heads, head_dim 128, fp32 K/V)",
               "  kv_len      time(us)   GB/s    %peak");
  for (int64_t len : decode_lens) {
    p.n = 1;
    p.kv_len = len;
    const double ms = time_ms(ops, [&](int) { ops.attention(p); });
    const double bytes = double(len * nkv * hd) * 4 * 2;
    const double gbs = bytes / (ms * 1e-3) / 1e9;
    std::printf("  %6lld %13.1f %8.0f %7.1f%%\n", (long long)len, ms * 1e3, gbs, 100.0 * gbs * 1e9 / kPeakBytesPerS);
  }

  print_header("attention prefill (causal, 32 heads / 8 kv heads, head_dim 128)", "  n=kv_len    time(us)  TFLOP/s");
  p.n = prefill_len;
  p.kv_len = prefill_len;
  const double ms = time_ms(ops, [&](int) { ops.attention(p); });
  // QK^T and PV over the causal half: 2 matmuls x 2 flops x n(n+1)/2 x head_dim x heads.
  const double flops = 4.0 * double(prefill_len) * double(prefill_len + 1) / 2 * double(hd) * double(nh);
  std::printf("  %6lld %13.1f %8.2f\n", (long long)prefill_len, ms * 1e3, flops / (ms * 1e-3) / 1e12);
}

// Causal prefill (n = kv_len) on both attention kernels: the exact backend runs the fp32 kernel, the
// fast one (exact_matmul off) the bf16 tensor-core kernel. Each backend gets its own buffers (same
// fill seeds, so the same inputs): pointers passed to a backend's ops come from its own alloc().
void bench_attention_prefill(Ops& exact, Ops& fast, const std::vector<int64_t>& ns) {
  const int64_t nh = 32, nkv = 8, hd = 128;
  const int64_t max_n = *std::max_element(ns.begin(), ns.end());
  print_header("attention prefill (tensor cores, fast mode) vs fp32 (exact mode): causal, 32 heads / 8 kv heads, "
               "head_dim 128",
               "  n=kv_len   fp32 time(us)  TFLOP/s    tc time(us)  TFLOP/s  speedup");
  struct Bufs {
    Buffer q, k, v, out;
  };
  auto make = [&](Ops& ops) {
    Bufs b{Buffer(ops, size_t(max_n * nh * hd) * 4), Buffer(ops, size_t(max_n * nkv * hd) * 4),
           Buffer(ops, size_t(max_n * nkv * hd) * 4), Buffer(ops, size_t(max_n * nh * hd) * 4)};
    fill(ops, b.q, DType::kF32, 1.f, 7u);
    fill(ops, b.k, DType::kF32, 1.f, 5u);
    fill(ops, b.v, DType::kF32, 1.f, 6u);
    return b;
  };
  Bufs be = make(exact), bf = make(fast);
  for (int64_t n : ns) {
    double ms[2];
    for (int which = 0; which < 2; ++which) {
      Ops& ops = which == 0 ? exact : fast;
      const Bufs& b = which == 0 ? be : bf;
      AttentionParams p;
      p.q = b.q.f32();
      p.k = b.k.f32();
      p.v = b.v.f32();
      p.out = b.out.f32();
      p.n = n;
      p.kv_len = n;
      p.n_heads = nh;
      p.n_kv_heads = nkv;
      p.head_dim = hd;
      p.scale = 1.f / std::sqrt(float(hd));
      ms[which] = time_ms(ops, [&](int) { ops.attention(p); });
    }
    const double flops = 2.0 * 2.0 * double(n) * double(n) / 2 * double(hd) * double(nh);
    std::printf("  %6lld %15.1f %8.1f %14.1f %8.1f %7.2fx\n", (long long)n, ms[0] * 1e3, flops / (ms[0] * 1e-3) / 1e12,
                ms[1] * 1e3, flops / (ms[1] * 1e-3) / 1e12, ms[0] / ms[1]);
  }
}

}  // namespace

// EXL2 GEMV at 4 bits (groups of 128 input rows, the common layout of a ~4.1 bpw file), packed
// words and scales random (every bit pattern is a valid code); GB/s counts the packed bytes read.
void bench_exl2(Ops& ops, const char* mode, const std::vector<Linear>& shapes, const std::vector<int64_t>& ns) {
  print_header((std::string("matmul_exl2 (4-bit groups of 128, random act-order), ") + mode).c_str(),
               "  shape                 n      time(us)   GB/s    %peak");
  const int64_t max_n = *std::max_element(ns.begin(), ns.end());
  for (const Linear& L : shapes) {
    const int64_t K = L.k, N = L.m, Np = (N + 31) / 32 * 32, G = K / 128;
    const size_t qbytes = size_t(K / 8 * Np) * 4, sbytes = size_t(G * Np / 8) * 4;
    const int copies = int(std::max<size_t>(1, (size_t(256) << 20) / (qbytes + sbytes) + 1));
    std::vector<Buffer> qw, qs;
    for (int c = 0; c < copies; ++c) {
      qw.emplace_back(ops, qbytes);
      fill(ops, qw.back(), DType::kBF16, 1.f, 101u + uint32_t(c));
      qs.emplace_back(ops, sbytes);
      fill(ops, qs.back(), DType::kBF16, 1.f, 301u + uint32_t(c));
    }
    std::vector<uint16_t> smax(static_cast<size_t>(G), uint16_t(0x211f));  // ~0.01 in float16
    std::vector<int32_t> perm(static_cast<size_t>(K)), groups;
    // Interleaved halves: neighbouring act-order rows read distant channels, as a real act-order does.
    for (int64_t k = 0; k < K; ++k) perm[size_t(k)] = int32_t(k % 2 == 0 ? k / 2 : K - 1 - k / 2);
    // The tiled layout's group table (quant/exl2_tiled.h): 128-row groups need no padding, so the
    // packed bytes are those of the stored format.
    for (int64_t g = 0; g < G; ++g)
      for (int64_t v : {int64_t(4), int64_t(128), g * 16, g * 128, g * 128, int64_t(128), g, int64_t(0)})
        groups.push_back(int32_t(v));
    Buffer dmax(ops, smax.size() * 2), dperm(ops, perm.size() * 4), dgroups(ops, groups.size() * 4);
    ops.copy_to_backend(dmax.data(), smax.data(), smax.size() * 2);
    ops.copy_to_backend(dperm.data(), perm.data(), perm.size() * 4);
    ops.copy_to_backend(dgroups.data(), groups.data(), groups.size() * 4);
    Buffer x(ops, size_t(max_n * K) * 4), y(ops, size_t(max_n * N) * 4);
    fill(ops, x, DType::kF32, 1.f, 3u);
    for (int64_t n : ns) {
      Exl2MatmulParams p;
      p.x = x.f32();
      p.y = y.f32();
      p.n = n;
      p.w.q_scale_max = static_cast<const uint16_t*>(dmax.data());
      p.w.tiled_perm = static_cast<const int32_t*>(dperm.data());
      p.w.tiled_groups = static_cast<const int32_t*>(dgroups.data());
      p.w.in_features = K;
      p.w.out_features = N;
      p.w.num_groups = G;
      p.w.tiled_rows = K;
      p.w.tiled_num_groups = G;
      p.w.max_tiled_rows = 128;
      p.w.max_tiled_qrows = 16;
      p.w.tiled_qrows = G * 16;
      const double ms = time_ms(ops, [&](int i) {
        p.w.tiled = static_cast<const uint32_t*>(qw[size_t(i % copies)].data());
        p.w.tiled_scale = static_cast<const uint32_t*>(qs[size_t(i % copies)].data());
        ops.matmul_exl2(p);
      });
      const double gbs = double(qbytes + sbytes) / (ms * 1e-3) / 1e9;
      std::printf("  %-8s %6lldx%-6lld %5lld %10.1f %8.0f %7.1f%%\n", L.name, (long long)K, (long long)N, (long long)n,
                  ms * 1e3, gbs, 100.0 * gbs * 1e9 / kPeakBytesPerS);
    }
  }
}

int main(int argc, char** argv) {
  // --quick: one shape a section; --exl2: only the EXL2 sections (all shapes, the reconstruct sizes too).
  // --exl2 SHAPE: that EXL2 shape only (q, k, gate, down, lm_head). --tokens 1,8,16: the EXL2 fast
  // mode's token counts (default: a sweep).
  bool quick = false, exl2_only = false;
  std::string exl2_shape;
  std::vector<int64_t> tokens;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::strcmp(argv[i], "--exl2") == 0) {
      exl2_only = true;
      if (i + 1 < argc && argv[i + 1][0] != '-') exl2_shape = argv[++i];
    } else if (std::strcmp(argv[i], "--tokens") == 0 && i + 1 < argc) {
      for (const char* at = argv[++i]; *at;) {
        char* end = nullptr;
        const long v = std::strtol(at, &end, 10);
        if (end == at || v <= 0) {
          std::fprintf(stderr, "cuda_ops_bench: --tokens wants a list of positive counts, e.g. 1,8,16\n");
          return 2;
        }
        tokens.push_back(v);
        at = *end == ',' ? end + 1 : end;
      }
    } else {
      std::fprintf(stderr, "usage: cuda_ops_bench [--quick] [--exl2 [SHAPE]] [--tokens N,N,...]\n");
      return 2;
    }
  }
  auto ops = make_cuda_ops();
  if (!ops) {
    std::fprintf(stderr, "cuda_ops_bench: no usable CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop{};
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, %.0f MB L2; %%peak is against %.2f TB/s; median of %d calls\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize / 1e6, kPeakBytesPerS / 1e12, kIters);
  try {
    const std::vector<Linear> gemv_shapes = {
        {"qkv", 4096, 6144}, {"gate_up", 4096, 28672}, {"down", 14336, 4096}, {"lm_head", 4096, 128256}};
    if (!exl2_only) bench_matmul(*ops, quick ? std::vector<Linear>{gemv_shapes[1]} : gemv_shapes, {1, 8, 32});
    {
      auto fast_exl2 = make_cuda_ops(BackendOptions{.exact_matmul = false});
      if (!fast_exl2) throw std::runtime_error("the fast-mode CUDA backend failed to start");
      std::vector<Linear> exl2_shapes = {{"q", 4096, 4096},       {"k", 4096, 1024},   {"gate", 4096, 14336},
                                         {"down", 14336, 4096},   {"lm_head", 4096, 128256}};
      if (!exl2_shape.empty())
        std::erase_if(exl2_shapes, [&](const Linear& l) { return exl2_shape != l.name; });
      bench_exl2(*fast_exl2, "fast mode", quick ? std::vector<Linear>{exl2_shapes[2]} : exl2_shapes,
                 !tokens.empty()      ? tokens
                 : !exl2_shape.empty() ? std::vector<int64_t>{1}
                 : exl2_only        ? std::vector<int64_t>{1, 2, 4, 8, 16, 32, 64, 256, 512, 2048}
                           : std::vector<int64_t>{1, 2, 4, 6, 8, 16, 32, 64, 256});
      if (exl2_shape.empty() && tokens.empty())
        bench_exl2(*ops, "exact mode (fp32)", quick ? std::vector<Linear>{exl2_shapes[2]} : exl2_shapes, {1, 8});
    }
    if (exl2_only) return 0;
    const std::vector<Linear> gemm_shapes = {{"qkv", 4096, 6144}, {"gate_up", 4096, 28672}, {"down", 14336, 4096}};
    bench_matmul(*ops, quick ? std::vector<Linear>{gemm_shapes[1]} : gemm_shapes, {512, 2048});
    bench_attention(*ops, {128, 4096, 16384}, 2048);
    auto fast = make_cuda_ops(BackendOptions{.exact_matmul = false});
    if (!fast) throw std::runtime_error("the fast-mode CUDA backend failed to start");
    bench_attention_prefill(*ops, *fast, quick ? std::vector<int64_t>{2048} : std::vector<int64_t>{512, 2048, 4096});
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cuda_ops_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
