#include "quant/exl2.h"

#include <algorithm>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/bitpack.h"

namespace lathe::quant {

int64_t Exl2Matrix::qrows() const {
  int64_t r = 0;
  for (const auto& g : groups) r += g.rows * g.bits / 32;
  return r;
}

namespace {

void check_groups(const std::vector<Exl2Group>& groups, int64_t K, const std::string& where) {
  if (groups.empty()) fail(ErrorKind::kFormat, "{}: no quantization groups", where);
  int64_t rows = 0;
  for (size_t i = 0; i < groups.size(); ++i) {
    const auto& g = groups[i];
    if (!exl2_bits_supported(g.bits))
      fail(ErrorKind::kFormat, "{}: group {} has {} bits; EXL2 has 2, 3, 4, 5, 6 and 8", where, i, g.bits);
    if (g.rows <= 0 || g.rows % rows_per_unit(g.bits) != 0)
      fail(ErrorKind::kFormat, "{}: group {} has {} rows, not a positive multiple of {} for {} bits", where, i, g.rows,
           rows_per_unit(g.bits), g.bits);
    if (i > 0 && g.bits > groups[i - 1].bits)
      fail(ErrorKind::kFormat, "{}: group bit widths must descend, but group {} has {} after {}", where, i, g.bits,
           groups[i - 1].bits);
    rows += g.rows;
  }
  if (rows != K) fail(ErrorKind::kFormat, "{}: groups cover {} rows but the layer has {} inputs", where, rows, K);
}

void check_invperm(const std::vector<int32_t>& invperm, int64_t K, const std::string& where) {
  std::vector<char> seen(static_cast<size_t>(K), 0);
  for (int32_t p : invperm) {
    if (p < 0 || p >= K || seen[size_t(p)])
      fail(ErrorKind::kFormat, "{}.q_invperm is not a permutation of 0..{}", where, K - 1);
    seen[size_t(p)] = 1;
  }
}

// (bits, first q_weight row) per group, the format's int16 table.
std::vector<int16_t> group_table(const std::vector<Exl2Group>& groups, const std::string& where) {
  std::vector<int16_t> table;
  int64_t qrow = 0;
  for (const auto& g : groups) {
    if (qrow > 32767) fail(ErrorKind::kUnsupported, "{}: {} packed rows do not fit the int16 group table", where, qrow);
    table.push_back(int16_t(g.bits));
    table.push_back(int16_t(qrow));
    qrow += g.rows * g.bits / 32;
  }
  return table;
}

template <typename T>
std::vector<T> copy_of(const TensorView& v) {
  std::vector<T> out(static_cast<size_t>(v.numel()));
  std::memcpy(out.data(), v.data, out.size() * sizeof(T));
  return out;
}

TensorView need(const io::WeightStore& store, const std::string& name, DType dtype) {
  auto v = store.find(name);
  if (!v) fail(ErrorKind::kFormat, "EXL2 tensor {} is missing", name);
  if (v->dtype != dtype)
    fail(ErrorKind::kFormat, "EXL2 tensor {} has dtype {}, expected {}", name, dtype_name(v->dtype), dtype_name(dtype));
  return *v;
}

}  // namespace

Exl2Matrix exl2_pack(int64_t K, int64_t N, const std::vector<Exl2Group>& groups, const std::vector<int32_t>& perm,
                     const uint8_t* q, const uint8_t* scale_codes, const float* scale_max, const float* bias) {
  Exl2Matrix m;
  m.in_features = K;
  m.out_features = N;
  m.groups = groups;
  check_groups(groups, K, "exl2_pack");
  if (int64_t(perm.size()) != K) fail(ErrorKind::kInvalidArgument, "exl2_pack: permutation has {} entries for {} rows", perm.size(), K);
  m.q_invperm.assign(static_cast<size_t>(K), 0);
  for (int64_t p = 0; p < K; ++p) {
    if (perm[size_t(p)] < 0 || perm[size_t(p)] >= K) fail(ErrorKind::kInvalidArgument, "exl2_pack: bad permutation");
    m.q_invperm[size_t(perm[size_t(p)])] = int32_t(p);
  }
  check_invperm(m.q_invperm, K, "exl2_pack");
  const int64_t Np = m.padded_out(), G = int64_t(groups.size());
  m.q_weight.assign(size_t(m.qrows() * Np), 0);
  std::vector<uint8_t> block;
  int64_t row = 0, qrow = 0;
  for (const auto& g : groups) {
    // Padding columns hold the zero code 2^(bits - 1).
    block.assign(size_t(g.rows * Np), uint8_t(1u << (g.bits - 1)));
    for (int64_t r = 0; r < g.rows; ++r)
      for (int64_t c = 0; c < N; ++c) {
        const uint8_t v = q[(row + r) * N + c];
        if (v >= (1u << g.bits)) fail(ErrorKind::kInvalidArgument, "exl2_pack: code {} does not fit {} bits", int(v), g.bits);
        block[size_t(r * Np + c)] = v;
      }
    pack_columns(block.data(), g.rows, Np, g.bits, m.q_weight.data() + qrow * Np);
    row += g.rows;
    qrow += g.rows * g.bits / 32;
  }
  m.q_groups = group_table(groups, "exl2_pack");
  std::vector<uint8_t> codes(size_t(G * Np), 1);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t c = 0; c < N; ++c) codes[size_t(g * Np + c)] = scale_codes[g * N + c];
  m.q_scale.assign(size_t(G * Np / 8), 0);
  pack_scales(codes.data(), G, Np, m.q_scale.data());
  m.q_scale_max.resize(size_t(G));
  for (int64_t g = 0; g < G; ++g) m.q_scale_max[size_t(g)] = f32_to_f16(scale_max[g]);
  if (bias) {
    m.bias.resize(size_t(N));
    for (int64_t c = 0; c < N; ++c) m.bias[size_t(c)] = f32_to_f16(bias[c]);
  }
  return m;
}

