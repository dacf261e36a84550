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
//
// Overlap (on by default on device backends): once a step's tokens are drawn and the requests that
// ended at EOS or their limit are off, step() launches the next step before it turns the tokens
// into text and matches stop strings, and returns while that step runs, so the caller's own work
// on the events (streaming them to clients) hides behind the device too. A request that a stop
// string ends has one more token computed that is then dropped, which changes no request's
// tokens. A step that needs whole logits rows (logprobs, grammars, logit bias, prompt logprobs)
// runs without overlap.
#pragma once

#include <chrono>
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
  // Launch step k+1 before step k's text work (see above). Unset: on for device backends unless
  // LATHE_ENGINE_OVERLAP=0; host backends compute in launch, where overlap gains nothing.
  std::optional<bool> overlap;
};

class BatchEngine {
 public:
  // `tokenizer` may be null: then events carry no text and stop strings are refused.
  BatchEngine(const model::Runner& runner, const BatchEngineOptions& options, const tok::Tokenizer* tokenizer = nullptr);
  ~BatchEngine();
  BatchEngine(const BatchEngine&) = delete;
  BatchEngine& operator=(const BatchEngine&) = delete;

  // Throws kInvalidArgument / kOutOfRange for a request that can never run (empty prompt, too long
  // for the model's context or the cache).
  RequestId add(BatchRequest request);
  // n completions of one prompt (OpenAI's n): the first computes the prompt, the others follow it
  // and share its blocks; each samples with seed + i.
  std::vector<RequestId> add(const BatchRequest& request, int64_t n);
  // Ends a request at once; its blocks are free when this returns. False when unknown or finished.
  bool cancel(RequestId id);
  // One forward pass over the scheduler's plan; events in plan order. With overlap, the events
  // are the last launched step's, and the next step is running when this returns.
  std::vector<BatchEvent> step();
  // No request left and no step in flight (one launched for requests that then ended still needs
  // a step() to be collected).
  bool idle() const { return scheduler_.num_running() + scheduler_.num_waiting() == 0 && !in_flight_ && !held_; }
  bool overlaps() const { return overlap_; }

  // The request's generated tokens so far (kept after it finishes until forget()).
  std::vector<int32_t> generated(RequestId id) const;
  int64_t cached_tokens(RequestId id) const { return scheduler_.cached_tokens(id); }
  bool forget(RequestId id);
  const cache::BlockPool& blocks() const { return pool_; }
  // Where the steps' time went. `seconds`: the time from one step's results to the next's, over
  // steps that followed another without a pause (the engine never idle between them);
  // `host_seconds`: the part of it when the device had no step queued, from the previous step's
  // results until this step was launched (sampling, planning, staging; without overlap also the
  // text work and the caller's), taken as all of it when the device was done before the results
  // were asked for (then how long it idled is unknown). The rest is the device's.
  struct StepClock {
    int64_t steps = 0;  // every step, timed or not
    double seconds = 0, host_seconds = 0;
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
  using Clock = std::chrono::steady_clock;
  // A launched step whose selection has not been read yet.
  struct InFlight {
    StepPlan plan;
    bool decode_only = false;
    Clock::time_point launched;
    std::optional<Clock::time_point> after;  // the previous step's results, if it ran right before
  };
  bool all_rows(const Live& L, const StepItem& it) const;  // every position's logits (prompt logprobs)
  bool needs_rows(const StepPlan& plan) const;
  void inputs(const StepPlan& plan, std::vector<model::SeqKv>& kvs, std::vector<model::SeqInput>& seqs) const;
  void launch(StepPlan plan);
  std::vector<BatchEvent> collect();
  std::vector<BatchEvent> run_rows(const StepPlan& plan);  // a whole-rows step, launch to results
  void end_early(std::vector<BatchEvent>& events);          // EOS and token limits (before the next plan)
  void finish_text(std::vector<BatchEvent>& events);        // text, stop strings, grammars
  void account(bool decode_only, std::optional<Clock::time_point> after, Clock::time_point launched,
               double wait, Clock::time_point ready);
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
  bool overlap_ = false;
  std::optional<InFlight> in_flight_;
  std::optional<StepPlan> held_;  // planned after a step but needing whole rows: the next step() runs it
  std::optional<Clock::time_point> ready_;  // the last step's results were in (while work remained)
};

}  // namespace lathe::engine
