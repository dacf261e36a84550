#include "model/rope.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace lathe::model {

namespace {

// 1 / base^(2i / dim), computed as torch does: exponent in float32, power in float32.
std::vector<float> default_inv_freq(double base, int64_t dim) {
  std::vector<float> f(size_t(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float e = float(2 * i) / float(dim);
    f[size_t(i)] = float(1.0 / std::pow(base, double(e)));
  }
  return f;
}

double yarn_mscale(double scale, double mscale) { return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

}  // namespace

int64_t rope_rot_dim(const ModelConfig& c) { return int64_t(double(c.head_dim) * c.rope.partial_rotary_factor); }

RopeFrequencies rope_frequencies(const ModelConfig& c, int64_t seq_len) {
  const RopeConfig& r = c.rope;
  const int64_t dim = rope_rot_dim(c);
  RopeFrequencies out;
  switch (r.type) {
    case RopeType::kDefault: out.inv_freq = default_inv_freq(r.theta, dim); break;
    case RopeType::kLinear:
      out.inv_freq = default_inv_freq(r.theta, dim);
      for (auto& f : out.inv_freq) f = float(f / r.factor);
      break;
    case RopeType::kDynamic: {
      // NTK-aware base growth once the sequence outgrows the trained context.
      const double max_pos = double(c.max_position_embeddings);
      double base = r.theta;
      if (double(seq_len) > max_pos)
        base = r.theta * std::pow(r.factor * double(seq_len) / max_pos - (r.factor - 1.0), double(dim) / double(dim - 2));
      out.inv_freq = default_inv_freq(base, dim);
      break;
    }
    case RopeType::kLlama3: {
      out.inv_freq = default_inv_freq(r.theta, dim);
      const double old_ctx = double(r.original_max_position_embeddings);
      const double low_wavelen = old_ctx / r.low_freq_factor;
      const double high_wavelen = old_ctx / r.high_freq_factor;
      for (auto& f : out.inv_freq) {
        const double wavelen = 2.0 * M_PI / double(f);
        if (wavelen > low_wavelen) {
          f = float(double(f) / r.factor);
        } else if (wavelen >= high_wavelen) {  // medium band: interpolate between scaled and unscaled
          const double smooth = (old_ctx / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
          f = float((1.0 - smooth) * double(f) / r.factor + smooth * double(f));
        }
      }
      break;
    }
    case RopeType::kYarn: {
      const double base = r.theta;
      const int64_t orig = r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings
                                                                   : c.max_position_embeddings;
      // transformers 5: without a factor, the ratio of the extended to the pretrained context.
      const double factor = r.factor_given ? r.factor : double(c.max_position_embeddings) / double(orig);
      double attn = 0;
      if (r.attention_factor) attn = *r.attention_factor;
      else if (r.mscale && r.mscale_all_dim) attn = yarn_mscale(factor, *r.mscale) / yarn_mscale(factor, *r.mscale_all_dim);
      else attn = yarn_mscale(factor, 1.0);
      const double beta_fast = r.beta_fast.value_or(32.0), beta_slow = r.beta_slow.value_or(1.0);
      auto correction_dim = [&](double rotations) {
        return double(dim) * std::log(double(orig) / (rotations * 2.0 * M_PI)) / (2.0 * std::log(base));
      };
      double low = correction_dim(beta_fast), high = correction_dim(beta_slow);
      if (r.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, double(dim - 1));
      if (low == high) high += 0.001;  // avoid a zero-width ramp
      out.inv_freq.resize(size_t(dim / 2));
      for (int64_t i = 0; i < dim / 2; ++i) {
        const double pos_freq = std::pow(base, double(float(2 * i) / float(dim)));
        const double extrap = 1.0 / pos_freq, interp = 1.0 / (factor * pos_freq);
        const double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
        const double extrap_factor = 1.0 - ramp;
        out.inv_freq[size_t(i)] = float(interp * (1.0 - extrap_factor) + extrap * extrap_factor);
      }
      out.attention_scaling = float(attn);
      break;
    }
    case RopeType::kLongRope: {
      // Phi-3 raises max_position_embeddings and keeps the pretrained length as
      // original_max_position_embeddings; without an explicit factor their ratio is the factor.
      const int64_t orig = r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings
                                                                   : c.max_position_embeddings;
      const double factor = r.factor_given ? r.factor : double(c.max_position_embeddings) / double(orig);
      double attn;
      if (r.attention_factor) attn = *r.attention_factor;
      else attn = factor <= 1.0 ? 1.0 : std::sqrt(1.0 + std::log(factor) / std::log(double(orig)));
      const auto& ext = seq_len > orig ? r.long_factor : r.short_factor;
      if (int64_t(ext.size()) != dim / 2)
        fail(ErrorKind::kFormat, "longrope factor list has {} entries, expected rotary dim / 2 = {}", ext.size(), dim / 2);
      out.inv_freq.resize(size_t(dim / 2));
      for (int64_t i = 0; i < dim / 2; ++i) {
        const double pw = std::pow(r.theta, double(float(2 * i) / float(dim)));
        out.inv_freq[size_t(i)] = float(1.0 / (ext[size_t(i)] * pw));
      }
      out.attention_scaling = float(attn);
      break;
    }
  }
  return out;
}

int64_t rope_static_length(const ModelConfig& c) {
  switch (c.rope.type) {
    case RopeType::kDynamic: return c.max_position_embeddings;
    case RopeType::kLongRope:
      return c.rope.original_max_position_embeddings > 0 ? c.rope.original_max_position_embeddings
                                                          : c.max_position_embeddings;
    default: return std::numeric_limits<int64_t>::max();
  }
}

void rope_tables(const RopeFrequencies& f, const int32_t* positions, int64_t n, float* cos_out, float* sin_out) {
  const size_t half = f.inv_freq.size();
  for (int64_t t = 0; t < n; ++t) {
    for (size_t i = 0; i < half; ++i) {
      // The angle is a float32 product, as in torch (inv_freq @ position_ids in float32).
      const float angle = float(positions[t]) * f.inv_freq[i];
      cos_out[size_t(t) * half + i] = float(std::cos(double(angle))) * f.attention_scaling;
      sin_out[size_t(t) * half + i] = float(std::sin(double(angle))) * f.attention_scaling;
    }
  }
}

}  // namespace lathe::model
