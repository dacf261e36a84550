// A loaded causal LM (config + architecture row + weights in host memory), and the Runner that
// binds it to a backend and runs the one forward shared by every architecture (blocks read the
// ArchSpec flags; there are no per-architecture branches).
#pragma once

#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <memory>
#include <span>
#include <tuple>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "model/arch.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/rope.h"
#include "model/weights.h"
#include "ops/ops.h"

namespace lathe::model {

enum class LogitsFor { kLast, kAll, kNone };

struct LoadOptions {
  // Float16 copies of EXL2 layers, for backends without a packed path at some sizes (see
  // load_options_for). Off: the packed bits only, a quarter of the memory and no dequantization
  // at load.
  bool dequantize_exl2 = true;
};

class Model {
 public:
  static std::unique_ptr<Model> load(const std::filesystem::path& dir, const LoadOptions& options = {});

  const ModelConfig& config() const { return config_; }
  const ArchSpec& arch() const { return *arch_; }
  const WeightLoader& loader() const { return *loader_; }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  Model() = default;
  std::filesystem::path dir_;
  ModelConfig config_;
  const ArchSpec* arch_ = nullptr;
  std::unique_ptr<WeightLoader> loader_;
};

// How to load a model that will run on `ops`: device backends run every EXL2 matmul from the packed
// bits (unless LATHE_EXL2_PACKED=0), so they need no float16 copies.
LoadOptions load_options_for(const ops::Ops& ops);

// One sequence's part of a batched forward: its new tokens, where its K/V live, and which logits it
// wants. The forward writes positions [kv->length, kv->length + ids.size()) and then advances
// kv->length; kv->blocks must already cover them.
struct SeqInput {
  std::span<const int32_t> ids;
  SeqKv* kv = nullptr;
  LogitsFor logits = LogitsFor::kLast;
};

// Token selection done where the logits are (engine sampling): per logits row, the sampler's
// penalties are applied in place, then the k best candidates and the softmax denominator at the
// row's temperature come back to the host instead of the whole vocabulary.
struct SelectRow {
  float temperature = 0.f;  // 0: greedy (k = 1 is enough)
  float repetition = 1.f, presence = 0.f, frequency = 0.f;
  std::vector<std::pair<int32_t, int32_t>> penalized;  // (token id, count) of the history window
};
struct Selection {
  int64_t k = 0;
  std::vector<int32_t> ids;   // [rows, k], best first (equal logits: lower id first)
  std::vector<float> values;  // [rows, k] penalized logits
  std::vector<float> sums;    // [rows] sum_j exp((logit_j - max) / temperature) (0 for greedy rows)
};

// Scratch buffers in backend memory, reused across forward calls (grown on demand, never shrunk),
// the pinned staging area for each step's inputs, and the recorded decode graphs (which hold the
// buffers' addresses, so growing any buffer retires them).
class Workspace {
 public:
  explicit Workspace(ops::Ops& ops) : ops_(&ops) {}
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  float* get(ops::Buffer& b, int64_t rows, int64_t cols);
  // Pinned host memory of at least `bytes` (contents kept only until the next call): the step's
  // inputs on their way to the device, and its token selection on its way back.
  void* staging(size_t bytes) { return pinned(staging_, staging_bytes_, bytes); }
  void* readback(size_t bytes) { return pinned(readback_, readback_bytes_, bytes); }
  // The selection Runner::launch_select queued into readback(): collect_selection reads it.
  struct PendingSelection {
    bool pending = false;
    int64_t rows = 0, k = 0;
    bool sums = false;  // sums were copied too (a row samples at a temperature)
  } selection;
  uint64_t generation() const { return generation_; }

  ops::Buffer x, h, q, k, v, qkv, attn, o, gate, up, router, moe_in, moe_out, moe_idx, moe_w, logits, logit_in;
  ops::Buffer h_lowp, attn_lowp;  // h and attn rounded to the weights' dtype (see Runner::lowp_dtype_)
  ops::Buffer sel_ids, sel_values, sel_sums;  // token selection outputs
  ops::Buffer meta;  // this step's ids, slots, sequence table and rope tables (see Runner::forward_batch)

  struct GraphEntry {
    uint64_t generation = 0;
    int seen = 0;
    std::unique_ptr<ops::Graph> graph;
  };
  std::map<std::tuple<int64_t, int64_t, uint64_t>, GraphEntry> graphs;  // (sequences, table stride, pool)
  bool graphs_unsupported = false;

