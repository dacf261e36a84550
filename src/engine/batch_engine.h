// Continuous batching on a model (issue: serving engine): many requests share one paged KV pool and
// one forward pass per step. engine::Scheduler plans each step over a cache::BlockPool (token
// budget, decodes first, chunked prefill, prefix-cache hits, preemption); this class runs the plan
// through model::Runner::forward_batch, samples each request with its own settings, and ends
// requests at EOS, a stop string (also split across tokens: engine::StopMatcher), their token
// limit or the context length, streaming each request's final text as it becomes safe to show.
// Sampling takes the backend's k best candidates (Runner::forward_select: penalties applied on the
// device, the whole row only when a draw reaches past them); a step with a request that asks for
// logprobs brings every row to the host instead. Works on any backend (tests use the CPU). The
// HTTP server sits above it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "cache/block_pool.h"
#include "engine/generator.h"
#include "engine/grammar/response_format.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "engine/stop_matcher.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace lathe::engine {

struct BatchRequest {
  std::vector<int32_t> prompt;
  int64_t max_new_tokens = 128;
  SamplerConfig sampler;
  std::vector<int32_t> eos_ids;  // empty: the model's
  bool ignore_eos = false;
  std::vector<std::string> stop;  // stop strings (need the engine's tokenizer; not in the text)
  int64_t logprobs = -1;          // -1: none; 0: the chosen token's; k: also the k likeliest (<= 20)
  // Log p of every prompt token after the first given the ones before it (OpenAI's echo with
  // logprobs): -1 none; 0: each token's; k: also the k likeliest. Such a request computes its whole
  // prompt (no prefix-cache hits: a cached position has no logits).
  int64_t prompt_logprobs = -1;
  uint64_t adapter = 0;           // keys prefix-cache blocks apart (LoRA adapters)
  // Grammar-constrained output (make_response_format): null for free text. The request's steps
  // sample from full logits rows; it ends with kStop once the document is complete.
  std::shared_ptr<const ResponseFormat> response_format;
};

// One position's log-probabilities: the token's and the likeliest tokens' (best first).
struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;
};

// What one step produced for a request: its new token (if it sampled one) and whether it ended.
struct BatchEvent {
  RequestId id = 0;
  int32_t token = -1;  // -1: none this step (a prefill chunk, or cancelled)
  std::string text;    // text that became final with this token (with a tokenizer)
  bool finished = false;
  FinishReason reason = FinishReason::kLength;
  float logprob = 0;   // log p(token) under the model's distribution (the raw logits), if asked
  std::vector<std::pair<int32_t, float>> top;  // the likeliest tokens and their log p, best first
  // With the request's first token, when it asked for prompt_logprobs: prompt tokens 1..n-1.
  std::vector<TokenLogprob> prompt_logprobs;
};

struct BatchEngineOptions {
  int64_t num_blocks = 256;  // KV blocks of scheduler.block_size positions each
  SchedulerConfig scheduler;
};

class BatchEngine {
 public:
  // `tokenizer` may be null: then events carry no text and stop strings are refused.
  BatchEngine(const model::Runner& runner, const BatchEngineOptions& options, const tok::Tokenizer* tokenizer = nullptr);

  // Throws kInvalidArgument / kOutOfRange for a request that can never run (empty prompt, too long
  // for the model's context or the cache).
  RequestId add(BatchRequest request);
  // n completions of one prompt (OpenAI's n): the first computes the prompt, the others follow it
  // and share its blocks; each samples with seed + i.
  std::vector<RequestId> add(const BatchRequest& request, int64_t n);
  // Ends a request at once; its blocks are free when this returns. False when unknown or finished.
  bool cancel(RequestId id);
  // One forward pass over the scheduler's plan; events in plan order.
  std::vector<BatchEvent> step();
  bool idle() const { return scheduler_.num_running() + scheduler_.num_waiting() == 0; }

  // The request's generated tokens so far (kept after it finishes until forget()).
  std::vector<int32_t> generated(RequestId id) const;
  int64_t cached_tokens(RequestId id) const { return scheduler_.cached_tokens(id); }
  bool forget(RequestId id);
  const cache::BlockPool& blocks() const { return pool_; }
  // Where the steps' time went: wall seconds of step() calls, and the part of it spent blocked on
  // the device (ops::Ops::device_wait_seconds); the rest is host work (planning, launching,
  // sampling, detokenizing), during which the device may sit idle.
  struct StepClock {
    int64_t steps = 0;
    double seconds = 0, device_wait_seconds = 0;
    double host_seconds() const { return seconds - device_wait_seconds; }
  };
  const StepClock& clock() const { return clock_; }
  // The same over decode-only steps (one token for every request in the plan): what a recorded
  // graph replays, so their host share is the per-token overhead of the engine.
  const StepClock& decode_clock() const { return decode_clock_; }
  const Scheduler& scheduler() const { return scheduler_; }

 private:
  struct Live {
    Sampler sampler;
    std::vector<int32_t> eos;
    StopMatcher stops;
    std::optional<tok::StreamDecoder> decoder;
    int64_t logprobs = -1;
    std::optional<TokenConstraint> grammar;
    int64_t prompt_logprobs = -1;  // -1 once they were handed out (or never asked)
    std::vector<TokenLogprob> prompt_lp;  // collected as the prompt's chunks run
  };
  void collect_prompt_logprobs(Live& L, const StepItem& item, const float* rows);
  RequestId add_after(BatchRequest request, RequestId after);
  std::string text_of(Live& L, int32_t token);  // the token's final text through the stop matcher
  const model::Runner& runner_;
  const tok::Tokenizer* tokenizer_;
  cache::BlockPool pool_;
  model::KvPool kv_;
  model::Workspace ws_;
  Scheduler scheduler_;
  std::unordered_map<RequestId, Live> live_;
  StepClock clock_, decode_clock_;
};

}  // namespace lathe::engine
