#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "model/rope.h"

namespace lathe::model {

std::unique_ptr<Model> Model::load(const std::filesystem::path& dir) {
  std::unique_ptr<Model> m(new Model());
  m->dir_ = dir;
  m->config_ = load_model_config(dir);
  m->arch_ = find_arch(m->config_.architecture);
  LATHE_CHECK(m->arch_ != nullptr);  // load_model_config already rejected unknown architectures
  m->loader_ = std::make_unique<WeightLoader>(dir, m->config_, *m->arch_);
  return m;
}

float* Workspace::get(ops::Buffer& b, int64_t rows, int64_t cols) {
  const size_t bytes = size_t(rows * cols) * sizeof(float);
  if (b.bytes() < bytes) b = ops::Buffer(*ops_, bytes);
  return b.f32();
}

Runner::Runner(const Model& model, ops::Ops& ops) : model_(model), ops_(ops) {
  if (ops.host_memory()) {
    w_ = &model.loader().weights();
  } else {
    upload_weights();
    w_ = &device_weights_;
  }
}

void Runner::upload_weights() {
  const ModelWeights& host = model_.loader().weights();
  // Fail before copying anything when the weights cannot fit, saying what is needed and available.
  const ops::MemoryStats mem = ops_.memory_stats();
  const size_t need = model_.loader().weight_bytes();
  if (mem.device_total > 0 && need > mem.device_total - mem.device_used)
    fail(ErrorKind::kOutOfRange,
         "{} needs {:.2f} GiB of device memory for its weights but {:.2f} GiB of {:.2f} GiB are free; use a "
         "smaller or quantized model, or --device cpu",
         model_.dir().string(), double(need) / (1 << 30), double(mem.device_total - mem.device_used) / (1 << 30),
         double(mem.device_total) / (1 << 30));
  // One device copy per distinct host region (a tied LM head shares the embedding's).
  std::map<std::pair<const void*, size_t>, void*> uploaded;
  auto put = [&](const void* src, size_t bytes) -> void* {
    if (!src) return nullptr;
    auto key = std::make_pair(src, bytes);
    if (auto it = uploaded.find(key); it != uploaded.end()) return it->second;
    owned_.emplace_back(ops_, bytes);
    ops_.copy_to_backend(owned_.back().data(), src, bytes);
    uploaded[key] = owned_.back().data();
    return owned_.back().data();
  };
  auto weight = [&](const ops::Weight& w) {
    ops::Weight d = w;
    d.data = put(w.data, size_t(w.rows * w.cols) * dtype_size(w.dtype));
    return d;
  };
  auto linear = [&](const Linear& l) {
    Linear d;
    d.w = weight(l.w);
    d.bias = static_cast<const float*>(put(l.bias, size_t(l.w.rows) * sizeof(float)));
    return d;
  };
  ModelWeights& d = device_weights_;
  d.embed = weight(host.embed);
  d.final_norm = weight(host.final_norm);
  d.lm_head = weight(host.lm_head);
  for (const LayerWeights& L : host.layers) {
    LayerWeights D;
    D.attn_norm = weight(L.attn_norm);
    D.attn_post_norm = weight(L.attn_post_norm);
    D.ffn_norm = weight(L.ffn_norm);
    D.ffn_post_norm = weight(L.ffn_post_norm);
    D.q = linear(L.q);
    D.k = linear(L.k);
    D.v = linear(L.v);
    D.o = linear(L.o);
    D.q_norm = weight(L.q_norm);
    D.k_norm = weight(L.k_norm);
    D.gate = linear(L.gate);
    D.up = linear(L.up);
    D.down = linear(L.down);
    D.router = linear(L.router);
    for (const auto& e : L.experts) D.experts.push_back({linear(e.gate), linear(e.up), linear(e.down)});
    d.layers.push_back(std::move(D));
  }
  ops_.synchronize();
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

void glu(ops::Ops& ops, float* gate, const float* up, int64_t n, int64_t dim, ops::Activation act) {
  ops::GluParams g;
  g.gate = gate;
  g.up = up;
  g.out = gate;
  g.n = n;
  g.dim = dim;
  g.act = act;
  ops.glu(g);
}
}  // namespace

void Runner::attention_block(int64_t layer, int64_t n, KvCache& cache, Workspace& ws) const {
  const ModelConfig& c = model_.config();
  const ArchSpec& arch = model_.arch();
  const LayerWeights& L = w_->layers[size_t(layer)];
  const int64_t H = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t pos0 = cache.length();
  const float offset = arch.norm_weight_offset;
  float* h = ws.h.f32();  // the layer input, already normalised by the caller
  float* q = ws.q.f32();
  // New K/V rows go straight into the cache: [pos0, pos0 + n) x [n_kv_heads * head_dim].
  float* k = cache.k(layer) + pos0 * cache.row_size();
  float* v = cache.v(layer) + pos0 * cache.row_size();

  ops::MultiMatmulParams qkv;
  qkv.x = h;
  qkv.n = n;
  qkv.count = 3;
  const Linear* proj[3] = {&L.q, &L.k, &L.v};
  float* dst[3] = {q, k, v};
  for (int i = 0; i < 3; ++i) {
    qkv.w[i] = proj[i]->w;
    qkv.bias[i] = proj[i]->bias;
    qkv.y[i] = dst[i];
  }
  ops_.matmul_multi(qkv);
  if (arch.qk_norm) {
    ops_.rms_norm(norm_params(q, L.q_norm, q, n * nh, hd, c.rms_norm_eps, offset));
    ops_.rms_norm(norm_params(k, L.k_norm, k, n * nkv, hd, c.rms_norm_eps, offset));
  }
  const int64_t rot = rope_rot_dim(c);
  for (auto [ptr, heads] : {std::pair{q, nh}, std::pair{k, nkv}}) {
    ops::RopeParams r;
    r.x = ptr;
    r.cos = ws.cos.f32();
    r.sin = ws.sin.f32();
    r.n = n;
    r.n_heads = heads;
    r.head_dim = hd;
    r.rot_dim = rot;
    ops_.rope(r);
  }
  ops::AttentionParams a;
  a.q = q;
  a.k = cache.k(layer);
  a.v = cache.v(layer);
  a.out = ws.attn.f32();
  a.n = n;
  a.kv_len = pos0 + n;
  a.n_heads = nh;
  a.n_kv_heads = nkv;
  a.head_dim = hd;
  a.scale = c.attention_scale;
  a.softcap = c.attn_logit_softcap;
  a.window = c.layer_window[size_t(layer)];
  ops_.attention(a);

  float* o = ws.o.f32();
  linear(ops_, ws.attn.f32(), L.o, o, n);
  if (arch.norm_layout == NormLayout::kSandwich)
    ops_.rms_norm(norm_params(o, L.attn_post_norm, o, n, H, c.rms_norm_eps, offset));
  // The caller adds o to the residual stream, fused with the next norm.
}

void Runner::ffn_block(int64_t layer, int64_t n, Workspace& ws) const {
  const ModelConfig& c = model_.config();
  const ArchSpec& arch = model_.arch();
  const LayerWeights& L = w_->layers[size_t(layer)];
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const float offset = arch.norm_weight_offset;
  ops::MultiMatmulParams gu;
  gu.x = ws.h.f32();
  gu.n = n;
  gu.count = 2;
  gu.w[0] = L.gate.w;
  gu.bias[0] = L.gate.bias;
  gu.y[0] = ws.gate.f32();
  gu.w[1] = L.up.w;
  gu.bias[1] = L.up.bias;
  gu.y[1] = ws.up.f32();
  ops_.matmul_multi(gu);
  glu(ops_, ws.gate.f32(), ws.up.f32(), n, I, c.activation);
  float* o = ws.o.f32();
  linear(ops_, ws.gate.f32(), L.down, o, n);
  if (arch.norm_layout == NormLayout::kSandwich)
    ops_.rms_norm(norm_params(o, L.ffn_post_norm, o, n, H, c.rms_norm_eps, offset));
  // The caller adds o to the residual stream, fused with the next norm.
}

void Runner::moe_block(int64_t layer, int64_t n, Workspace& ws) const {
  const ModelConfig& c = model_.config();
  const LayerWeights& L = w_->layers[size_t(layer)];
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts, top = c.num_experts_per_tok;
  float* h = ws.h.f32();  // normalised by the caller
  float* router = ws.get(ws.router, n, E);
  linear(ops_, h, L.router, router, n);
  std::vector<float> logits(static_cast<size_t>(n * E));
  ops_.copy_to_host(logits.data(), router, logits.size() * sizeof(float));

  // Route on the host (n x E values): softmax over all experts, keep the top-k, renormalise
  // (equal to a softmax over the selected logits). Ties go to the lower expert index, as
  // torch.topk does on CPU. Assignments are grouped by expert: [offset[e], offset[e + 1]).
  std::vector<std::vector<std::pair<int32_t, float>>> by_expert(static_cast<size_t>(E));
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < n; ++t) {
    const float* lg = logits.data() + t * E;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lg[a] > lg[b]; });
    const float mx = lg[order[0]];
    double sum = 0;
    for (int64_t j = 0; j < top; ++j) sum += std::exp(double(lg[order[size_t(j)]] - mx));
    for (int64_t j = 0; j < top; ++j) {
      const int64_t e = order[size_t(j)];
      by_expert[size_t(e)].push_back({int32_t(t), float(std::exp(double(lg[e] - mx)) / sum)});
    }
  }
  std::vector<int32_t> idx;
  std::vector<float> weight;
  std::vector<int64_t> offset{0};
  for (const auto& list : by_expert) {
    for (auto [t, w] : list) {
      idx.push_back(t);
      weight.push_back(w);
    }
    offset.push_back(int64_t(idx.size()));
  }
  const int64_t total = int64_t(idx.size());
  int32_t* d_idx = reinterpret_cast<int32_t*>(ws.get(ws.moe_idx, total, 1));
  float* d_w = ws.get(ws.moe_w, total, 1);
  ops_.copy_to_backend(d_idx, idx.data(), idx.size() * sizeof(int32_t));
  ops_.copy_to_backend(d_w, weight.data(), weight.size() * sizeof(float));

  for (int64_t e = 0; e < E; ++e) {
    const int64_t m = offset[size_t(e) + 1] - offset[size_t(e)];
    if (m == 0) continue;
    float* in = ws.get(ws.moe_in, m, H);
    ops::GatherRowsParams g;
    g.src = h;
    g.idx = d_idx + offset[size_t(e)];
    g.dst = in;
    g.n = m;
    g.dim = H;
    ops_.gather_rows(g);
    const ExpertWeights& ex = L.experts[size_t(e)];
    linear(ops_, in, ex.gate, ws.gate.f32(), m);
    linear(ops_, in, ex.up, ws.up.f32(), m);
    glu(ops_, ws.gate.f32(), ws.up.f32(), m, I, c.activation);
    float* out = ws.get(ws.moe_out, m, H);
    linear(ops_, ws.gate.f32(), ex.down, out, m);
    // The residual stream takes the weighted expert outputs directly: x[t] += w * out.
    ops::ScatterAddRowsParams s;
    s.dst = ws.x.f32();
    s.idx = d_idx + offset[size_t(e)];
    s.weight = d_w + offset[size_t(e)];
    s.src = out;
    s.n = m;
    s.dim = H;
    ops_.scatter_add_rows(s);
  }
}

