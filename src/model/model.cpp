#include "model/model.h"

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <string_view>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "model/rope.h"
#include "quant/exl2_tiled.h"

namespace lathe::model {

namespace {
bool packed_exl2_enabled() {
  const char* e = std::getenv("LATHE_EXL2_PACKED");
  return !(e && std::string_view(e) == "0");
}
}  // namespace

LoadOptions load_options_for(const ops::Ops& ops) {
  LoadOptions o;
  o.dequantize_exl2 = ops.host_memory() || !packed_exl2_enabled();
  return o;
}

std::unique_ptr<Model> Model::load(const std::filesystem::path& dir, const LoadOptions& options) {
  std::unique_ptr<Model> m(new Model());
  m->dir_ = dir;
  m->config_ = load_model_config(dir);
  m->arch_ = find_arch(m->config_.architecture);
  LATHE_CHECK(m->arch_ != nullptr);  // load_model_config already rejected unknown architectures
  m->loader_ = std::make_unique<WeightLoader>(dir, m->config_, *m->arch_, options.dequantize_exl2);
  return m;
}

float* Workspace::get(ops::Buffer& b, int64_t rows, int64_t cols) {
  const size_t bytes = size_t(rows * cols) * sizeof(float);
  if (b.bytes() < bytes) {
    b = ops::Buffer(*ops_, bytes);
    ++generation_;  // recorded graphs point at the old buffer
  }
  return b.f32();
}

void* Workspace::pinned(void*& buf, size_t& have, size_t bytes) {
  if (have < bytes) {
    if (buf) ops_->free_pinned(buf);
    buf = nullptr;
    have = 0;
    const size_t rounded = std::max<size_t>(bytes * 2, 64 << 10);
    buf = ops_->alloc_pinned(rounded);
    have = rounded;
  }
  return buf;
}

Workspace::~Workspace() {
  graphs.clear();
  if (staging_) ops_->free_pinned(staging_);
  if (readback_) ops_->free_pinned(readback_);
}

Runner::Runner(const Model& model, ops::Ops& ops)
    : model_(model), ops_(ops), rope_short_(rope_frequencies(model.config(), 1)) {
  if (const char* g = std::getenv("LATHE_GRAPHS"); g && std::string_view(g) == "0") graphs_ = false;
  buckets_ = graphs_ && !ops.host_memory();
  if (const char* b = std::getenv("LATHE_DECODE_BUCKETS"); b && std::string_view(b) == "0") buckets_ = false;
  // EXL2 layers run from their packed bits (LATHE_EXL2_PACKED=0: from the float16 copy), except
  // MoE experts on a device backend (their kernels read float weights).
  packed_ = packed_exl2_enabled() && (ops.host_memory() || !model.arch().moe);
  if (ops.host_memory()) {
    w_ = &model.loader().weights();
  } else {
    upload_weights();
    w_ = &device_weights_;
  }
  const ModelConfig& c = model.config();
  if (c.num_layers > 0 && int64_t(c.layer_window.size()) == c.num_layers &&
      std::all_of(c.layer_window.begin(), c.layer_window.end(), [](int64_t w) { return w > 0; }))
    release_window_ = *std::max_element(c.layer_window.begin(), c.layer_window.end());
  if (!model.arch().moe && c.num_layers > 0) {
    const DType d = w_->layers[0].q.w.dtype;
    bool same = d == DType::kBF16 || d == DType::kF16;
    // (Packed EXL2 layers read fp32 activations.)
    for (const LayerWeights& L : w_->layers)
      for (const Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
        same = same && l->w.dtype == d && !(packed_ && l->exl2);
    if (same) lowp_dtype_ = d;
  }
}

namespace {
// Streams host weights (mmap'd files) to a device backend through two pinned staging buffers: the
// host copies chunk i + 1 into one (several threads: page-cache reads are the slow part) while the
// DMA of chunk i from the other runs. Pageable copies made the driver stage every byte itself, one
// synchronous copy at a time.
class Uploader {
 public:
  static constexpr size_t kChunk = size_t(64) << 20;
  explicit Uploader(ops::Ops& ops) : ops_(ops) {
    for (auto& b : buf_) b = ops_.alloc_pinned(kChunk);
  }
  ~Uploader() {
    for (auto& b : buf_) ops_.free_pinned(b);  // free_pinned waits for queued copies first
  }
  Uploader(const Uploader&) = delete;
  Uploader& operator=(const Uploader&) = delete;

  void copy(void* dst, const void* src, size_t bytes) {
    for (size_t off = 0; off < bytes; off += kChunk) {
      const size_t len = std::min(kChunk, bytes - off);
      char* stage = static_cast<char*>(buf_[cur_]);
      const char* from = static_cast<const char*>(src) + off;
      parallel_for(int64_t(len), int64_t(4) << 20, [&](int64_t b, int64_t e) {
        std::memcpy(stage + b, from + b, size_t(e - b));
      });
      ops_.synchronize();  // the other buffer's copy (the one before this chunk) has landed
      ops_.copy_to_backend_async(static_cast<char*>(dst) + off, stage, len);
      cur_ ^= 1;  // this buffer is refilled only after the next chunk's synchronize
    }
  }
  void finish() { ops_.synchronize(); }

 private:
  ops::Ops& ops_;
  void* buf_[2] = {nullptr, nullptr};
  int cur_ = 0;
};
}  // namespace

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
  Uploader up(ops_);
  // One device copy per distinct host region (a tied LM head shares the embedding's).
  std::map<std::pair<const void*, size_t>, void*> uploaded;
  auto put = [&](const void* src, size_t bytes) -> void* {
    if (!src) return nullptr;
    auto key = std::make_pair(src, bytes);
    if (auto it = uploaded.find(key); it != uploaded.end()) return it->second;
    owned_.emplace_back(ops_, bytes);
    up.copy(owned_.back().data(), src, bytes);
    uploaded[key] = owned_.back().data();
    return owned_.back().data();
  };
  auto weight = [&](const ops::Weight& w) {
    ops::Weight d = w;
    d.data = put(w.data, size_t(w.rows * w.cols) * dtype_size(w.dtype));
    return d;
  };
  // An EXL2 layer (its bias inside the view); no float16 copy goes to the device. Backends that
  // read the tiled layout get only that, made here on the host (quant/exl2_tiled.h).
  const bool tiled = ops_.wants_exl2_tiled();
  auto fresh = [&](const void* src, size_t bytes) -> void* {  // not cached: src is a temporary
    owned_.emplace_back(ops_, bytes);
    up.copy(owned_.back().data(), src, bytes);
    return owned_.back().data();
  };
  auto exl2 = [&](const ops::Exl2View& v) -> const ops::Exl2View* {
    ops::Exl2View d = v;
    const int64_t Np = v.padded_out(), G = v.num_groups;
    d.q_scale_max = static_cast<const uint16_t*>(put(v.q_scale_max, size_t(G) * 2));
    d.bias = static_cast<const uint16_t*>(put(v.bias, size_t(v.out_features) * 2));
    if (tiled) {
      const quant::Exl2Tiled t = quant::exl2_tile(v);
      quant::exl2_attach_tiled(d, t);  // then the host pointers become device copies
      d.q_weight = d.q_scale = nullptr;
      d.perm = d.groups = nullptr;
      d.tiled = static_cast<const uint32_t*>(fresh(t.weight.data(), t.weight.size() * 4));
      d.tiled_scale = static_cast<const uint32_t*>(fresh(t.scale.data(), t.scale.size() * 4));
      d.tiled_groups = static_cast<const int32_t*>(fresh(t.groups.data(), t.groups.size() * 4));
      d.tiled_perm = static_cast<const int32_t*>(fresh(t.perm.data(), t.perm.size() * 4));
    } else {
      const int32_t* last = v.groups + (G - 1) * 4;  // bits, rows, first packed row, first act row
      const int64_t qrows = int64_t(last[2]) + int64_t(last[1]) * last[0] / 32;
      d.q_weight = static_cast<const uint32_t*>(put(v.q_weight, size_t(qrows * Np) * 4));
      d.q_scale = static_cast<const uint32_t*>(put(v.q_scale, size_t(G * (Np / 8)) * 4));
      d.perm = static_cast<const int32_t*>(put(v.perm, size_t(v.in_features) * 4));
      d.groups = static_cast<const int32_t*>(put(v.groups, size_t(G) * 16));
    }
    device_exl2_.push_back(d);
    return &device_exl2_.back();
  };
  auto linear = [&](const Linear& l) {
    Linear d;
    if (packed_ && l.exl2) {
      d.w = l.w;
      d.w.data = nullptr;
      d.exl2 = exl2(*l.exl2);
      return d;
    }
    if (!l.w.data && l.w.rows > 0)
      fail(ErrorKind::kInvalidArgument, "{}: EXL2 layers were loaded without float16 copies, which LATHE_EXL2_PACKED=0 needs",
           model_.dir().string());
    d.w = weight(l.w);
    d.bias = static_cast<const float*>(put(l.bias, size_t(l.w.rows) * sizeof(float)));
    return d;
  };
  // Matrices with the same dtype and width placed back to back in one buffer (q|k|v, gate|up), so
  // the forward can run them as one wider matmul; anything else is copied on its own.
  auto adjacent = [&](const Linear* const* in, Linear* const* out, int count) {
    bool same = in[0]->w.data != nullptr;
    size_t total = 0;
    for (int i = 0; i < count; ++i) {
      same = same && in[i]->w.data && !(packed_ && in[i]->exl2) && in[i]->w.dtype == in[0]->w.dtype && in[i]->w.cols == in[0]->w.cols;
      total += size_t(in[i]->w.rows * in[i]->w.cols) * dtype_size(in[i]->w.dtype);
    }
    if (!same) {
      for (int i = 0; i < count; ++i) *out[i] = linear(*in[i]);
      return;
    }
    owned_.emplace_back(ops_, total);
    char* at = static_cast<char*>(owned_.back().data());
    for (int i = 0; i < count; ++i) {
      const size_t bytes = size_t(in[i]->w.rows * in[i]->w.cols) * dtype_size(in[i]->w.dtype);
      up.copy(at, in[i]->w.data, bytes);
      *out[i] = *in[i];
      out[i]->w.data = at;
      out[i]->bias = static_cast<const float*>(put(in[i]->bias, size_t(in[i]->w.rows) * sizeof(float)));
      at += bytes;
    }
  };
  ModelWeights& d = device_weights_;
  d.embed = weight(host.embed);
  d.final_norm = weight(host.final_norm);
  if (packed_ && host.lm_head_exl2) {
    d.lm_head = host.lm_head;
    d.lm_head.data = nullptr;
    d.lm_head_exl2 = exl2(*host.lm_head_exl2);
  } else {
    d.lm_head = weight(host.lm_head);
  }
  for (const LayerWeights& L : host.layers) {
    LayerWeights D;
    D.attn_norm = weight(L.attn_norm);
    D.attn_post_norm = weight(L.attn_post_norm);
    D.ffn_norm = weight(L.ffn_norm);
    D.ffn_post_norm = weight(L.ffn_post_norm);
    // q, k, v back to back (and gate, up below): one GEMM of their summed width serves all three.
    const Linear* qkv_in[3] = {&L.q, &L.k, &L.v};
    Linear* qkv_out[3] = {&D.q, &D.k, &D.v};
    adjacent(qkv_in, qkv_out, 3);
    D.o = linear(L.o);
    D.q_norm = weight(L.q_norm);
    D.k_norm = weight(L.k_norm);
    const Linear* gu_in[2] = {&L.gate, &L.up};
    Linear* gu_out[2] = {&D.gate, &D.up};
    adjacent(gu_in, gu_out, 2);
    D.down = linear(L.down);
    D.router = linear(L.router);
    for (const auto& e : L.experts) D.experts.push_back({linear(e.gate), linear(e.up), linear(e.down)});
    d.layers.push_back(std::move(D));
  }
  // Expert pointer tables for small-batch MoE on the device: [gate x E, up x E, down x E].
  for (const LayerWeights& D : d.layers) {
    if (D.experts.empty()) break;
    const DType dt = D.experts[0].gate.w.dtype;
    bool ok = true;
    std::vector<const void*> table;
    for (int part = 0; part < 3; ++part)
      for (const ExpertWeights& e : D.experts) {
        const Linear& l = part == 0 ? e.gate : part == 1 ? e.up : e.down;
        ok = ok && !l.bias && l.w.dtype == dt && l.w.data;
        table.push_back(l.w.data);
      }
    if (!ok) {
      moe_tables_.clear();
      break;
    }
    owned_.emplace_back(ops_, table.size() * sizeof(void*));
    ops_.copy_to_backend(owned_.back().data(), table.data(), table.size() * sizeof(void*));
    moe_tables_.push_back(static_cast<const void* const*>(owned_.back().data()));
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

// Most tokens an EXL2 layer runs from its packed bits for; above it the dequantized copy's matmul
// wins. Measured on the CPU backend (2 cores, 4096 x 4096, 4 bits, weights streamed from DRAM):
// 1 token 0.9-1.3 ms packed vs 1.3 ms bf16, 4 tokens 1.2-1.4 vs 1.8-1.9 ms; a 512-token prefill
// ~3x slower packed (each weight decoded once per 4 tokens).
constexpr int64_t kPackedMaxTokens = 4;

// y = x W^T (+ bias); an EXL2 layer runs from its packed bits where `packed` allows it: always
// when it has no float16 copy (device backends), else for steps of up to kPackedMaxTokens.
bool runs_packed(const Linear& l, int64_t n, bool packed) { return packed && l.exl2 && (n <= kPackedMaxTokens || !l.w.data); }

// glu_up (a packed layer only): the input is act(x) * glu_up (ops::Exl2MatmulParams::glu_up).
void linear(ops::Ops& ops, const float* x, const Linear& l, float* y, int64_t n, bool packed = false,
            const float* glu_up = nullptr, ops::Activation glu_act = ops::Activation::kSilu) {
  if (runs_packed(l, n, packed)) {
    ops::Exl2MatmulParams q;
    q.x = x;
    q.w = *l.exl2;  // the layer's bias is in the view
    q.y = y;
    q.n = n;
    q.glu_up = glu_up;
    q.glu_act = glu_act;
    ops.matmul_exl2(q);
    return;
  }
  if (glu_up) fail(ErrorKind::kInternal, "linear: a fused glu input needs a layer that runs packed");
  ops::MatmulParams p;
  p.x = x;
  p.w = l.w;
  p.bias = l.bias;
  p.y = y;
  p.n = n;
  ops.matmul(p);
}

// Layers on one input (q, k, v; gate, up): one matmul_exl2_multi call when all run from their
// packed bits (the backend may run them as one launch), else linear() each.
void linear_multi(ops::Ops& ops, const float* x, const Linear* const* l, float* const* y, int count, int64_t n, bool packed) {
  bool all = true;
  for (int i = 0; i < count; ++i) all = all && runs_packed(*l[i], n, packed);
  if (!all) {
    for (int i = 0; i < count; ++i) linear(ops, x, *l[i], y[i], n, packed);
    return;
  }
  ops::Exl2MultiParams p;
  p.x = x;
  p.n = n;
  p.count = count;
  for (int i = 0; i < count; ++i) p.w[i] = *l[i]->exl2, p.y[i] = y[i];
  ops.matmul_exl2_multi(p);
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

// One step's shape and its inputs in backend memory (ws.meta), as the enqueued ops read them.
struct Runner::Step {
  int64_t n = 0;      // tokens over all sequences
  int64_t seqs = 0;
  int64_t max_q = 0;  // launch bounds (see ops::BatchAttentionParams)
  int64_t max_kv = 0;
  int64_t stride = 0;      // block table row length
  int64_t rows = 0;        // logits rows
  int64_t rows_first = 0;  // >= 0: logits rows are h rows [rows_first, rows_first + rows); else gathered
  bool lowp = false;       // layer inputs and attention outputs as ws.h_lowp / ws.attn_lowp only
  const int32_t* ids = nullptr;    // [n]
  const int32_t* slots = nullptr;  // [n] pool row of each token's K/V
  const int32_t* cu_q = nullptr;   // [seqs + 1]
  const int32_t* kv_len = nullptr; // [seqs]
  const int32_t* table = nullptr;  // [seqs, stride]
  const int32_t* rows_idx = nullptr;  // [rows] (gathered logits rows only)
  const float* cos = nullptr;      // [n, rot / 2]
  const float* sin = nullptr;
  float* logits = nullptr;         // [rows, vocab]
};

void Runner::set_tap(Tap tap) { tap_ = std::move(tap); }

void Runner::attention_block(int64_t layer, const LayerWeights& L, const Step& st, KvPool& pool,
                             Workspace& ws) const {
  const ModelConfig& c = model_.config();
  const ArchSpec& arch = model_.arch();
  const int64_t H = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t n = st.n;
  const float offset = arch.norm_weight_offset;
  float* h = ws.h.f32();  // the layer input, already normalised by the caller
  float* q = ws.q.f32();
  float* k = ws.k.f32();
  float* v = ws.v.f32();

  // q|k|v stored back to back with no bias and no per-head norm: one matmul into [n, q + 2 kv]
  // rows, which rope_store_kv reads with strides (writing q dense for attention).
  const size_t q_bytes = size_t(L.q.w.rows * L.q.w.cols) * dtype_size(L.q.w.dtype);
  const size_t k_bytes = size_t(L.k.w.rows * L.k.w.cols) * dtype_size(L.k.w.dtype);
  const bool fused = L.q.w.data && !arch.qk_norm && !L.q.bias && !L.k.bias && !L.v.bias && L.q.w.dtype == L.k.w.dtype &&
                     L.k.w.dtype == L.v.w.dtype && L.q.w.cols == L.k.w.cols && L.k.w.cols == L.v.w.cols &&
                     static_cast<const char*>(L.k.w.data) == static_cast<const char*>(L.q.w.data) + q_bytes &&
                     static_cast<const char*>(L.v.w.data) == static_cast<const char*>(L.k.w.data) + k_bytes;
  const int64_t qkv_width = L.q.w.rows + L.k.w.rows + L.v.w.rows;
  if (tap_) tap_(layer, TapPoint::kAttnIn, h, n, H);
  const float* q_in = q;
  const float* k_in = k;
  const float* v_in = v;
  int64_t in_stride = 0;
  if (fused) {
    float* qkv = ws.qkv.f32();
    ops::MatmulParams m;
    m.x = st.lowp ? nullptr : h;
    m.x_lowp = st.lowp ? ws.h_lowp.data() : nullptr;
    m.w = L.q.w;
    m.w.rows = qkv_width;
    m.y = qkv;
    m.n = n;
    ops_.matmul(m);
    q_in = qkv;
    k_in = qkv + L.q.w.rows;
    v_in = qkv + L.q.w.rows + L.k.w.rows;
    in_stride = qkv_width;
  } else if (packed_ && (L.q.exl2 || L.k.exl2 || L.v.exl2)) {
    const Linear* proj[3] = {&L.q, &L.k, &L.v};
    float* dst[3] = {q, k, v};
    linear_multi(ops_, h, proj, dst, 3, n, true);
  } else {
    ops::MultiMatmulParams mm;
    mm.x = st.lowp ? nullptr : h;
    mm.x_lowp = st.lowp ? ws.h_lowp.data() : nullptr;
    mm.n = n;
    mm.count = 3;
    const Linear* proj[3] = {&L.q, &L.k, &L.v};
    float* dst[3] = {q, k, v};
    for (int i = 0; i < 3; ++i) {
      mm.w[i] = proj[i]->w;
      mm.bias[i] = proj[i]->bias;
      mm.y[i] = dst[i];
    }
    ops_.matmul_multi(mm);
  }
  if (arch.qk_norm) {
    ops_.rms_norm(norm_params(q, L.q_norm, q, n * nh, hd, c.rms_norm_eps, offset));
    ops_.rms_norm(norm_params(k, L.k_norm, k, n * nkv, hd, c.rms_norm_eps, offset));
  }
  // RoPE on q and k, and the new K/V rows into their sequences' slots in the pool.
  ops::RopeStoreParams r;
  r.q = const_cast<float*>(q_in);
  r.k = const_cast<float*>(k_in);
  r.v = v_in;
  r.q_stride = r.k_stride = r.v_stride = in_stride;
  r.q_out = fused ? q : nullptr;
  r.cos = st.cos;
  r.sin = st.sin;
  r.k_cache = pool.k(layer);
  r.v_cache = pool.v(layer);
  r.kv_dtype = pool.dtype();
  r.kv_quant = pool.quant();
  r.k_scale = pool.k_scale(layer);
  r.v_scale = pool.v_scale(layer);
  r.slots = st.slots;
  r.n = n;
  r.n_heads = nh;
  r.n_kv_heads = nkv;
  r.head_dim = hd;
  r.rot_dim = rope_rot_dim(c);
  ops_.rope_store_kv(r);
  ops::BatchAttentionParams a;
  a.q = q;
  a.k = pool.k(layer);
  a.v = pool.v(layer);
  a.kv_dtype = pool.dtype();
  a.kv_quant = pool.quant();
  a.k_scale = pool.k_scale(layer);
  a.v_scale = pool.v_scale(layer);
  a.out = st.lowp ? nullptr : ws.attn.f32();
  a.out_lowp = st.lowp ? ws.attn_lowp.data() : nullptr;
  a.lowp_dtype = lowp_dtype_;
  a.n = n;
  a.num_seqs = st.seqs;
  a.cu_q = st.cu_q;
  a.kv_len = st.kv_len;
  a.block_table = st.table;
  a.block_size = pool.block_size();
  a.table_stride = st.stride;
  a.max_q = st.max_q;
  a.max_kv = st.max_kv;
  a.n_heads = nh;
  a.n_kv_heads = nkv;
  a.head_dim = hd;
  a.scale = c.attention_scale;
  a.softcap = c.attn_logit_softcap;
  a.window = c.layer_window[size_t(layer)];
  ops_.attention_batch(a);

  float* o = ws.o.f32();
  if (tap_) tap_(layer, TapPoint::kAttnOut, ws.attn.f32(), n, nh * hd);
  if (packed_ && L.o.exl2) {
    linear(ops_, ws.attn.f32(), L.o, o, n, true);
  } else {
    ops::MatmulParams op;
    op.x = st.lowp ? nullptr : ws.attn.f32();
    op.x_lowp = st.lowp ? ws.attn_lowp.data() : nullptr;
    op.w = L.o.w;
    op.bias = L.o.bias;
    op.y = o;
    op.n = n;
    ops_.matmul(op);
  }
  if (arch.norm_layout == NormLayout::kSandwich)
    ops_.rms_norm(norm_params(o, L.attn_post_norm, o, n, H, c.rms_norm_eps, offset));
  // The caller adds o to the residual stream, fused with the next norm.
}

void Runner::ffn_block(int64_t layer, const LayerWeights& L, const Step& st, Workspace& ws) const {
  const int64_t n = st.n;
  const ModelConfig& c = model_.config();
  const ArchSpec& arch = model_.arch();
  const int64_t H = c.hidden_size;
  const float offset = arch.norm_weight_offset;
  float* o = ws.o.f32();
  const bool packed = packed_ && (L.gate.exl2 || L.up.exl2 || L.down.exl2);
  if (tap_ || packed) {  // unfused: taps observe the activation before down; packed layers run alone
    if (tap_) tap_(layer, TapPoint::kFfnIn, ws.h.f32(), n, H);
    const Linear* proj[2] = {&L.gate, &L.up};
    float* dst[2] = {ws.gate.f32(), ws.up.f32()};
    linear_multi(ops_, ws.h.f32(), proj, dst, 2, n, packed_);
    if (!tap_ && runs_packed(L.down, n, packed_)) {
      // The glu goes into down's matmul (Exl2MatmulParams::glu_up): one kernel fewer per layer.
      linear(ops_, ws.gate.f32(), L.down, o, n, packed_, ws.up.f32(), c.activation);
    } else {
      glu(ops_, ws.gate.f32(), ws.up.f32(), n, c.intermediate_size, c.activation);
      if (tap_) tap_(layer, TapPoint::kFfnMid, ws.gate.f32(), n, c.intermediate_size);
      linear(ops_, ws.gate.f32(), L.down, o, n, packed_);
    }
    if (arch.norm_layout == NormLayout::kSandwich)
      ops_.rms_norm(norm_params(o, L.ffn_post_norm, o, n, H, c.rms_norm_eps, offset));
    return;
  }
  ops::FfnParams f;
  f.x = st.lowp ? nullptr : ws.h.f32();
  f.x_lowp = st.lowp ? ws.h_lowp.data() : nullptr;
  f.gate = L.gate.w;
  f.up = L.up.w;
  f.down = L.down.w;
  f.gate_bias = L.gate.bias;
  f.up_bias = L.up.bias;
  f.down_bias = L.down.bias;
  f.gate_buf = ws.gate.f32();
  f.up_buf = ws.up.f32();
  f.out = o;
  f.n = n;
  f.act = c.activation;
  ops_.ffn(f);
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
  if (size_t(layer) < moe_tables_.size()) {
    ops::MoeParams p;
    p.x = h;
    p.logits = router;
    p.out = ws.x.f32();
    p.gate = moe_tables_[size_t(layer)];
    p.up = p.gate + E;
    p.down = p.gate + 2 * E;
    p.dtype = L.experts[0].gate.w.dtype;
    p.n = n;
    p.hidden = H;
    p.inter = I;
    p.experts = E;
    p.top_k = top;
    p.act = c.activation;
    if (ops_.moe_small_batch(p)) {
      moe_device_tokens_ = std::max(moe_device_tokens_, n);
      return;
    }
  }
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
  SeqInput in;
  in.ids = ids;
  in.kv = &cache.seq();
  in.logits = which;
  forward_batch(std::span<const SeqInput>(&in, 1), cache.pool(), ws, logits);
}

void Runner::enqueue(const Step& st, KvPool& pool, Workspace& ws) const {
  const ModelConfig& c = model_.config();
  const ArchSpec& arch = model_.arch();
  const int64_t n = st.n, H = c.hidden_size;
  ops::EmbeddingParams e;
  e.table = w_->embed;
  e.ids = st.ids;
  e.out = ws.x.f32();
  e.n = n;
  // Gemma: hidden * sqrt(hidden_size) (a float32 constant when the model runs in float32).
  e.scale = arch.embed_scale_sqrt_hidden ? float(std::sqrt(double(H))) : 1.f;
  ops_.embedding(e);

  // Residual stream x; h = the next block's normalised input. Each residual add is fused with the
  // norm that follows it (the next block's, or the final norm after the last layer).
  const double eps = c.rms_norm_eps;
  const float offset = arch.norm_weight_offset;
  float* x = ws.x.f32();
  float* h = ws.h.f32();
  // A layer input as the next projection takes it: fp32 h, or only its lowp copy.
  const auto layer_norm = [&](const ops::Weight& w) {
    ops::RmsNormParams p = norm_params(x, w, h, n, H, eps, offset);
    if (st.lowp) {
      p.y = nullptr;
      p.y_lowp = ws.h_lowp.data();
      p.lowp_dtype = lowp_dtype_;
    }
    return p;
  };
  ops_.rms_norm(layer_norm(w_->layers[0].attn_norm));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& L = w_->layers[size_t(l)];
    const bool last = l + 1 == c.num_layers;
    const ops::Weight& next_norm = last ? w_->final_norm : w_->layers[size_t(l + 1)].attn_norm;
    // The final norm feeds the LM head (gathered rows, a GEMV): always fp32.
    const ops::RmsNormParams next = last ? norm_params(x, next_norm, h, n, H, eps, offset) : layer_norm(next_norm);
    attention_block(l, L, st, pool, ws);
    ops_.add_rms_norm(x, ws.o.f32(), layer_norm(L.ffn_norm));
    if (arch.moe) {
      moe_block(l, n, ws);  // scatters the experts' outputs straight into x
      ops_.rms_norm(next);
    } else {
      ffn_block(l, L, st, ws);
      ops_.add_rms_norm(x, ws.o.f32(), next);
    }
  }
  if (st.rows == 0) return;

  const float* xr = h + st.rows_first * H;  // final-normed rows
  if (st.rows_first < 0) {
    ops::GatherRowsParams g;
    g.src = h;
    g.idx = st.rows_idx;
    g.dst = ws.logit_in.f32();
    g.n = st.rows;
    g.dim = H;
    ops_.gather_rows(g);
    xr = ws.logit_in.f32();
  }
  if (tap_) tap_(-1, TapPoint::kHeadIn, xr, st.rows, H);
  if (packed_ && w_->lm_head_exl2 && (st.rows <= kPackedMaxTokens || !w_->lm_head.data)) {
    ops::Exl2MatmulParams q;
    q.x = xr;
    q.w = *w_->lm_head_exl2;
    q.y = st.logits;
    q.n = st.rows;
    ops_.matmul_exl2(q);
    if (c.final_logit_softcap > 0) ops_.softcap(st.logits, st.rows * c.vocab_size, c.final_logit_softcap);
    return;
  }
  ops::MatmulParams p;
  p.x = xr;
  p.w = w_->lm_head;
  p.y = st.logits;
  p.n = st.rows;
  ops_.matmul(p);
  if (c.final_logit_softcap > 0) ops_.softcap(st.logits, st.rows * c.vocab_size, c.final_logit_softcap);
}

namespace {
size_t align16(size_t n) { return (n + 15) / 16 * 16; }  // 64-byte aligned regions of 4-byte values
}  // namespace

void Runner::rope_rows(int64_t first, int64_t count, float* cos, float* sin) const {
  const ModelConfig& c = config();
  const int64_t half = rope_rot_dim(c) / 2, len = first + count;
  if (len <= rope_static_length(c)) {
    ensure_rope_rows(len);
    std::lock_guard<std::mutex> lock(rope_mu_);
    std::copy_n(rope_cos_.data() + first * half, count * half, cos);
    std::copy_n(rope_sin_.data() + first * half, count * half, sin);
    return;
  }
  // Past the static length the frequencies depend on the length (dynamic scaling): computed here.
  std::vector<int32_t> positions(static_cast<size_t>(count));
  std::iota(positions.begin(), positions.end(), int32_t(first));
  rope_tables(rope_frequencies(c, len), positions.data(), count, cos, sin);
}

void Runner::ensure_rope_rows(int64_t positions) const {
  std::lock_guard<std::mutex> lock(rope_mu_);
  if (positions <= rope_rows_) return;
  const int64_t half = rope_rot_dim(config()) / 2;
  const int64_t want = std::max(positions, std::min<int64_t>(2 * rope_rows_, std::max<int64_t>(
                                                                                 config().max_position_embeddings, positions)));
  const int64_t want_rows = std::max<int64_t>(want, 256);
  std::vector<int32_t> pos(static_cast<size_t>(want_rows - rope_rows_));
  std::iota(pos.begin(), pos.end(), int32_t(rope_rows_));
  rope_cos_.resize(size_t(want_rows * half));
  rope_sin_.resize(size_t(want_rows * half));
  rope_tables(rope_short_, pos.data(), int64_t(pos.size()), rope_cos_.data() + rope_rows_ * half,
              rope_sin_.data() + rope_rows_ * half);
  rope_rows_ = want_rows;
}

struct Runner::SelectRequest {
  std::span<const SelectRow> rows;
  int64_t k = 1;
};

void Runner::forward_batch(std::span<const SeqInput> seqs, KvPool& pool, Workspace& ws, Tensor* logits) const {
  step(seqs, pool, ws, logits, nullptr);
}

void Runner::forward_select(std::span<const SeqInput> seqs, KvPool& pool, Workspace& ws,
                            std::span<const SelectRow> rows, int64_t k, Selection* out) const {
  launch_select(seqs, pool, ws, rows, k);
  collect_selection(ws, out);
}

int64_t Runner::decode_bucket(int64_t seqs) {
  if (seqs <= 2) return seqs;
  if (seqs <= 4) return 4;
  if (seqs > 512) return seqs;
  return (seqs + 7) / 8 * 8;
}

void Runner::launch_select(std::span<const SeqInput> seqs, KvPool& pool, Workspace& ws, std::span<const SelectRow> rows,
                           int64_t k) const {
  SelectRequest req;
  req.rows = rows;
  req.k = k;
  ws.selection = {};
  step(seqs, pool, ws, nullptr, &req);
}

void Runner::collect_selection(Workspace& ws, Selection* out) const {
  Workspace::PendingSelection& p = ws.selection;
  if (!p.pending) fail(ErrorKind::kInternal, "collect_selection: no selection was launched");
  p.pending = false;
  ops_.synchronize();
  const size_t n = size_t(p.rows * p.k);
  const auto* ids = static_cast<const int32_t*>(ws.readback(0));
  const auto* values = reinterpret_cast<const float*>(ids + n);
  out->k = p.k;
  out->ids.assign(ids, ids + n);
  out->values.assign(values, values + n);
  if (p.sums)
    out->sums.assign(values + n, values + n + size_t(p.rows));
  else
    out->sums.assign(size_t(p.rows), 0.f);
}

void Runner::selected_logits_row(Workspace& ws, int64_t row, std::span<float> out) const {
  const int64_t V = config().vocab_size;
  if (int64_t(out.size()) != V || !ws.logits.data() || ws.logits.bytes() < size_t((row + 1) * V) * sizeof(float))
    fail(ErrorKind::kInternal, "selected_logits_row: row {} is not in the last selection", row);
  ops_.copy_to_host(out.data(), ws.logits.f32() + row * V, size_t(V) * sizeof(float));
}

void Runner::step(std::span<const SeqInput> seqs, KvPool& pool, Workspace& ws, Tensor* logits,
                  const SelectRequest* select) const {
  const ModelConfig& c = model_.config();
  const ArchSpec& arch = model_.arch();
  const int64_t S = int64_t(seqs.size());
  if (S == 0) fail(ErrorKind::kInvalidArgument, "forward called with no sequences");
  const int64_t bs = pool.block_size();

  Step st;
  st.seqs = S;
  bool decode = true;  // every sequence runs one token and wants its logits
  int64_t max_blocks = 1;
  std::vector<const SeqKv*> seen;
  for (const SeqInput& in : seqs) {
    const int64_t n = int64_t(in.ids.size());
    if (!in.kv) fail(ErrorKind::kInternal, "forward: a sequence has no KV state");
    if (n == 0) fail(ErrorKind::kInvalidArgument, "forward called with no tokens");
    const SeqKv& kv = *in.kv;
    if (kv.length + n > kv.capacity(bs))
      fail(ErrorKind::kOutOfRange, "{} tokens do not fit the context: {} already cached, capacity {} (raise --ctx)", n,
           kv.length, kv.capacity(bs));
    for (size_t i = 0; i < kv.blocks.size(); ++i) {
      const int32_t b = kv.blocks[i];
      // kReleasedBlock: given back because every layer's window has passed it (see SeqKv).
      if (b == kReleasedBlock && int64_t(i + 1) * bs <= kv.length - release_window_ + 1) continue;
      if (b < 0 || b >= pool.num_blocks())
        fail(ErrorKind::kInternal, "forward: block {} (entry {}) is outside the pool of {} blocks or still inside the window", b,
             i, pool.num_blocks());
    }
    for (int32_t id : in.ids)
      if (id < 0 || id >= c.vocab_size)
        fail(ErrorKind::kInvalidArgument, "token id {} is out of range: the vocabulary has {} tokens (0..{})", id,
             c.vocab_size, c.vocab_size - 1);
    seen.push_back(&kv);
    st.n += n;
    st.max_q = std::max(st.max_q, n);
    st.max_kv = std::max(st.max_kv, kv.length + n);
    max_blocks = std::max<int64_t>(max_blocks, int64_t(kv.blocks.size()));
    st.rows += in.logits == LogitsFor::kLast ? 1 : in.logits == LogitsFor::kAll ? n : 0;
    decode &= n == 1 && in.logits == LogitsFor::kLast;
  }
  std::sort(seen.begin(), seen.end());
  if (std::adjacent_find(seen.begin(), seen.end()) != seen.end())
    fail(ErrorKind::kInvalidArgument, "forward: a sequence appears twice in one batch");
  // Padding sequences up to the step's bucket (set_decode_buckets): one token each at position 0,
  // K/V written to the scratch row, keys read from block 0 (whatever it holds: their outputs are
  // never used), a greedy selection row each after the real ones.
  const int64_t pad = decode && select && buckets_ ? decode_bucket(S) - S : 0;
  st.seqs += pad;
  st.n += pad;
  st.max_kv = std::max<int64_t>(st.max_kv, 1);
  st.rows += pad;

  // Decode steps replay a graph: its shapes must not depend on this step's lengths, so the table
  // row length is rounded up to a power of two and the key bound is what that table can hold.
  const bool graph = decode && graphs_ && (!arch.moe || st.n <= moe_device_tokens_) &&
                     !ws.graphs_unsupported && !ops_.host_memory();
  st.stride = graph ? int64_t(std::bit_ceil(uint64_t(max_blocks))) : max_blocks;
  if (graph) st.max_kv = st.stride * bs;

  // Logits rows (positions in the token order of the step): contiguous or gathered.
  std::vector<int32_t> rows;
  {
    int64_t t = 0;
    for (const SeqInput& in : seqs) {
      const int64_t n = int64_t(in.ids.size());
      if (in.logits == LogitsFor::kAll)
        for (int64_t i = 0; i < n; ++i) rows.push_back(int32_t(t + i));
      else if (in.logits == LogitsFor::kLast)
        rows.push_back(int32_t(t + n - 1));
      t += n;
    }
    for (int64_t i = 0; i < pad; ++i) rows.push_back(int32_t(t++));
    st.rows_first = rows.empty() ? 0 : rows.front();
    for (size_t i = 0; i < rows.size(); ++i)
      if (rows[i] != rows.front() + int32_t(i)) st.rows_first = -1;
  }

  // Workspace sizes first: growing a buffer retires the recorded graphs.
  const int64_t n = st.n, H = c.hidden_size, hd = c.head_dim, I = c.intermediate_size;
  const int64_t half = rope_rot_dim(c) / 2;
  ws.get(ws.x, n, H);
  ws.get(ws.h, n, H);
  ws.get(ws.o, n, H);
  ws.get(ws.q, n, c.num_heads * hd);
  ws.get(ws.k, n, pool.row_size());
  ws.get(ws.v, n, pool.row_size());
  ws.get(ws.attn, n, c.num_heads * hd);
  ws.get(ws.qkv, n, (c.num_heads + 2 * c.num_kv_heads) * hd);
  ws.get(ws.gate, n, I);
  ws.get(ws.up, n, I);
  st.lowp = !tap_ && lowp_dtype_ != DType::kF32 && ops_.lowp_activations(n, lowp_dtype_);
  if (st.lowp) {  // 16-bit rows, allocated as floats
    ws.get(ws.h_lowp, n, (H + 1) / 2);
    ws.get(ws.attn_lowp, n, (c.num_heads * hd + 1) / 2);
  }
  if (st.rows_first < 0) ws.get(ws.logit_in, st.rows, H);
  // Selection inputs: per row penalty pairs (offsets, ids, counts), then four floats per row.
  size_t n_pairs = 0;
  if (select) {
    if (int64_t(select->rows.size()) + pad != st.rows)
      fail(ErrorKind::kInternal, "forward_select: {} selection rows for {} logits rows", select->rows.size(), st.rows - pad);
    const int64_t kmax = std::min<int64_t>(c.vocab_size, ops::TopKParams::kMaxK);
    if (select->k < 1 || select->k > kmax)
      fail(ErrorKind::kInvalidArgument, "token selection wants {} candidates; 1..{} are possible", select->k, kmax);
    for (const SelectRow& r : select->rows) n_pairs += r.penalized.size();
  }
  const int64_t SP = st.seqs;  // with the padding sequences
  const size_t o_ids = 0, o_slots = align16(size_t(n)), o_cu = o_slots + align16(size_t(n)),
               o_kv = o_cu + align16(size_t(SP + 1)), o_table = o_kv + align16(size_t(SP)),
               o_rows = o_table + align16(size_t(SP * st.stride)), o_cos = o_rows + align16(rows.size()),
               o_sin = o_cos + align16(size_t(n * half)), o_poff = o_sin + align16(size_t(n * half)),
               o_pid = o_poff + align16(select ? rows.size() + 1 : 0), o_pcnt = o_pid + align16(n_pairs),
               o_pval = o_pcnt + align16(n_pairs), total = o_pval + align16(select ? 4 * rows.size() : 0);
  float* meta = ws.get(ws.meta, int64_t(total), 1);
  const bool host = ops_.host_memory();
  if (select) {
    st.logits = ws.get(ws.logits, st.rows, c.vocab_size);
    ws.get(ws.sel_ids, st.rows, select->k);
    ws.get(ws.sel_values, st.rows, select->k);
    ws.get(ws.sel_sums, st.rows, 1);
  } else if (st.rows > 0) {
    if (!logits) fail(ErrorKind::kInternal, "forward: logits requested without an output tensor");
    if (logits->numel() != st.rows * c.vocab_size || logits->dtype() != DType::kF32)
      *logits = Tensor::f32({st.rows, c.vocab_size});
    else
      logits->reshape({st.rows, c.vocab_size});
    st.logits = host ? logits->as<float>() : ws.get(ws.logits, st.rows, c.vocab_size);
  }

  // Stage the step's inputs in pinned memory and send them in one copy.
  auto* stage = static_cast<uint32_t*>(ws.staging(total * sizeof(float)));
  auto* si = reinterpret_cast<int32_t*>(stage);
  auto* sf = reinterpret_cast<float*>(stage);
  {
    int64_t t = 0;
    for (int64_t s = 0; s < S; ++s) {
      const SeqInput& in = seqs[size_t(s)];
      const SeqKv& kv = *in.kv;
      const int64_t cnt = int64_t(in.ids.size());
      si[o_cu + size_t(s)] = int32_t(t);
      si[o_kv + size_t(s)] = int32_t(kv.length + cnt);
      for (int64_t b = 0; b < st.stride; ++b)
        // (a released block reads as block 0: the kernels never look that far back)
        si[o_table + size_t(s * st.stride + b)] = b < int64_t(kv.blocks.size()) ? std::max(kv.blocks[size_t(b)], 0) : 0;
      for (int64_t i = 0; i < cnt; ++i) {
        const int64_t p = kv.length + i;
        si[o_ids + size_t(t + i)] = in.ids[size_t(i)];
        si[o_slots + size_t(t + i)] = int32_t(int64_t(kv.blocks[size_t(p / bs)]) * bs + p % bs);
      }
      rope_rows(kv.length, cnt, sf + o_cos + size_t(t * half), sf + o_sin + size_t(t * half));
      t += cnt;
    }
    for (int64_t s = S; s < SP; ++s, ++t) {  // padding sequences
      si[o_cu + size_t(s)] = int32_t(t);
      si[o_kv + size_t(s)] = 1;
      for (int64_t b = 0; b < st.stride; ++b) si[o_table + size_t(s * st.stride + b)] = 0;
      si[o_ids + size_t(t)] = 0;
      si[o_slots + size_t(t)] = int32_t(pool.scratch_slot());
      rope_rows(0, 1, sf + o_cos + size_t(t * half), sf + o_sin + size_t(t * half));
    }
    si[o_cu + size_t(SP)] = int32_t(t);
    std::copy(rows.begin(), rows.end(), si + o_rows);
    if (select) {
      const size_t R = rows.size();
      const SelectRow greedy;  // the padding rows'
      size_t at = 0;
      for (size_t r = 0; r < R; ++r) {
        const SelectRow& row = r < select->rows.size() ? select->rows[r] : greedy;
        si[o_poff + r] = int32_t(at);
        for (auto [id, count] : row.penalized) {
          if (id < 0 || id >= c.vocab_size) fail(ErrorKind::kInternal, "penalized token {} is outside the vocabulary", id);
          si[o_pid + at] = id;
          si[o_pcnt + at] = count;
          ++at;
        }
        sf[o_pval + r] = row.repetition;
        sf[o_pval + R + r] = row.presence;
        sf[o_pval + 2 * R + r] = row.frequency;
        sf[o_pval + 3 * R + r] = row.temperature > 0.f ? 1.f / row.temperature : 0.f;
      }
      si[o_poff + R] = int32_t(at);
    }
  }
  ops_.copy_to_backend_async(meta, stage, total * sizeof(float));
  auto* mi = reinterpret_cast<const int32_t*>(meta);
  st.ids = mi + o_ids;
  st.slots = mi + o_slots;
  st.cu_q = mi + o_cu;
  st.kv_len = mi + o_kv;
  st.table = mi + o_table;
  st.rows_idx = mi + o_rows;
  st.cos = meta + o_cos;
  st.sin = meta + o_sin;

  if (graph) {
    Workspace::GraphEntry& g = ws.graphs[{st.seqs, st.stride, pool.id()}];
    if (g.graph && g.generation == ws.generation() && g.graph->valid()) {
      g.graph->replay();
    } else {
      g.graph.reset();
      enqueue(st, pool, ws);
      // Record once the same shape comes back: one-off shapes are not worth the recording.
      if (++g.seen >= 2) {
        g.graph = ops_.capture([&] { enqueue(st, pool, ws); });
        g.generation = ws.generation();
        if (!g.graph) ws.graphs_unsupported = true;
      }
    }
  } else {
    enqueue(st, pool, ws);
  }
  for (const SeqInput& in : seqs) in.kv->length += int64_t(in.ids.size());

  if (select) {
    const int64_t R = st.rows, k = select->k;
    if (n_pairs > 0) {
      ops::PenaltyParams pp;
      pp.logits = st.logits;
      pp.rows = R;
      pp.vocab = c.vocab_size;
      pp.offsets = mi + o_poff;
      pp.ids = mi + o_pid;
      pp.counts = mi + o_pcnt;
      pp.repetition = meta + o_pval;
      pp.presence = meta + o_pval + R;
      pp.frequency = meta + o_pval + 2 * R;
      ops_.apply_penalties(pp);
    }
    ops::TopKParams tk;
    tk.logits = st.logits;
    tk.rows = R;
    tk.vocab = c.vocab_size;
    tk.k = k;
    bool sampled = false;  // all-greedy steps skip the softmax sums
    for (const SelectRow& r : select->rows) sampled |= r.temperature > 0.f;
    tk.inv_temperature = sampled ? meta + o_pval + 3 * R : nullptr;
    tk.ids = reinterpret_cast<int32_t*>(ws.get(ws.sel_ids, R, k));
    tk.values = ws.get(ws.sel_values, R, k);
    tk.sums = ws.get(ws.sel_sums, R, 1);
    ops_.top_k(tk);
    // Queued behind the step into pinned memory (ids, values, then sums): collect_selection waits.
    const size_t n_sel = size_t(R * k);
    auto* back = static_cast<int32_t*>(ws.readback((2 * n_sel + size_t(R)) * 4));
    ops_.copy_to_host_async(back, tk.ids, n_sel * sizeof(int32_t));
    ops_.copy_to_host_async(back + n_sel, tk.values, n_sel * sizeof(float));
    if (sampled) ops_.copy_to_host_async(back + 2 * n_sel, tk.sums, size_t(R) * sizeof(float));
    ws.selection = {true, R, k, sampled};
    return;
  }
  if (st.rows > 0 && !host) {
    ops_.copy_to_host(logits->as<float>(), st.logits, size_t(st.rows * c.vocab_size) * sizeof(float));
  } else {
    ops_.synchronize();  // the staging area is reused by the next step
  }
}

// --- The forward one piece at a time (see Runner::run_sublayer) ---

Runner::Step Runner::sequence_step(int64_t n, const int32_t* ids, const KvPool* pool, Workspace& ws) const {
  const ModelConfig& c = model_.config();
  if (n < 1) fail(ErrorKind::kInvalidArgument, "a sublayer run needs at least one token");
  if (pool && (n > pool->block_size() || pool->num_blocks() < 1))
    fail(ErrorKind::kOutOfRange, "{} tokens do not fit the scratch K/V of {} positions", n, pool->block_size());
  const int64_t H = c.hidden_size, hd = c.head_dim, half = rope_rot_dim(c) / 2;
  ws.get(ws.x, n, H);
  ws.get(ws.h, n, H);
  ws.get(ws.o, n, H);
  ws.get(ws.q, n, c.num_heads * hd);
  const int64_t kv_row = pool ? pool->row_size() : c.num_kv_heads * hd;
  ws.get(ws.k, n, kv_row);
  ws.get(ws.v, n, kv_row);
  ws.get(ws.attn, n, c.num_heads * hd);
  ws.get(ws.qkv, n, (c.num_heads + 2 * c.num_kv_heads) * hd);
  ws.get(ws.gate, n, c.intermediate_size);
  ws.get(ws.up, n, c.intermediate_size);
  // Staged inputs: token ids, K/V slots (block 0, positions 0..n-1), the one-sequence tables, rope rows.
  const size_t o_slots = align16(size_t(n)), o_cu = o_slots + align16(size_t(n)), o_kv = o_cu + 16,
               o_table = o_kv + 16, o_cos = o_table + 16, o_sin = o_cos + align16(size_t(n * half)),
               total = o_sin + align16(size_t(n * half));
  float* meta = ws.get(ws.meta, int64_t(total), 1);
  auto* sf = static_cast<float*>(ws.staging(total * sizeof(float)));
  auto* si = reinterpret_cast<int32_t*>(sf);
  for (int64_t i = 0; i < n; ++i) {
    si[size_t(i)] = ids ? ids[i] : 0;
    si[o_slots + size_t(i)] = int32_t(i);
  }
  si[o_cu] = 0;
  si[o_cu + 1] = int32_t(n);
  si[o_kv] = int32_t(n);
  si[o_table] = 0;
  rope_rows(0, n, sf + o_cos, sf + o_sin);
  ops_.copy_to_backend_async(meta, sf, total * sizeof(float));
  const auto* mi = reinterpret_cast<const int32_t*>(meta);
  Step st;
  st.n = n;
  st.seqs = 1;
  st.max_q = st.max_kv = n;
  st.stride = 1;
  st.ids = mi;
  st.slots = mi + o_slots;
  st.cu_q = mi + o_cu;
  st.kv_len = mi + o_kv;
  st.table = mi + o_table;
  st.cos = meta + o_cos;
  st.sin = meta + o_sin;
  return st;  // lowp stays off: the pieces hand fp32 states to each other
}

void Runner::embed(std::span<const int32_t> ids, float* x, Workspace& ws) const {
  const int64_t n = int64_t(ids.size()), V = config().vocab_size;
  for (int32_t id : ids)
    if (id < 0 || id >= V) fail(ErrorKind::kInvalidArgument, "token id {} is out of range (vocabulary {})", id, V);
  const Step st = sequence_step(n, ids.data(), nullptr, ws);
  ops::EmbeddingParams e;
  e.table = w_->embed;
  e.ids = st.ids;
  e.out = x;
  e.n = n;
  e.scale = model_.arch().embed_scale_sqrt_hidden ? float(std::sqrt(double(config().hidden_size))) : 1.f;
  ops_.embedding(e);
  ops_.synchronize();
}

void Runner::run_sublayer(int64_t layer, Sublayer part, float* x, int64_t n, KvCache& scratch, Workspace& ws,
                          const LayerWeights* weights) const {
  const ModelConfig& c = model_.config();
  const ArchSpec& arch = model_.arch();
  if (layer < 0 || layer >= c.num_layers)
    fail(ErrorKind::kInvalidArgument, "layer {} is outside the model's {} layers", layer, c.num_layers);
  if (arch.moe && part == Sublayer::kFeedForward && weights)
    fail(ErrorKind::kUnsupported, "replacing MoE feed-forward weights in a sublayer run is not supported");
  const LayerWeights& L = weights ? *weights : w_->layers[size_t(layer)];
  const int64_t H = c.hidden_size;
  const Step st = sequence_step(n, nullptr, &scratch.pool(), ws);
  const bool attn = part == Sublayer::kAttention;
  ops_.rms_norm(norm_params(x, attn ? L.attn_norm : L.ffn_norm, ws.h.f32(), n, H, c.rms_norm_eps,
                            arch.norm_weight_offset));
  if (attn) {
    attention_block(layer, L, st, scratch.pool(), ws);
    ops_.add(x, ws.o.f32(), n * H);
  } else if (arch.moe) {  // the experts scatter-add into ws.x
    ops_.copy(ws.x.f32(), x, size_t(n * H) * sizeof(float));
    moe_block(layer, n, ws);
    ops_.copy(x, ws.x.f32(), size_t(n * H) * sizeof(float));
  } else {
    ffn_block(layer, L, st, ws);
    ops_.add(x, ws.o.f32(), n * H);
  }
  ops_.synchronize();
}

void Runner::final_norm(const float* x, float* y, int64_t n) const {
  const ModelConfig& c = model_.config();
  ops_.rms_norm(norm_params(x, w_->final_norm, y, n, c.hidden_size, c.rms_norm_eps, model_.arch().norm_weight_offset));
  ops_.synchronize();
}

void Runner::lm_head(const float* h, float* logits, int64_t n) const {
  const ModelConfig& c = model_.config();
  ops::MatmulParams p;
  p.x = h;
  p.w = w_->lm_head;
  p.y = logits;
  p.n = n;
  ops_.matmul(p);
  if (c.final_logit_softcap > 0) ops_.softcap(logits, n * c.vocab_size, c.final_logit_softcap);
  ops_.synchronize();
}

}  // namespace lathe::model
