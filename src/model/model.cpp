#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "model/rope.h"

namespace lathe::model {

void Workspace::ensure(Tensor& t, int64_t rows, int64_t cols) {
  if (t.numel() < rows * cols || t.dtype() != DType::kF32) t = Tensor::f32({rows, cols});
}

std::unique_ptr<Model> Model::load(const std::filesystem::path& dir) {
  std::unique_ptr<Model> m(new Model());
  m->dir_ = dir;
  m->config_ = load_model_config(dir);
  m->arch_ = find_arch(m->config_.architecture);
  LATHE_CHECK(m->arch_ != nullptr);  // load_model_config already rejected unknown architectures
  m->loader_ = std::make_unique<WeightLoader>(dir, m->config_, *m->arch_);
  return m;
}

namespace {
ops::RmsNormParams norm_params(const float* x, const ops::Weight& w, float* y, int64_t n, int64_t dim, double eps,
                               float offset) {
  ops::RmsNormParams p;
  p.x = x;
  p.w = w;
  p.y = y;
  p.n = n;
  p.dim = dim;
  p.eps = float(eps);
  p.weight_offset = offset;
  return p;
}

void linear(ops::Ops& ops, const float* x, const Linear& l, float* y, int64_t n) {
  ops::MatmulParams p;
  p.x = x;
  p.w = l.w;
  p.bias = l.bias;
  p.y = y;
  p.n = n;
  ops.matmul(p);
}
}  // namespace

void Model::attention_block(ops::Ops& ops, int64_t layer, int64_t n, KvCache& cache, Workspace& ws) const {
  const ModelConfig& c = config_;
  const LayerWeights& L = loader_->weights().layers[size_t(layer)];
  const int64_t H = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t pos0 = cache.length();
  const float offset = arch_->norm_weight_offset;
  float* x = ws.x.as<float>();
  float* h = ws.h.as<float>();
  float* q = ws.q.as<float>();
  // New K/V rows go straight into the cache: [pos0, pos0 + n) x [n_kv_heads * head_dim].
  float* k = cache.k(layer) + pos0 * cache.row_size();
  float* v = cache.v(layer) + pos0 * cache.row_size();

  ops.rms_norm(norm_params(x, L.attn_norm, h, n, H, c.rms_norm_eps, offset));
  linear(ops, h, L.q, q, n);
  linear(ops, h, L.k, k, n);
  linear(ops, h, L.v, v, n);
  if (arch_->qk_norm) {
    ops.rms_norm(norm_params(q, L.q_norm, q, n * nh, hd, c.rms_norm_eps, offset));
    ops.rms_norm(norm_params(k, L.k_norm, k, n * nkv, hd, c.rms_norm_eps, offset));
  }
  const int64_t rot = rope_rot_dim(c);
  for (auto [ptr, heads] : {std::pair{q, nh}, std::pair{k, nkv}}) {
    ops::RopeParams r;
    r.x = ptr;
    r.cos = ws.cos.as<float>();
    r.sin = ws.sin.as<float>();
    r.n = n;
    r.n_heads = heads;
    r.head_dim = hd;
    r.rot_dim = rot;
    ops.rope(r);
  }
  ops::AttentionParams a;
  a.q = q;
  a.k = cache.k(layer);
  a.v = cache.v(layer);
  a.out = ws.attn.as<float>();
  a.n = n;
  a.kv_len = pos0 + n;
  a.n_heads = nh;
  a.n_kv_heads = nkv;
  a.head_dim = hd;
  a.scale = c.attention_scale;
  a.softcap = c.attn_logit_softcap;
  a.window = c.layer_window[size_t(layer)];
  ops.attention(a);

  float* o = ws.o.as<float>();
  linear(ops, ws.attn.as<float>(), L.o, o, n);
  if (arch_->norm_layout == NormLayout::kSandwich)
    ops.rms_norm(norm_params(o, L.attn_post_norm, o, n, H, c.rms_norm_eps, offset));
  ops.add(x, o, n * H);
}

void Model::ffn_block(ops::Ops& ops, int64_t layer, int64_t n, Workspace& ws) const {
  const ModelConfig& c = config_;
  const LayerWeights& L = loader_->weights().layers[size_t(layer)];
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const float offset = arch_->norm_weight_offset;
  float* x = ws.x.as<float>();
  float* h = ws.h.as<float>();
  ops.rms_norm(norm_params(x, L.ffn_norm, h, n, H, c.rms_norm_eps, offset));
  linear(ops, h, L.gate, ws.gate.as<float>(), n);
  linear(ops, h, L.up, ws.up.as<float>(), n);
  ops::GluParams g;
  g.gate = ws.gate.as<float>();
  g.up = ws.up.as<float>();
  g.out = ws.gate.as<float>();
  g.n = n;
  g.dim = I;
  g.act = c.activation;
  ops.glu(g);
  float* o = ws.o.as<float>();
  linear(ops, ws.gate.as<float>(), L.down, o, n);
  if (arch_->norm_layout == NormLayout::kSandwich)
    ops.rms_norm(norm_params(o, L.ffn_post_norm, o, n, H, c.rms_norm_eps, offset));
  ops.add(x, o, n * H);
}

void Model::moe_block(ops::Ops& ops, int64_t layer, int64_t n, Workspace& ws) const {
  const ModelConfig& c = config_;
  const LayerWeights& L = loader_->weights().layers[size_t(layer)];
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts, top = c.num_experts_per_tok;
  float* x = ws.x.as<float>();
  float* h = ws.h.as<float>();
  ops.rms_norm(norm_params(x, L.ffn_norm, h, n, H, c.rms_norm_eps, arch_->norm_weight_offset));
  ws.ensure(ws.router, n, E);
  linear(ops, h, L.router, ws.router.as<float>(), n);

  // Route: softmax over all experts, keep the top-k, renormalise (equal to a softmax over the
  // selected logits). Ties go to the lower expert index, as torch.topk does on CPU.
  std::vector<std::vector<std::pair<int64_t, float>>> assigned(static_cast<size_t>(E));  // expert -> (token, weight)
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < n; ++t) {
    const float* logit = ws.router.as<float>() + t * E;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logit[a] > logit[b]; });
    const float mx = logit[order[0]];
    double sum = 0;
    for (int64_t j = 0; j < top; ++j) sum += std::exp(double(logit[order[size_t(j)]] - mx));
    for (int64_t j = 0; j < top; ++j) {
      const int64_t e = order[size_t(j)];
      assigned[size_t(e)].push_back({t, float(std::exp(double(logit[e] - mx)) / sum)});
    }
  }

  ws.ensure(ws.moe_out, n, H);
  float* out = ws.moe_out.as<float>();
  std::fill(out, out + n * H, 0.f);
  for (int64_t e = 0; e < E; ++e) {
    const auto& tokens = assigned[size_t(e)];
    if (tokens.empty()) continue;
    const int64_t m = int64_t(tokens.size());
    ws.ensure(ws.moe_in, m, H);
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(ws.moe_in.as<float>() + i * H, h + tokens[size_t(i)].first * H, size_t(H) * sizeof(float));
    const ExpertWeights& ex = L.experts[size_t(e)];
    linear(ops, ws.moe_in.as<float>(), ex.gate, ws.gate.as<float>(), m);
    linear(ops, ws.moe_in.as<float>(), ex.up, ws.up.as<float>(), m);
    ops::GluParams g;
    g.gate = ws.gate.as<float>();
    g.up = ws.up.as<float>();
    g.out = ws.gate.as<float>();
    g.n = m;
    g.dim = I;
    g.act = c.activation;
    ops.glu(g);
    float* o = ws.o.as<float>();
    linear(ops, ws.gate.as<float>(), ex.down, o, m);
    for (int64_t i = 0; i < m; ++i) {
      const auto [t, w] = tokens[size_t(i)];
      for (int64_t j = 0; j < H; ++j) out[t * H + j] += w * o[i * H + j];
    }
  }
  ops.add(x, out, n * H);
}