bool exl2_present(const io::WeightStore& store, const std::string& prefix) { return store.contains(prefix + ".q_weight"); }

Exl2Matrix exl2_read(const io::WeightStore& store, const std::string& prefix) {
  const TensorView qw = need(store, prefix + ".q_weight", DType::kI32);
  const TensorView qs = need(store, prefix + ".q_scale", DType::kI32);
  const TensorView qm = need(store, prefix + ".q_scale_max", DType::kF16);
  const TensorView qg = need(store, prefix + ".q_groups", DType::kI16);
  const TensorView qi = need(store, prefix + ".q_invperm", DType::kI32);
  if (qw.rank() != 2 || qs.rank() != 2 || qm.rank() != 1 || qg.rank() != 1 || qi.rank() != 1)
    fail(ErrorKind::kFormat, "EXL2 layer {} has tensors of the wrong rank", prefix);
  Exl2Matrix m;
  m.in_features = qi.dim(0);
  const int64_t Np = qw.dim(1), G = qm.dim(0);
  if (Np % 32 != 0) fail(ErrorKind::kFormat, "{}.q_weight has {} columns, not a multiple of 32", prefix, Np);
  if (qg.dim(0) != 2 * G || qs.dim(0) != G || qs.dim(1) * 8 != Np)
    fail(ErrorKind::kFormat, "EXL2 layer {}: q_groups {}, q_scale [{}, {}] and q_scale_max {} disagree on {} groups of {} columns",
         prefix, qg.dim(0), qs.dim(0), qs.dim(1), qm.dim(0), G, Np);
  const int16_t* table = qg.as<int16_t>();
  const int64_t qrows = qw.dim(0);
  for (int64_t g = 0; g < G; ++g) {
    const int bits = table[2 * g];
    const int64_t start = table[2 * g + 1], end = g + 1 < G ? table[2 * g + 3] : qrows;
    if (!exl2_bits_supported(bits) || start < 0 || end <= start || end > qrows)
      fail(ErrorKind::kFormat, "{}.q_groups entry {} (bits {}, rows {}..{}) is invalid", prefix, g, bits, start, end);
    m.groups.push_back({bits, (end - start) * 32 / bits});
  }
  check_groups(m.groups, m.in_features, prefix);
  if (auto b = store.find(prefix + ".bias")) {
    if (b->dtype != DType::kF16 || b->rank() != 1)
      fail(ErrorKind::kFormat, "{}.bias must be a float16 vector", prefix);
    m.out_features = b->dim(0);
    m.bias = copy_of<uint16_t>(*b);
  } else {
    m.out_features = Np;  // the format does not record N without a bias; padding columns dequantize to 0
  }
  if (m.out_features > Np) fail(ErrorKind::kFormat, "{}.bias has {} entries for {} columns", prefix, m.out_features, Np);
  m.q_weight = copy_of<uint32_t>(qw);
  m.q_scale = copy_of<uint32_t>(qs);
  m.q_scale_max = copy_of<uint16_t>(qm);
  m.q_invperm = copy_of<int32_t>(qi);
  m.q_groups = copy_of<int16_t>(qg);
  check_invperm(m.q_invperm, m.in_features, prefix);
  return m;
}

