// Default (host) memory management and row gather/scatter of the op contract, shared by every
// backend whose memory is ordinary host memory.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "ops/kv_quant.h"
#include "ops/ops.h"

namespace lathe::ops {

void* Ops::alloc(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (!p) fail(ErrorKind::kOutOfRange, "out of host memory allocating {} bytes", bytes);
  std::memset(p, 0, rounded == 0 ? 64 : rounded);
  return p;
}

void Ops::free(void* p) noexcept { std::free(p); }

void Ops::copy_to_backend(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}
void Ops::copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}
void Ops::copy_to_host_strided(void* host_dst, const void* src, size_t elem_bytes, int64_t count, size_t stride_bytes) {
  auto* d = static_cast<char*>(host_dst);
  const auto* s = static_cast<const char*>(src);
  for (int64_t i = 0; i < count; ++i) copy_to_host(d + size_t(i) * elem_bytes, s + size_t(i) * stride_bytes, elem_bytes);
}
void Ops::copy(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memmove(dst, src, bytes);
}

void Ops::matmul_multi(const MultiMatmulParams& p) {
  for (int i = 0; i < p.count; ++i) {
    MatmulParams m;
    m.x = p.x;
    m.w = p.w[i];
    m.bias = p.bias[i];
    m.y = p.y[i];
    m.n = p.n;
    matmul(m);
  }
}

void Ops::matmul_exl2_multi(const Exl2MultiParams& p) {
  for (int i = 0; i < p.count; ++i) matmul_exl2(p.layer(i));
}

void Ops::add_rms_norm(float* x, const float* delta, const RmsNormParams& p) {
  add(x, delta, p.n * p.dim);
  RmsNormParams q = p;
  q.x = x;
  rms_norm(q);
}

// The reference for every EXL2 kernel: walks each column's bitstream in act-order, as the format
// defines it (quant/bitpack.h): row i of a group's unit at bit b * i of the unit's words, values
// may straddle two words; weight = (q - 2^(b-1)) * (code + 1)^2 * scale_max / 256.
bool Ops::matmul_exl2_glu_unfused(const Exl2MatmulParams& p) {
  if (!p.glu_up) return false;
  std::vector<float> a(static_cast<size_t>(p.n * p.w.in_features));
  GluParams g;
  g.gate = p.x;
  g.up = p.glu_up;
  g.out = a.data();
  g.n = p.n;
  g.dim = p.w.in_features;
  g.act = p.glu_act;
  glu(g);
  Exl2MatmulParams q = p;
  q.x = a.data();
  q.glu_up = nullptr;
  matmul_exl2(q);
  return true;
}

void Ops::matmul_exl2(const Exl2MatmulParams& p) {
  if (!host_memory())
    fail(ErrorKind::kInternal, "backend {} must implement matmul_exl2 (its memory is not host memory)", name());
  if (matmul_exl2_glu_unfused(p)) return;
  const Exl2View& w = p.w;
  const int64_t K = w.in_features, N = w.out_features, Np = w.padded_out();
  std::vector<double> acc(static_cast<size_t>(p.n * N), 0.0);
  for (int64_t gi = 0; gi < w.num_groups; ++gi) {
    const int32_t* g = w.groups + gi * 4;
    const int bits = g[0];
    const int64_t rows = g[1], qrow0 = g[2], row0 = g[3];
    const float smax = f16_to_f32(w.q_scale_max[gi]);
    const uint32_t mask = (1u << bits) - 1;
    for (int64_t c = 0; c < N; ++c) {
      const uint32_t code = ((w.q_scale[gi * (Np / 8) + c / 8] >> (4 * (c % 8))) & 15u) + 1;
      const double scale = double(float(code * code) * smax / 256.f);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t bit = r * bits, word = bit / 32, shift = bit % 32;
        uint64_t v = w.q_weight[(qrow0 + word) * Np + c] >> shift;
        if (shift + bits > 32) v |= uint64_t(w.q_weight[(qrow0 + word + 1) * Np + c]) << (32 - shift);
        const double q = double(int(uint32_t(v) & mask) - (1 << (bits - 1))) * scale;
        const int64_t k = w.perm[row0 + r];
        for (int64_t t = 0; t < p.n; ++t) acc[size_t(t * N + c)] += q * double(p.x[t * K + k]);
      }
    }
  }
  for (int64_t t = 0; t < p.n; ++t)
    for (int64_t c = 0; c < N; ++c)
      p.y[t * N + c] = float(acc[size_t(t * N + c)] + (w.bias ? double(f16_to_f32(w.bias[c])) : 0.0));
}

void Ops::gather_rows(const GatherRowsParams& p) {
  for (int64_t i = 0; i < p.n; ++i)
    std::memcpy(p.dst + i * p.dim, p.src + int64_t(p.idx[i]) * p.dim, size_t(p.dim) * sizeof(float));
}