 private:
  ops::Ops* ops_;
  void* pinned(void*& buf, size_t& have, size_t bytes);
  void* staging_ = nullptr;
  size_t staging_bytes_ = 0;
  void* readback_ = nullptr;
  size_t readback_bytes_ = 0;
  uint64_t generation_ = 1;
};

// Where Runner::set_tap observes activations: the inputs of each layer's linear layers, and of
// the LM head.
enum class TapPoint { kAttnIn, kAttnOut, kFfnIn, kFfnMid, kHeadIn };
using Tap = std::function<void(int64_t layer, TapPoint point, const float* x, int64_t rows, int64_t dim)>;

// A decoder layer's two residual sublayers (Runner::run_sublayer): attention, and the feed-forward
// (dense or MoE), each with its input norm (and post-norm in the sandwich layout).
enum class Sublayer { kAttention, kFeedForward };

class Runner {
 public:
  // Binds the model to a backend; a device backend gets its own copy of the weights here.
  Runner(const Model& model, ops::Ops& ops);

  const Model& model() const { return model_; }
  const ModelConfig& config() const { return model_.config(); }
  ops::Ops& ops() const { return ops_; }
  // Positions a query looks back when every layer has a sliding window (the largest window): blocks
  // whose positions all lie more than this before a sequence's next token may be released
  // (SeqKv kReleasedBlock). 0 when some layer attends to the whole context.
  int64_t release_window() const { return release_window_ == kNoRelease ? 0 : release_window_; }

  // Runs `ids` at positions [cache.length(), cache.length() + n), appends their K/V to the cache,
  // and writes logits to the host tensor `logits` ([1, vocab] for kLast, [n, vocab] for kAll).
  void forward(std::span<const int32_t> ids, KvCache& cache, Workspace& ws, LogitsFor which, Tensor* logits) const;

  // Several sequences in one forward pass over a shared pool. `logits` gets, in input order, the
  // rows each sequence asked for (1 for kLast, its token count for kAll, none for kNone).
  // A step where every sequence decodes one token replays a recorded graph on backends that can
  // (after the same shape has run twice), so the launch overhead of ~10 ops per layer disappears.
  void forward_batch(std::span<const SeqInput> seqs, KvPool& pool, Workspace& ws, Tensor* logits) const;

  // forward_batch, then token selection on the backend (see SelectRow): one SelectRow per logits
  // row, k candidates each (1 <= k <= ops::TopKParams::kMaxK and the vocabulary).
  void forward_select(std::span<const SeqInput> seqs, KvPool& pool, Workspace& ws, std::span<const SelectRow> rows,
                      int64_t k, Selection* out) const;
  // forward_select in two halves, so the caller's host work overlaps the device's: launch_select
  // queues the step and its selection and returns (on a device backend) before they ran;
  // collect_selection waits for them and reads the selection. Between the two, nothing else may
  // use `ws` or the pool's blocks of these sequences; the sequences' lengths advance at launch.
  void launch_select(std::span<const SeqInput> seqs, KvPool& pool, Workspace& ws, std::span<const SelectRow> rows,
                     int64_t k) const;
  void collect_selection(Workspace& ws, Selection* out) const;
  // Row `row` of the penalized logits of the last forward_select (a sampler's fallback).
  void selected_logits_row(Workspace& ws, int64_t row, std::span<float> out) const;

  // Calls `tap` with the activations at every TapPoint during forwards, as pointers in the
  // backend's memory (device memory on CUDA: the tap runs backend ops on them, e.g.
  // Ops::accumulate_gram). The feed-forward then runs unfused so its intermediate exists, and
  // activations stay fp32. Null turns it off.
  void set_tap(Tap tap);

  // The forward one piece at a time, for work that goes layer by layer (sequential quantization:
  // calibration states kept by the caller, each layer run with its quantized weights to make the
  // next layer's input). Each call runs one sequence whose n tokens sit at positions 0..n-1; every
  // pointer is backend memory ([n, hidden] floats), and the results are ready on return.
  // x = the (scaled) embedding of ids.
  void embed(std::span<const int32_t> ids, float* x, Workspace& ws) const;
  // x += `part` of decoder layer `layer` run on x (attention is causal over the n tokens). `weights`
  // (backend memory, same shapes) stand in for the layer's own, e.g. a quantized candidate; null
  // runs the model's. `scratch` holds the layer's K/V (capacity >= n; its contents are
  // overwritten). Taps fire as in a forward.
  void run_sublayer(int64_t layer, Sublayer part, float* x, int64_t n, KvCache& scratch, Workspace& ws,
                    const LayerWeights* weights = nullptr) const;
  // y = the final norm of x: the LM head's input.
  void final_norm(const float* x, float* y, int64_t n) const;
  // logits [n, vocab] = the LM head (and soft-capping) on final-normed rows h.
  void lm_head(const float* h, float* logits, int64_t n) const;