void Runner::forward(std::span<const int32_t> ids, KvCache& cache, Workspace& ws, LogitsFor which,
                     Tensor* logits) const {
  const ModelConfig& c = model_.config();
  const ArchSpec& arch = model_.arch();
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
  ws.get(ws.x, n, H);
  ws.get(ws.h, n, H);
  ws.get(ws.o, n, H);
  ws.get(ws.q, n, c.num_heads * hd);
  ws.get(ws.attn, n, c.num_heads * hd);
  ws.get(ws.gate, n, I);
  ws.get(ws.up, n, I);

  int32_t* d_ids = reinterpret_cast<int32_t*>(ws.get(ws.ids, n, 1));
  ops_.copy_to_backend(d_ids, ids.data(), size_t(n) * sizeof(int32_t));
  ops::EmbeddingParams e;
  e.table = w_->embed;
  e.ids = d_ids;
  e.out = ws.x.f32();
  e.n = n;
  // Gemma: hidden * sqrt(hidden_size) (a float32 constant when the model runs in float32).
  e.scale = arch.embed_scale_sqrt_hidden ? float(std::sqrt(double(H))) : 1.f;
  ops_.embedding(e);

  const int64_t half = rope_rot_dim(c) / 2;
  std::vector<float> cos(static_cast<size_t>(n * half)), sin(static_cast<size_t>(n * half));
  std::vector<int32_t> positions(static_cast<size_t>(n));
  std::iota(positions.begin(), positions.end(), int32_t(pos0));
  rope_tables(rope_frequencies(c, pos0 + n), positions.data(), n, cos.data(), sin.data());
  ops_.copy_to_backend(ws.get(ws.cos, n, half), cos.data(), cos.size() * sizeof(float));
  ops_.copy_to_backend(ws.get(ws.sin, n, half), sin.data(), sin.size() * sizeof(float));

  // Residual stream x; h = the next block's normalised input. Each residual add is fused with the
  // norm that follows it (the next block's, or the final norm after the last layer).
  const double eps = c.rms_norm_eps;
  const float offset = arch.norm_weight_offset;
  float* x = ws.x.f32();
  float* h = ws.h.f32();
  ops_.rms_norm(norm_params(x, w_->layers[0].attn_norm, h, n, H, eps, offset));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& L = w_->layers[size_t(l)];
    const ops::Weight& next_norm = l + 1 < c.num_layers ? w_->layers[size_t(l + 1)].attn_norm : w_->final_norm;
    attention_block(l, n, cache, ws);
    ops_.add_rms_norm(x, ws.o.f32(), norm_params(x, L.ffn_norm, h, n, H, eps, offset));
    if (arch.moe) {
      moe_block(l, n, ws);  // scatters the experts' outputs straight into x
      ops_.rms_norm(norm_params(x, next_norm, h, n, H, eps, offset));
    } else {
      ffn_block(l, n, ws);
      ops_.add_rms_norm(x, ws.o.f32(), norm_params(x, next_norm, h, n, H, eps, offset));
    }
  }
  cache.advance(n);
  if (which == LogitsFor::kNone) {
    ops_.synchronize();
    return;
  }

  const int64_t first = which == LogitsFor::kLast ? n - 1 : 0;
  const int64_t rows = n - first;
  float* xr = h + first * H;  // final-normed rows
  if (logits->numel() != rows * c.vocab_size || logits->dtype() != DType::kF32)
    *logits = Tensor::f32({rows, c.vocab_size});
  else
    logits->reshape({rows, c.vocab_size});
  const bool host = ops_.host_memory();
  float* out = host ? logits->as<float>() : ws.get(ws.logits, rows, c.vocab_size);
  ops::MatmulParams p;
  p.x = xr;
  p.w = w_->lm_head;
  p.y = out;
  p.n = rows;
  ops_.matmul(p);
  if (c.final_logit_softcap > 0) ops_.softcap(out, rows * c.vocab_size, c.final_logit_softcap);
  if (!host) ops_.copy_to_host(logits->as<float>(), out, size_t(rows * c.vocab_size) * sizeof(float));
  ops_.synchronize();
}

}  // namespace lathe::model
