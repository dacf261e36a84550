#include "quant/gptq.h"

#include <algorithm>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

namespace lathe::quant {

namespace {

void check_bits(int bits) {
  if (bits != 2 && bits != 4 && bits != 8)
    fail(ErrorKind::kUnsupported, "{}-bit GPTQ is not supported (2, 4 and 8 bits are)", bits);
}

TensorView need(const io::WeightStore& store, const std::string& name) {
  auto v = store.find(name);
  if (!v) fail(ErrorKind::kFormat, "GPTQ tensor {} is missing", name);
  return *v;
}

std::vector<int32_t> ints(const TensorView& v, const std::string& name) {
  if (v.dtype != DType::kI32) fail(ErrorKind::kFormat, "GPTQ tensor {} has dtype {}, expected I32", name, dtype_name(v.dtype));
  std::vector<int32_t> out(static_cast<size_t>(v.numel()));
  std::memcpy(out.data(), v.data, out.size() * sizeof(int32_t));
  return out;
}

std::vector<float> floats(const TensorView& v, const std::string& name) {
  if (!dtype_is_float(v.dtype) || v.dtype == DType::kF64)
    fail(ErrorKind::kFormat, "GPTQ tensor {} has dtype {}, expected a float type", name, dtype_name(v.dtype));
  std::vector<float> out(static_cast<size_t>(v.numel()));
  convert_to_f32(v.data, v.dtype, out.data(), out.size());
  return out;
}

inline uint32_t code_at(const int32_t* words, int64_t index, int bits) {
  const int per = 32 / bits;
  return (uint32_t(words[index / per]) >> ((index % per) * bits)) & ((1u << bits) - 1u);
}

}  // namespace

bool gptq_present(const io::WeightStore& store, const std::string& prefix) { return store.contains(prefix + ".qweight"); }

GptqMatrix gptq_read(const io::WeightStore& store, const std::string& prefix, int bits, int64_t group_size,
                     bool v2_zeros) {
  check_bits(bits);
  const int per = 32 / bits;
  GptqMatrix m;
  m.bits = bits;
  m.v2_zeros = v2_zeros;
  const TensorView qw = need(store, prefix + ".qweight"), qz = need(store, prefix + ".qzeros"),
                   sc = need(store, prefix + ".scales");
  if (qw.rank() != 2 || qz.rank() != 2 || sc.rank() != 2)
    fail(ErrorKind::kFormat, "GPTQ layer {}: qweight, qzeros and scales must be matrices", prefix);
  m.in_features = qw.dim(0) * per;
  m.out_features = qw.dim(1);
  const int64_t G = sc.dim(0);
  if (sc.dim(1) != m.out_features || qz.dim(0) != G || qz.dim(1) * per != m.out_features)
    fail(ErrorKind::kFormat, "GPTQ layer {}: qweight [{}, {}], qzeros [{}, {}] and scales [{}, {}] disagree at {} bits",
         prefix, qw.dim(0), qw.dim(1), qz.dim(0), qz.dim(1), sc.dim(0), sc.dim(1), bits);
  m.qweight = ints(qw, prefix + ".qweight");
  m.qzeros = ints(qz, prefix + ".qzeros");
  m.scales = floats(sc, prefix + ".scales");
  if (auto gi = store.find(prefix + ".g_idx")) {
    m.g_idx = ints(*gi, prefix + ".g_idx");
    if (int64_t(m.g_idx.size()) != m.in_features)
      fail(ErrorKind::kFormat, "{}.g_idx has {} entries for {} inputs", prefix, m.g_idx.size(), m.in_features);
    bool trivial = true;  // all zeros: the exporter wrote it but the groups are sequential
    for (int32_t g : m.g_idx) {
      if (g < 0 || g >= G) fail(ErrorKind::kFormat, "{}.g_idx has group {} of {}", prefix, g, G);
      trivial &= g == 0;
    }
    if (trivial && G > 1) m.g_idx.clear();
  }
  if (group_size < 0) {
    group_size = m.in_features;
  } else if (group_size == 0) {
    group_size = 1;
    while (group_size * G < m.in_features) group_size *= 2;
  }
  m.group_size = group_size;
  if (m.g_idx.empty() && (m.in_features + group_size - 1) / group_size != G)
    fail(ErrorKind::kFormat, "GPTQ layer {}: {} groups do not match {} inputs in groups of {} (check group_size)", prefix, G,
         m.in_features, group_size);
  if (auto b = store.find(prefix + ".bias")) {
    m.bias = floats(*b, prefix + ".bias");
    if (int64_t(m.bias.size()) != m.out_features)
      fail(ErrorKind::kFormat, "{}.bias has {} entries for {} outputs", prefix, m.bias.size(), m.out_features);
  }
  return m;
}

void gptq_dequantize(const GptqMatrix& m, float* w) {
  const int64_t K = m.in_features, N = m.out_features;
  const int offset = m.v2_zeros ? 0 : 1;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t g = m.g_idx.empty() ? k / m.group_size : m.g_idx[size_t(k)];
    for (int64_t n = 0; n < N; ++n) {
      const uint32_t word = uint32_t(m.qweight[size_t((k / (32 / m.bits)) * N + n)]);
      const int code = int((word >> ((k % (32 / m.bits)) * m.bits)) & ((1u << m.bits) - 1u));
      const int zero = int(code_at(m.qzeros.data() + g * (N * m.bits / 32), n, m.bits)) + offset;
      w[n * K + k] = m.scales[size_t(g * N + n)] * float(code - zero);
    }
  }
}