  // Decode graphs on or off (on by default; LATHE_GRAPHS=0 in the environment turns them off).
  void set_graphs(bool on) { graphs_ = on; }
  // Bucketed decode steps: a token-selection decode step of S sequences runs as decode_bucket(S)
  // (1, 2, 4, then multiples of 8 up to 512), the rest padding sequences of one token over the
  // pool's scratch row whose selections the caller ignores, so a batch that shrinks and grows
  // replays a few recorded graphs instead of launching op by op and recording one per size. On
  // by default where graphs are (LATHE_DECODE_BUCKETS=0 turns it off); tests turn it on for host
  // backends to check the padding.
  void set_decode_buckets(bool on) { buckets_ = on; }
  static int64_t decode_bucket(int64_t seqs);
  // EXL2 layers from their packed bits (ops::Ops::matmul_exl2) or from the dequantized copy. On by
  // default (LATHE_EXL2_PACKED=0 turns it off). Host backends use the packed bits for steps of a
  // few tokens and the float16 copy above; device backends keep only the packed bits (uploaded at
  // construction, so there this cannot change later) and run every step from them.
  void set_packed_quantized(bool on) {
    if (ops_.host_memory()) packed_ = on;
  }

 private:
  struct Step;
  struct SelectRequest;
  void step(std::span<const SeqInput> seqs, KvPool& pool, Workspace& ws, Tensor* logits,
            const SelectRequest* select) const;
  void enqueue(const Step& st, KvPool& pool, Workspace& ws) const;
  void attention_block(int64_t layer, const LayerWeights& L, const Step& st, KvPool& pool, Workspace& ws) const;
  void ffn_block(int64_t layer, const LayerWeights& L, const Step& st, Workspace& ws) const;
  // One sequence at positions 0..n-1 (run_sublayer): workspace sized and inputs staged.
  Step sequence_step(int64_t n, const int32_t* ids, const KvPool* pool, Workspace& ws) const;
  void moe_block(int64_t layer, int64_t n, Workspace& ws) const;
  void upload_weights();

  const Model& model_;
  ops::Ops& ops_;
  const ModelWeights* w_ = nullptr;  // host weights, or device_weights_
  ModelWeights device_weights_;
  std::vector<ops::Buffer> owned_;
  std::deque<ops::Exl2View> device_exl2_;  // views of EXL2 layers in backend memory (stable addresses)
  // MoE on a device backend: per layer, a table of the experts' gate, up and down pointers in
  // backend memory ([3, experts]) for ops::Ops::moe_small_batch; empty when the experts do not
  // qualify (biases, mixed dtypes). moe_device_tokens_ is the largest step the backend has taken
  // there; only steps up to it are recorded as graphs (the host routing path cannot be).
  std::vector<const void* const*> moe_tables_;
  mutable int64_t moe_device_tokens_ = 0;
  RopeFrequencies rope_short_;  // frequencies for every length <= rope_static_length
  // cos/sin rows of rope_short_ for positions [0, rope_rows_), computed once and copied per step
  // (computing them per step cost ~5 ms of host time for a 2048-token prefill).
  void ensure_rope_rows(int64_t positions) const;
  // cos/sin rows ([count, rot / 2] each) for positions [first, first + count) of one sequence.
  void rope_rows(int64_t first, int64_t count, float* cos, float* sin) const;
  mutable std::mutex rope_mu_;
  mutable std::vector<float> rope_cos_, rope_sin_;
  mutable int64_t rope_rows_ = 0;
  bool graphs_ = true;
  bool buckets_ = false;  // see set_decode_buckets
  bool packed_ = false;  // see set_packed_quantized
  static constexpr int64_t kNoRelease = int64_t(1) << 60;
  int64_t release_window_ = kNoRelease;  // see release_window()
  Tap tap_;
  // The dtype shared by every projection weight of a dense model (bf16/f16; else F32). Where the
  // backend rounds GEMM inputs to it (ops::Ops::lowp_activations), the norms and attention hand
  // their outputs over already rounded and the fp32 copies are not written.
  DType lowp_dtype_ = DType::kF32;
};

}  // namespace lathe::model
