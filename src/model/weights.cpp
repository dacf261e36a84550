#include "model/weights.h"

#include <fmt/format.h>

#include "core/error.h"
#include "quant/exl2.h"
#include "quant/gptq.h"

namespace lathe::model {

namespace {
ops::Weight as_weight(const TensorView& v) {
  ops::Weight w;
  w.data = v.data;
  w.dtype = v.dtype;
  w.rows = v.shape.size() == 1 ? 1 : v.shape[0];
  w.cols = v.shape.back();
  return w;
}

// Rows [first, first + count) of a row-major matrix: a fused projection's slice is itself a matrix.
ops::Weight row_slice(const ops::Weight& w, int64_t first, int64_t count) {
  ops::Weight s = w;
  s.data = static_cast<const uint8_t*>(w.data) + size_t(first * w.cols) * dtype_size(w.dtype);
  s.rows = count;
  return s;
}
}  // namespace

ops::Weight WeightLoader::bind(const std::string& name, Shape shape) { return as_weight(store_.require(name, shape)); }

const float* WeightLoader::bind_bias(const std::string& name, int64_t n) {
  const TensorView v = store_.require(name, {n});
  Tensor t = Tensor::f32({n});
  convert_to_f32(v.data, v.dtype, t.as<float>(), size_t(n));
  owned_.push_back(std::move(t));
  return owned_.back().as<float>();
}

Linear WeightLoader::bind_linear(const std::string& prefix, int64_t out, int64_t in, bool bias, bool dequantize) {
  Linear l;
  if (quant::exl2_present(store_, prefix) || quant::gptq_present(store_, prefix)) {
    l.w = bind_quantized(prefix, out, in, dequantize);
    l.exl2 = last_exl2_;
  } else {
    l.w = bind(prefix + ".weight", {out, in});
  }
  if (bias) l.bias = bind_bias(prefix + ".bias", out);
  return l;
}

struct WeightLoader::Packed {
  quant::Exl2Matrix m;
  quant::Exl2Tables tables;
  ops::Exl2View view;
};

// EXL2 and GPTQ layers are dequantized once at load into float16 (the precision ExLlamaV2's own
// kernels dequantize to), so every backend can run them with its ordinary matmul. EXL2 layers are
// also kept as stored (Linear::exl2) for backends with a matmul_exl2 that reads the packed bits.
ops::Weight WeightLoader::bind_quantized(const std::string& prefix, int64_t out, int64_t in, bool dequantize) {
  int64_t rows = 0, cols = 0;
  std::vector<float> w;
  last_exl2_ = nullptr;
  if (quant::exl2_present(store_, prefix)) {
    auto packed = std::make_shared<Packed>();
    packed->m = quant::exl2_read(store_, prefix);
    const quant::Exl2Matrix& m = packed->m;
    rows = m.out_features;
    cols = m.in_features;
    if (cols != in || rows < out)
      fail(ErrorKind::kFormat, "EXL2 layer {} is {} x {}, but the config implies {} x {}", prefix, rows, cols, out, in);
    packed->tables = quant::exl2_tables(m);
    // Stored padding columns beyond the config's outputs are never computed.
    ops::Exl2View& v = packed->view = quant::exl2_view(m, packed->tables, out);
    if (m.padded_out() == v.padded_out()) {  // else the row stride would differ: dequantized only
      last_exl2_ = &packed->view;
      packed_.push_back(std::move(packed));
      if (!dequantize) {
        ops::Weight r;
        r.dtype = DType::kF16;
        r.rows = out;
        r.cols = in;
        return r;
      }
    }
    w.resize(size_t(rows * cols));
    quant::exl2_dequantize(m, w.data());  // m lives on in packed_ (or until here)
  } else {
    if (quant_.method != "gptq")
      fail(ErrorKind::kFormat, "{} has GPTQ tensors but config.json has no GPTQ quantization_config", prefix);
    const quant::GptqMatrix m =
        quant::gptq_read(store_, prefix, int(quant_.bits), quant_.group_size, quant_.gptq_v2);
    rows = m.out_features;
    cols = m.in_features;
    if (cols != in || rows != out)
      fail(ErrorKind::kFormat, "GPTQ layer {} is {} x {}, but the config implies {} x {}", prefix, rows, cols, out, in);
    w.resize(size_t(rows * cols));
    quant::gptq_dequantize(m, w.data());
  }
  Tensor t(DType::kF16, {out, in});  // padding rows (EXL2 pads outputs to 32) are dropped
  convert_from_f32(w.data(), t.data(), DType::kF16, size_t(out * in));
  owned_.push_back(std::move(t));
  ops::Weight r;
  r.data = owned_.back().data();
  r.dtype = DType::kF16;
  r.rows = out;
  r.cols = in;
  return r;
}

WeightLoader::WeightLoader(const std::filesystem::path& dir, const ModelConfig& c, const ArchSpec& arch,
                           bool dequantize_exl2)
    : store_(dir), quant_(c.quant) {
  // Fused projections are sliced from their float16 copy, and experts run from float weights.
  const bool dq = dequantize_exl2 || arch.fused_qkv || arch.fused_gate_up || arch.moe;
  const int64_t H = c.hidden_size, hd = c.head_dim;
  const int64_t q_rows = c.num_heads * hd, kv_rows = c.num_kv_heads * hd, I = c.intermediate_size;
  weights_.embed = bind("model.embed_tokens.weight", {c.vocab_size, H});
  weights_.final_norm = bind("model.norm.weight", {H});
  // A checkpoint without lm_head.weight ties it to the embedding whatever config.json says: several
  // config classes default tie_word_embeddings to true (Gemma) and exporters often omit the key.
  // A quantized checkpoint stores its own (quantized) head even when the embedding is tied.
  if (quant::exl2_present(store_, "lm_head") || quant::gptq_present(store_, "lm_head"))
    weights_.lm_head = bind_quantized("lm_head", c.vocab_size, H, dequantize_exl2), weights_.lm_head_exl2 = last_exl2_;
  else if (store_.contains("lm_head.weight") && !c.tie_word_embeddings)
    weights_.lm_head = bind("lm_head.weight", {c.vocab_size, H});
  else
    weights_.lm_head = weights_.embed;

  const bool qkv_bias = arch.qkv_bias || c.attention_bias;
  weights_.layers.resize(size_t(c.num_layers));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    LayerWeights& L = weights_.layers[size_t(i)];
    const std::string p = fmt::format("model.layers.{}.", i);
    L.attn_norm = bind(p + "input_layernorm.weight", {H});
    if (arch.norm_layout == NormLayout::kSandwich) {
      L.attn_post_norm = bind(p + "post_attention_layernorm.weight", {H});
      L.ffn_norm = bind(p + "pre_feedforward_layernorm.weight", {H});
      L.ffn_post_norm = bind(p + "post_feedforward_layernorm.weight", {H});
    } else {
      L.ffn_norm = bind(p + "post_attention_layernorm.weight", {H});
    }
    if (arch.fused_qkv) {
      const Linear qkv = bind_linear(p + "self_attn.qkv_proj", q_rows + 2 * kv_rows, H, c.attention_bias);
      L.q = {row_slice(qkv.w, 0, q_rows), qkv.bias};
      L.k = {row_slice(qkv.w, q_rows, kv_rows), qkv.bias ? qkv.bias + q_rows : nullptr};
      L.v = {row_slice(qkv.w, q_rows + kv_rows, kv_rows), qkv.bias ? qkv.bias + q_rows + kv_rows : nullptr};
    } else {
      L.q = bind_linear(p + "self_attn.q_proj", q_rows, H, qkv_bias, dq);
      L.k = bind_linear(p + "self_attn.k_proj", kv_rows, H, qkv_bias, dq);
      L.v = bind_linear(p + "self_attn.v_proj", kv_rows, H, qkv_bias, dq);
    }
    L.o = bind_linear(p + "self_attn.o_proj", H, q_rows, c.attention_bias, dq);
    if (arch.qk_norm) {
      L.q_norm = bind(p + "self_attn.q_norm.weight", {hd});
      L.k_norm = bind(p + "self_attn.k_norm.weight", {hd});
    }
    if (arch.moe) {
      // Hub checkpoints keep one tensor per expert (w1 = gate, w3 = up, w2 = down).
      const std::string m = p + "block_sparse_moe.";
      L.router = bind_linear(m + "gate", c.num_experts, H, false);
      L.experts.resize(size_t(c.num_experts));
      for (int64_t e = 0; e < c.num_experts; ++e) {
        const std::string ep = fmt::format("{}experts.{}.", m, e);
        L.experts[size_t(e)] = {bind_linear(ep + "w1", I, H, false), bind_linear(ep + "w3", I, H, false),
                                bind_linear(ep + "w2", H, I, false)};
      }
    } else if (arch.fused_gate_up) {
      const Linear gu = bind_linear(p + "mlp.gate_up_proj", 2 * I, H, c.mlp_bias);
      L.gate = {row_slice(gu.w, 0, I), gu.bias};
      L.up = {row_slice(gu.w, I, I), gu.bias ? gu.bias + I : nullptr};
      L.down = bind_linear(p + "mlp.down_proj", H, I, c.mlp_bias, dq);
    } else {
      L.gate = bind_linear(p + "mlp.gate_proj", I, H, c.mlp_bias, dq);
      L.up = bind_linear(p + "mlp.up_proj", I, H, c.mlp_bias, dq);
      L.down = bind_linear(p + "mlp.down_proj", H, I, c.mlp_bias, dq);
    }
  }
}

int64_t WeightLoader::parameter_count() const {
  int64_t n = 0;
  for (const auto& f : store_.files())
    for (const auto& [name, e] : f.entries()) n += shape_numel(e.shape);
  return n;
}

std::map<std::string, int64_t> WeightLoader::parameters_by_dtype() const {
  std::map<std::string, int64_t> out;
  for (const auto& f : store_.files())
    for (const auto& [name, e] : f.entries()) out[e.dtype_name] += shape_numel(e.shape);
  return out;
}

size_t WeightLoader::weight_bytes() const {
  size_t n = 0;
  for (const auto& f : store_.files())
    for (const auto& [name, e] : f.entries()) n += e.end - e.begin;
  return n;
}

}  // namespace lathe::model