std::vector<io::NamedTensor> exl2_tensors(const Exl2Matrix& m, const std::string& prefix) {
  const int64_t Np = m.padded_out(), G = int64_t(m.groups.size());
  if (int64_t(m.q_groups.size()) != 2 * G) fail(ErrorKind::kInternal, "{}: group table out of date", prefix);
  std::vector<io::NamedTensor> out;
  out.push_back({prefix + ".q_weight", TensorView{m.q_weight.data(), DType::kI32, {m.qrows(), Np}}});
  out.push_back({prefix + ".q_scale", TensorView{m.q_scale.data(), DType::kI32, {G, Np / 8}}});
  out.push_back({prefix + ".q_scale_max", TensorView{m.q_scale_max.data(), DType::kF16, {G}}});
  out.push_back({prefix + ".q_groups", TensorView{m.q_groups.data(), DType::kI16, {2 * G}}});
  out.push_back({prefix + ".q_invperm", TensorView{m.q_invperm.data(), DType::kI32, {m.in_features}}});
  if (!m.bias.empty()) out.push_back({prefix + ".bias", TensorView{m.bias.data(), DType::kF16, {m.out_features}}});
  return out;
}

Exl2Tables exl2_tables(const Exl2Matrix& m) {
  Exl2Tables t;
  t.perm.resize(size_t(m.in_features));
  for (int64_t k = 0; k < m.in_features; ++k) t.perm[size_t(m.q_invperm[size_t(k)])] = int32_t(k);
  int64_t row = 0, qrow = 0;
  for (const Exl2Group& g : m.groups) {
    for (int64_t v : {int64_t(g.bits), g.rows, qrow, row}) t.groups.push_back(int32_t(v));
    row += g.rows;
    qrow += g.rows * g.bits / 32;
  }
  return t;
}

ops::Exl2View exl2_view(const Exl2Matrix& m, const Exl2Tables& t, int64_t out_features) {
  ops::Exl2View v;
  v.q_weight = m.q_weight.data();
  v.q_scale = m.q_scale.data();
  v.q_scale_max = m.q_scale_max.data();
  v.perm = t.perm.data();
  v.groups = t.groups.data();
  v.bias = m.bias.empty() ? nullptr : m.bias.data();
  v.in_features = m.in_features;
  v.out_features = out_features;
  v.num_groups = int64_t(m.groups.size());
  return v;
}

void exl2_dequantize(const Exl2Matrix& m, float* w) {
  const int64_t K = m.in_features, N = m.out_features, Np = m.padded_out(), G = int64_t(m.groups.size());
  std::vector<int32_t> perm(static_cast<size_t>(K));  // act-order position -> input channel
  for (int64_t k = 0; k < K; ++k) perm[size_t(m.q_invperm[size_t(k)])] = int32_t(k);
  std::vector<uint8_t> codes(static_cast<size_t>(G * Np));
  unpack_scales(m.q_scale.data(), G, Np, codes.data());
  std::vector<uint8_t> q;
  int64_t row = 0, qrow = 0;
  for (int64_t gi = 0; gi < G; ++gi) {
    const Exl2Group& g = m.groups[size_t(gi)];
    q.resize(size_t(g.rows * Np));
    unpack_columns(m.q_weight.data() + qrow * Np, g.rows, Np, g.bits, q.data());
    const float max = f16_to_f32(m.q_scale_max[size_t(gi)]);
    const int zero = 1 << (g.bits - 1);
    for (int64_t c = 0; c < N; ++c) {
      const float code = float(codes[size_t(gi * Np + c)]);
      const float scale = code * code * max / 256.f;
      float* wc = w + c * K;
      for (int64_t r = 0; r < g.rows; ++r) wc[perm[size_t(row + r)]] = float(int(q[size_t(r * Np + c)]) - zero) * scale;
    }
    row += g.rows;
    qrow += g.rows * g.bits / 32;
  }
}

double exl2_bits_per_weight(int64_t K, int64_t N, const std::vector<Exl2Group>& groups, bool bias) {
  double bits = 32.0 * double(K) + (bias ? 16.0 * double(N) : 0.0);
  for (const auto& g : groups) bits += double(g.rows) * g.bits * double(N) + 16.0 + 32.0 + 4.0 * double(N);
  return bits / (double(K) * double(N));
}

double exl2_bits_per_weight(const Exl2Matrix& m) {
  return exl2_bits_per_weight(m.in_features, m.out_features, m.groups, !m.bias.empty());
}

}  // namespace lathe::quant
