#include "support/batch_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <string>

#include "ops/kv_quant.h"

namespace lathe::testing {
namespace {

template <typename T>
ops::Buffer upload(ops::Ops& ops, const std::vector<T>& v) {
  ops::Buffer b(ops, std::max<size_t>(1, v.size()) * sizeof(T));
  ops.copy_to_backend(b.data(), v.data(), v.size() * sizeof(T));
  return b;
}

}  // namespace

double check_batch_attention(ops::Ops& backend, ops::Ops& ref, std::mt19937& rng, Worst& worst,
                             const BatchAttnCase& c, double tol) {
  const int64_t S = int64_t(c.q_len.size()), bs = c.block_size, hd = c.head_dim;
  const int64_t row = c.kv_heads * hd, qrow = c.heads * hd;
  int64_t stride = 0, n = 0, max_q = 0, max_kv = 0;
  for (int64_t s = 0; s < S; ++s) {
    stride = std::max(stride, (c.kv_len[size_t(s)] + bs - 1) / bs);
    n += c.q_len[size_t(s)];
    max_q = std::max(max_q, c.q_len[size_t(s)]);
    max_kv = std::max(max_kv, c.kv_len[size_t(s)]);
  }
  stride += c.spare_blocks;
  // Every sequence gets `stride` blocks of a shuffled pool (plus one block nobody owns).
  const int64_t blocks = S * stride + 1;
  std::vector<int32_t> perm(static_cast<size_t>(blocks));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> table(static_cast<size_t>(S * stride));
  for (size_t i = 0; i < table.size(); ++i) table[i] = perm[i];

  const std::vector<float> q = random_floats(rng, size_t(n * qrow), -2.f, 2.f);
  std::vector<float> k = random_floats(rng, size_t(blocks * bs * row), -2.f, 2.f);
  std::vector<float> v = random_floats(rng, size_t(blocks * bs * row));
  std::vector<uint16_t> k16, v16;
  if (c.kv_dtype == DType::kBF16) {
    for (auto* kv : {&k, &v})
      for (float& x : *kv) x = bf16_to_f32(f32_to_bf16(x));
    for (float x : k) k16.push_back(f32_to_bf16(x));
    for (float x : v) v16.push_back(f32_to_bf16(x));
  }
  std::vector<uint8_t> kq, vq;
  std::vector<uint16_t> ks16, vs16;
  if (c.kv_quant != ops::KvQuant::kNone) {
    const int64_t elems = int64_t(k.size());
    kq.resize(ops::kv_code_bytes(c.kv_quant, elems));
    vq.resize(kq.size());
    ks16.resize(size_t(elems / ops::kKvQuantGroup));
    vs16.resize(ks16.size());
    ops::kv_quantize(c.kv_quant, k.data(), elems, kq.data(), ks16.data());
    ops::kv_quantize(c.kv_quant, v.data(), elems, vq.data(), vs16.data());
    ops::kv_dequantize(c.kv_quant, kq.data(), ks16.data(), elems, k.data());
    ops::kv_dequantize(c.kv_quant, vq.data(), vs16.data(), elems, v.data());
  }
  std::vector<int32_t> cu_q{0}, kv_len;
  for (int64_t s = 0; s < S; ++s) {
    cu_q.push_back(cu_q.back() + int32_t(c.q_len[size_t(s)]));
    kv_len.push_back(int32_t(c.kv_len[size_t(s)]));
  }

  // Reference: each sequence on its own, K/V gathered into contiguous rows.
  std::vector<float> o_ref(q.size(), NAN);
  for (int64_t s = 0; s < S; ++s) {
    const int64_t kv = c.kv_len[size_t(s)];
    std::vector<float> ks(size_t(kv * row)), vs(size_t(kv * row));
    for (int64_t j = 0; j < kv; ++j) {
      const int64_t src = (int64_t(table[size_t(s * stride + j / bs)]) * bs + j % bs) * row;
      std::memcpy(ks.data() + j * row, k.data() + src, size_t(row) * sizeof(float));
      std::memcpy(vs.data() + j * row, v.data() + src, size_t(row) * sizeof(float));
    }
    ops::AttentionParams a;
    a.q = q.data() + cu_q[size_t(s)] * qrow;
    a.out = o_ref.data() + cu_q[size_t(s)] * qrow;
    a.k = ks.data();
    a.v = vs.data();
    a.n = c.q_len[size_t(s)];
    a.kv_len = kv;
    a.n_heads = c.heads;
    a.n_kv_heads = c.kv_heads;
    a.head_dim = hd;
    a.scale = 1.f / std::sqrt(float(hd));
    a.softcap = c.softcap;
    a.window = c.window;
    ref.attention(a);
  }

  ops::Buffer dq = upload(backend, q);
  const bool quant = c.kv_quant != ops::KvQuant::kNone;
  ops::Buffer dk = quant ? upload(backend, kq) : c.kv_dtype == DType::kBF16 ? upload(backend, k16) : upload(backend, k);
  ops::Buffer dv = quant ? upload(backend, vq) : c.kv_dtype == DType::kBF16 ? upload(backend, v16) : upload(backend, v);
  ops::Buffer dks = upload(backend, ks16), dvs = upload(backend, vs16);
  ops::Buffer dcu = upload(backend, cu_q), dkv = upload(backend, kv_len), dtab = upload(backend, table);
  ops::Buffer dout(backend, q.size() * sizeof(float));
  ops::BatchAttentionParams p;
  p.q = dq.f32();
  p.k = dk.data();
  p.v = dv.data();
  p.kv_dtype = c.kv_dtype;
  p.kv_quant = c.kv_quant;
  p.k_scale = quant ? static_cast<const uint16_t*>(dks.data()) : nullptr;
  p.v_scale = quant ? static_cast<const uint16_t*>(dvs.data()) : nullptr;
  p.out = dout.f32();
  p.n = n;
  p.num_seqs = S;
  p.cu_q = static_cast<const int32_t*>(dcu.data());
  p.kv_len = static_cast<const int32_t*>(dkv.data());
  p.block_table = static_cast<const int32_t*>(dtab.data());
  p.block_size = bs;
  p.table_stride = stride;
  p.max_q = max_q;
  p.max_kv = c.spare_blocks ? stride * bs : max_kv;
  p.n_heads = c.heads;
  p.n_kv_heads = c.kv_heads;
  p.head_dim = hd;
  p.scale = 1.f / std::sqrt(float(hd));
  p.softcap = c.softcap;
  p.window = c.window;
  backend.attention_batch(p);
  std::vector<float> got(q.size(), NAN);
  backend.copy_to_host(got.data(), dout.data(), got.size() * sizeof(float));

  std::string what = "seqs (q/kv):";
  for (int64_t s = 0; s < S; ++s)
    what += " " + std::to_string(c.q_len[size_t(s)]) + "/" + std::to_string(c.kv_len[size_t(s)]);
  char tail[200];
  std::snprintf(tail, sizeof tail, " heads=%lld/%lld d=%lld window=%lld softcap=%g block=%lld spare=%lld kv=%s",
                (long long)c.heads, (long long)c.kv_heads, (long long)hd, (long long)c.window, c.softcap,
                (long long)bs, (long long)c.spare_blocks, quant ? ops::kv_quant_name(c.kv_quant) : dtype_name(c.kv_dtype));
  const double err = rel_error(got, o_ref);
  worst.check(err, tol, what + tail);
  if (c.lowp_out) {  // the same call handing over a bf16 copy only: bit-identical to got, rounded
    ops::Buffer dlow(backend, q.size() * 2);
    p.out = nullptr;
    p.out_lowp = dlow.data();
    p.lowp_dtype = DType::kBF16;
    backend.attention_batch(p);
    std::vector<uint16_t> low(q.size());
    backend.copy_to_host(low.data(), dlow.data(), low.size() * 2);
    size_t mismatched = 0;
    for (size_t i = 0; i < low.size(); ++i) mismatched += low[i] != f32_to_bf16(got[i]);
    worst.check(double(mismatched), 0.0, what + tail + " (bf16 out_lowp, mismatched elements)");
  }
  return err;
}

}  // namespace lathe::testing