void Ops::scatter_add_rows(const ScatterAddRowsParams& p) {
  for (int64_t i = 0; i < p.n; ++i) {
    float* d = p.dst + int64_t(p.idx[i]) * p.dim;
    const float* s = p.src + i * p.dim;
    const float w = p.weight[i];
    for (int64_t j = 0; j < p.dim; ++j) d[j] += w * s[j];
  }
}

void Ops::scatter_rows(const ScatterRowsParams& p) {
  for (int64_t i = 0; i < p.n; ++i)
    std::memcpy(p.dst + int64_t(p.idx[i]) * p.dim, p.src + i * p.dim, size_t(p.dim) * sizeof(float));
}

void Ops::ffn(const FfnParams& p) {
  MultiMatmulParams gu;
  gu.x = p.x;
  gu.x_lowp = p.x_lowp;
  gu.n = p.n;
  gu.count = 2;
  gu.w[0] = p.gate;
  gu.bias[0] = p.gate_bias;
  gu.y[0] = p.gate_buf;
  gu.w[1] = p.up;
  gu.bias[1] = p.up_bias;
  gu.y[1] = p.up_buf;
  matmul_multi(gu);
  GluParams g;
  g.gate = p.gate_buf;
  g.up = p.up_buf;
  g.out = p.gate_buf;
  g.n = p.n;
  g.dim = p.gate.rows;
  g.act = p.act;
  glu(g);
  MatmulParams d;
  d.x = p.gate_buf;
  d.w = p.down;
  d.bias = p.down_bias;
  d.y = p.out;
  d.n = p.n;
  matmul(d);
}

void Ops::rope_store_kv(const RopeStoreParams& p) {
  if (p.kv_quant == KvQuant::kNone && p.kv_dtype != DType::kF32)
    fail(ErrorKind::kUnsupported, "rope_store_kv on {}: a {} K/V cache is not supported", name(), dtype_name(p.kv_dtype));
  const int64_t qrow = p.n_heads * p.head_dim, row = p.n_kv_heads * p.head_dim;
  const int64_t qs = p.q_stride ? p.q_stride : qrow, ks = p.k_stride ? p.k_stride : row, vs = p.v_stride ? p.v_stride : row;
  // Dense copies where the input is strided (or q goes elsewhere), so rope() sees [n, heads, dim].
  float* q = p.q;
  if (p.q_out) {
    for (int64_t t = 0; t < p.n; ++t) std::memmove(p.q_out + t * qrow, p.q + t * qs, size_t(qrow) * sizeof(float));
    q = p.q_out;
  } else if (qs != qrow) {
    fail(ErrorKind::kInvalidArgument, "rope_store_kv: a strided q needs q_out");
  }
  std::vector<float> kd(static_cast<size_t>(p.n * row)), vd;
  for (int64_t t = 0; t < p.n; ++t) std::memcpy(kd.data() + t * row, p.k + t * ks, size_t(row) * sizeof(float));
  const float* v = p.v;
  if (vs != row) {
    vd.resize(kd.size());
    for (int64_t t = 0; t < p.n; ++t) std::memcpy(vd.data() + t * row, p.v + t * vs, size_t(row) * sizeof(float));
    v = vd.data();
  }
  for (auto [x, heads] : {std::pair{q, p.n_heads}, std::pair{kd.data(), p.n_kv_heads}}) {
    RopeParams r;
    r.x = x;
    r.cos = p.cos;
    r.sin = p.sin;
    r.n = p.n;
    r.n_heads = heads;
    r.head_dim = p.head_dim;
    r.rot_dim = p.rot_dim;
    rope(r);
  }
  if (p.kv_quant != KvQuant::kNone) {
    if (!host_memory()) fail(ErrorKind::kInternal, "backend {} must implement a quantized rope_store_kv", name());
    if (p.head_dim % kKvQuantGroup != 0)
      fail(ErrorKind::kUnsupported, "rope_store_kv: a {} K/V cache needs head_dim a multiple of {}, not {}",
           kv_quant_name(p.kv_quant), kKvQuantGroup, p.head_dim);
    for (int64_t t = 0; t < p.n; ++t) {
      const int64_t at = int64_t(p.slots[t]) * row;
      kv_quantize(p.kv_quant, kd.data() + t * row, row, static_cast<uint8_t*>(p.k_cache) + kv_code_bytes(p.kv_quant, at),
                  p.k_scale + at / kKvQuantGroup);
      kv_quantize(p.kv_quant, v + t * row, row, static_cast<uint8_t*>(p.v_cache) + kv_code_bytes(p.kv_quant, at),
                  p.v_scale + at / kKvQuantGroup);
    }
    return;
  }
  for (auto [dst, src] : {std::pair{static_cast<float*>(p.k_cache), static_cast<const float*>(kd.data())},
                          std::pair{static_cast<float*>(p.v_cache), v}}) {
    ScatterRowsParams s;
    s.dst = dst;
    s.idx = p.slots;
    s.src = src;
    s.n = p.n;
    s.dim = row;
    scatter_rows(s);
  }
}

