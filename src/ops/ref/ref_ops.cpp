// Scalar reference of every op: the oracle the fast backends are tested against. No SIMD, no
// threads; accumulation in double where it is cheap, so the oracle is more exact than the fast paths.
#include <cmath>
#include <vector>

#include "core/error.h"
#include "ops/ops.h"

namespace lathe::ops {
namespace {

float weight_at(const Weight& w, int64_t row, int64_t col) {
  const int64_t i = row * w.cols + col;
  switch (w.dtype) {
    case DType::kF32: return static_cast<const float*>(w.data)[i];
    case DType::kF16: return f16_to_f32(static_cast<const uint16_t*>(w.data)[i]);
    case DType::kBF16: return bf16_to_f32(static_cast<const uint16_t*>(w.data)[i]);
    default: fail(ErrorKind::kUnsupported, "reference ops: weight dtype {} is not supported", dtype_name(w.dtype));
  }
}

float activate(Activation act, float x) {
  switch (act) {
    case Activation::kSilu: return x / (1.f + std::exp(-x));
    case Activation::kGeluTanh: {
      // gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
      const double xd = x;
      return float(0.5 * xd * (1.0 + std::tanh(0.7978845608028654 * (xd + 0.044715 * xd * xd * xd))));
    }
    case Activation::kGelu: return float(0.5 * double(x) * (1.0 + std::erf(double(x) / std::sqrt(2.0))));
    case Activation::kRelu: return x > 0 ? x : 0.f;
  }
  return x;
}

class RefOps final : public Ops {
 public:
  const char* name() const override { return "ref"; }

  void matmul(const MatmulParams& p) override {
    const int64_t m = p.w.rows, k = p.w.cols;
    for (int64_t t = 0; t < p.n; ++t) {
      for (int64_t r = 0; r < m; ++r) {
        double acc = p.bias ? p.bias[r] : 0.0;
        for (int64_t c = 0; c < k; ++c) acc += double(p.x[t * k + c]) * weight_at(p.w, r, c);
        p.y[t * m + r] = float(acc);
      }
    }
  }

  void rms_norm(const RmsNormParams& p) override {
    for (int64_t t = 0; t < p.n; ++t) {
      const float* x = p.x + t * p.dim;
      float* y = p.y + t * p.dim;
      double ss = 0;
      for (int64_t i = 0; i < p.dim; ++i) ss += double(x[i]) * x[i];
      const float inv = float(1.0 / std::sqrt(ss / double(p.dim) + double(p.eps)));
      for (int64_t i = 0; i < p.dim; ++i) y[i] = x[i] * inv * (p.weight_offset + weight_at(p.w, 0, i));
    }
  }

  void rope(const RopeParams& p) override {
    const int64_t half = p.rot_dim / 2;
    for (int64_t t = 0; t < p.n; ++t) {
      for (int64_t h = 0; h < p.n_heads; ++h) {
        float* x = p.x + (t * p.n_heads + h) * p.head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float c = p.cos[t * half + i], s = p.sin[t * half + i];
          const float a = x[i], b = x[i + half];
          x[i] = a * c - b * s;
          x[i + half] = b * c + a * s;
        }
      }
    }
  }

  void attention(const AttentionParams& p) override {
    const int64_t group = p.n_heads / p.n_kv_heads;
    const int64_t d = p.head_dim;
    std::vector<double> scores(size_t(p.kv_len));
    for (int64_t t = 0; t < p.n; ++t) {
      const int64_t pos = p.kv_len - p.n + t;
      const int64_t first = p.window > 0 ? std::max<int64_t>(0, pos - p.window + 1) : 0;
      for (int64_t h = 0; h < p.n_heads; ++h) {
        const int64_t kvh = h / group;
        const float* q = p.q + (t * p.n_heads + h) * d;
        double max_s = -INFINITY;
        for (int64_t j = first; j <= pos; ++j) {
          const float* k = p.k + (j * p.n_kv_heads + kvh) * d;
          double s = 0;
          for (int64_t i = 0; i < d; ++i) s += double(q[i]) * k[i];
          s *= p.scale;
          if (p.softcap > 0) s = p.softcap * std::tanh(s / p.softcap);
          scores[size_t(j)] = s;
          max_s = std::max(max_s, s);
        }
        double denom = 0;
        for (int64_t j = first; j <= pos; ++j) {
          scores[size_t(j)] = std::exp(scores[size_t(j)] - max_s);
          denom += scores[size_t(j)];
        }
        float* o = p.out + (t * p.n_heads + h) * d;
        for (int64_t i = 0; i < d; ++i) {
          double acc = 0;
          for (int64_t j = first; j <= pos; ++j) acc += scores[size_t(j)] * p.v[(j * p.n_kv_heads + kvh) * d + i];
          o[i] = float(acc / denom);
        }
      }
    }
  }

  void glu(const GluParams& p) override {
    for (int64_t i = 0; i < p.n * p.dim; ++i) p.out[i] = activate(p.act, p.gate[i]) * p.up[i];
  }

  void embedding(const EmbeddingParams& p) override {
    const int64_t dim = p.table.cols;
    for (int64_t t = 0; t < p.n; ++t) {
      const int32_t id = p.ids[t];
      if (id < 0 || id >= p.table.rows)
        fail(ErrorKind::kInvalidArgument, "token id {} is out of range for a vocabulary of {}", id, p.table.rows);
      for (int64_t i = 0; i < dim; ++i) p.out[t * dim + i] = weight_at(p.table, id, i) * p.scale;
    }
  }

  void add(float* y, const float* x, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  }

  void softcap(float* x, int64_t n, float cap) override {
    for (int64_t i = 0; i < n; ++i) x[i] = float(cap * std::tanh(double(x[i]) / cap));
  }
};

}  // namespace

std::unique_ptr<Ops> make_ref_ops() { return std::make_unique<RefOps>(); }

}  // namespace lathe::ops