GptqMatrix gptq_pack(int bits, int64_t K, int64_t N, int64_t group_size, bool v2_zeros, const uint8_t* q,
                     const uint8_t* zeros, const float* scales, const std::vector<int32_t>& g_idx) {
  check_bits(bits);
  const int per = 32 / bits;
  if (K % per != 0 || N % per != 0)
    fail(ErrorKind::kInvalidArgument, "gptq_pack: {}x{} does not pack at {} bits", K, N, bits);
  GptqMatrix m;
  m.bits = bits;
  m.in_features = K;
  m.out_features = N;
  m.group_size = group_size;
  m.v2_zeros = v2_zeros;
  m.g_idx = g_idx;
  int64_t G = (K + group_size - 1) / group_size;
  for (int32_t g : g_idx) G = std::max<int64_t>(G, g + 1);
  m.qweight.assign(size_t(K / per * N), 0);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n)
      m.qweight[size_t((k / per) * N + n)] |= int32_t(uint32_t(q[k * N + n]) << ((k % per) * bits));
  m.qzeros.assign(size_t(G * N / per), 0);
  const int offset = v2_zeros ? 0 : 1;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t n = 0; n < N; ++n) {
      const uint32_t stored = uint32_t(int(zeros[g * N + n]) - offset) & ((1u << bits) - 1u);
      m.qzeros[size_t(g * (N / per) + n / per)] |= int32_t(stored << ((n % per) * bits));
    }
  m.scales.assign(scales, scales + G * N);
  return m;
}

std::vector<io::NamedTensor> gptq_tensors(const GptqMatrix& m, const std::string& prefix,
                                          std::vector<uint16_t>* scale_storage) {
  const int per = 32 / m.bits;
  const int64_t G = m.groups();
  scale_storage->resize(m.scales.size());
  for (size_t i = 0; i < m.scales.size(); ++i) (*scale_storage)[i] = f32_to_f16(m.scales[i]);
  std::vector<io::NamedTensor> out;
  out.push_back({prefix + ".qweight", TensorView{m.qweight.data(), DType::kI32, {m.in_features / per, m.out_features}}});
  out.push_back({prefix + ".qzeros", TensorView{m.qzeros.data(), DType::kI32, {G, m.out_features / per}}});
  out.push_back({prefix + ".scales", TensorView{scale_storage->data(), DType::kF16, {G, m.out_features}}});
  if (!m.g_idx.empty()) out.push_back({prefix + ".g_idx", TensorView{m.g_idx.data(), DType::kI32, {m.in_features}}});
  return out;
}

}  // namespace lathe::quant