void Model::forward(ops::Ops& ops, std::span<const int32_t> ids, KvCache& cache, Workspace& ws, LogitsFor which,
                    Tensor* logits) const {
  const ModelConfig& c = config_;
  const int64_t n = int64_t(ids.size());
  if (n == 0) fail(ErrorKind::kInvalidArgument, "forward called with no tokens");
  const int64_t pos0 = cache.length();
  if (pos0 + n > cache.capacity())
    fail(ErrorKind::kOutOfRange, "{} tokens do not fit the context: {} already cached, capacity {} (raise --ctx)", n,
         pos0, cache.capacity());
  for (int32_t id : ids)
    if (id < 0 || id >= c.vocab_size)
      fail(ErrorKind::kInvalidArgument, "token id {} is out of range: the vocabulary has {} tokens (0..{})", id,
           c.vocab_size, c.vocab_size - 1);

  const int64_t H = c.hidden_size, hd = c.head_dim, I = c.intermediate_size;
  ws.ensure(ws.x, n, H);
  ws.ensure(ws.h, n, H);
  ws.ensure(ws.o, n, H);
  ws.ensure(ws.q, n, c.num_heads * hd);
  ws.ensure(ws.attn, n, c.num_heads * hd);
  ws.ensure(ws.gate, n, I);
  ws.ensure(ws.up, n, I);

  const ModelWeights& W = loader_->weights();
  ops::EmbeddingParams e;
  e.table = W.embed;
  e.ids = ids.data();
  e.out = ws.x.as<float>();
  e.n = n;
  // Gemma: hidden * sqrt(hidden_size) (a float32 constant when the model runs in float32).
  e.scale = arch_->embed_scale_sqrt_hidden ? float(std::sqrt(double(H))) : 1.f;
  ops.embedding(e);

  const int64_t half = rope_rot_dim(c) / 2;
  ws.ensure(ws.cos, n, half);
  ws.ensure(ws.sin, n, half);
  std::vector<int32_t> positions(static_cast<size_t>(n));
  std::iota(positions.begin(), positions.end(), int32_t(pos0));
  rope_tables(rope_frequencies(c, pos0 + n), positions.data(), n, ws.cos.as<float>(), ws.sin.as<float>());

  for (int64_t l = 0; l < c.num_layers; ++l) {
    attention_block(ops, l, n, cache, ws);
    if (arch_->moe) moe_block(ops, l, n, ws);
    else ffn_block(ops, l, n, ws);
  }
  cache.advance(n);
  if (which == LogitsFor::kNone) return;

  const int64_t first = which == LogitsFor::kLast ? n - 1 : 0;
  const int64_t rows = n - first;
  float* xr = ws.x.as<float>() + first * H;
  ops.rms_norm(norm_params(xr, W.final_norm, xr, rows, H, c.rms_norm_eps, arch_->norm_weight_offset));
  if (logits->numel() != rows * c.vocab_size || logits->dtype() != DType::kF32)
    *logits = Tensor::f32({rows, c.vocab_size});
  else
    logits->reshape({rows, c.vocab_size});
  ops::MatmulParams p;
  p.x = xr;
  p.w = W.lm_head;
  p.y = logits->as<float>();
  p.n = rows;
  ops.matmul(p);
  if (c.final_logit_softcap > 0) ops.softcap(logits->as<float>(), rows * c.vocab_size, c.final_logit_softcap);
}

}  // namespace lathe::model