void Ops::attention_batch(const BatchAttentionParams& p) {
  if (!host_memory())
    fail(ErrorKind::kInternal, "backend {} must implement attention_batch (its memory is not host memory)", name());
  const bool quant = p.kv_quant != KvQuant::kNone;
  if (!quant && p.kv_dtype != DType::kF32)
    fail(ErrorKind::kUnsupported, "attention_batch on {}: a {} K/V cache is not supported", name(), dtype_name(p.kv_dtype));
  if (quant && p.head_dim % kKvQuantGroup != 0)
    fail(ErrorKind::kUnsupported, "attention_batch: a {} K/V cache needs head_dim a multiple of {}, not {}",
         kv_quant_name(p.kv_quant), kKvQuantGroup, p.head_dim);
  const float* pk = static_cast<const float*>(p.k);
  const float* pv = static_cast<const float*>(p.v);
  const int64_t row = p.n_kv_heads * p.head_dim, qrow = p.n_heads * p.head_dim;
  std::vector<float> kbuf, vbuf;
  for (int64_t s = 0; s < p.num_seqs; ++s) {
    const int64_t q0 = p.cu_q[s], nq = p.cu_q[s + 1] - q0, kv = p.kv_len[s];
    if (nq <= 0) continue;
    if (kv < nq || kv > p.table_stride * p.block_size)
      fail(ErrorKind::kInvalidArgument, "attention_batch: sequence {} has {} keys for {} queries (room for {})", s, kv,
           nq, p.table_stride * p.block_size);
    const int32_t* table = p.block_table + s * p.table_stride;
    const int64_t blocks = (kv + p.block_size - 1) / p.block_size;
    bool consecutive = true;
    for (int64_t b = 1; b < blocks; ++b) consecutive &= table[b] == table[0] + b;
    AttentionParams a;
    if ((quant || !consecutive) && attention_reads_paged()) {
      a.block_table = table;
      a.block_size = p.block_size;
      a.kv_quant = p.kv_quant;
      a.k = pk;
      a.v = pv;
      a.k_codes = p.k;
      a.v_codes = p.v;
      a.k_scale = p.k_scale;
      a.v_scale = p.v_scale;
    } else if (quant) {
      // The host reference widens the sequence's rows block by block (the CUDA kernels read the
      // codes in place).
      kbuf.resize(size_t(kv * row));
      vbuf.resize(size_t(kv * row));
      for (int64_t j = 0; j < kv; j += p.block_size) {
        const int64_t len = std::min(p.block_size, kv - j);
        const int64_t src = int64_t(table[j / p.block_size]) * p.block_size * row;
        const auto* kc = static_cast<const uint8_t*>(p.k) + kv_code_bytes(p.kv_quant, src);
        const auto* vc = static_cast<const uint8_t*>(p.v) + kv_code_bytes(p.kv_quant, src);
        kv_dequantize(p.kv_quant, kc, p.k_scale + src / kKvQuantGroup, len * row, kbuf.data() + j * row);
        kv_dequantize(p.kv_quant, vc, p.v_scale + src / kKvQuantGroup, len * row, vbuf.data() + j * row);
      }
      a.k = kbuf.data();
      a.v = vbuf.data();
    } else if (consecutive) {
      a.k = pk + int64_t(table[0]) * p.block_size * row;
      a.v = pv + int64_t(table[0]) * p.block_size * row;
    } else {
      kbuf.resize(size_t(kv * row));
      vbuf.resize(size_t(kv * row));
      for (int64_t j = 0; j < kv; j += p.block_size) {
        const int64_t len = std::min(p.block_size, kv - j);
        const int64_t src = int64_t(table[j / p.block_size]) * p.block_size * row;
        std::memcpy(kbuf.data() + j * row, pk + src, size_t(len * row) * sizeof(float));
        std::memcpy(vbuf.data() + j * row, pv + src, size_t(len * row) * sizeof(float));
      }
      a.k = kbuf.data();
      a.v = vbuf.data();
    }
    a.q = p.q + q0 * qrow;
    a.out = p.out + q0 * qrow;
    a.n = nq;
    a.kv_len = kv;
    a.n_heads = p.n_heads;
    a.n_kv_heads = p.n_kv_heads;
    a.head_dim = p.head_dim;
    a.scale = p.scale;
    a.softcap = p.softcap;
    a.window = p.window;
    attention(a);
  }
}

#ifndef LATHE_HAVE_CUDA
std::unique_ptr<Ops> make_cuda_ops(const BackendOptions&) { return nullptr; }
bool cuda_available() { return false; }
#endif

}  // namespace lathe::ops
