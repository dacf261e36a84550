// Continuous batching's planning half (issue: serving engine): which requests compute which tokens
// in the next forward pass, over a cache::BlockPool, after vLLM V1's scheduler
// (../shared/docs/prior-art/serving.md 2.1). No model here: the caller runs the step the plan
// describes (model::Runner::forward_batch over the requests' blocks), samples, and reports back.
//
// Each step fills a token budget: running requests first, oldest first (a decode is one token, a
// partly prefilled prompt its next chunk), then waiting requests in arrival order, each starting
// after the longest run of its full blocks already in the prefix cache (at least its last token is
// always computed, so there are logits to sample from). A prompt longer than what is left of the
// budget is prefilled in chunks over several steps (chunked prefill). When a running request needs
// a block and none is free, the newest running request is preempted: its blocks go back to the
// pool (keeping their prefix keys, so it usually finds them again) and it waits at the front of
// the queue to be recomputed; no new request is admitted in a step that preempted. A block's prefix
// key is recorded as soon as the block is full, so requests running together share prefixes too.
#pragma once

#include <cstdint>
#include <deque>
#include <span>
#include <unordered_map>
#include <vector>

#include "cache/block_pool.h"

namespace lathe::engine {

using RequestId = int64_t;

struct SchedulerConfig {
  int64_t block_size = 16;     // tokens per KV block (the pool's)
  int64_t token_budget = 2048; // tokens computed per step, decodes and prefill chunks together
  int64_t max_running = 256;   // requests in one step
  bool prefix_caching = true;
  // Sliding-window models (model::Runner::release_window, 0: none): blocks every layer's window has
  // passed go back to the pool as the request advances (their table entries become
  // model::kReleasedBlock, -1).
  int64_t release_window = 0;
};

enum class RequestState { kWaiting, kRunning, kFinished };

// Request `id` computes tokens [start, start + count) of its sequence (prompt, then what it has
// generated) this step; the K/V of [0, start) are in its blocks already. `samples`: the chunk ends at
// the sequence's last token, so a new token is drawn from its logits.
struct StepItem {
  RequestId id = 0;
  int64_t start = 0;
  int64_t count = 0;
  bool samples = false;
};

struct StepPlan {
  std::vector<StepItem> items;
  std::vector<RequestId> preempted;  // lost their K/V in this step's planning
  int64_t tokens() const;
  bool empty() const { return items.empty(); }
};

class Scheduler {
 public:
  Scheduler(cache::BlockPool& pool, const SchedulerConfig& config);

  // A new request (prompt of at least one token) that may generate up to max_new_tokens more;
  // `adapter` keys its prefix blocks apart from other adapters'. With `after` (another request with
  // the same prompt: n > 1 completions), it is admitted only once that one's prompt is in the cache,
  // so it shares those blocks instead of computing them again. Without `reuse_prefix` it computes
  // its whole prompt even where the cache holds it (its caller wants every prompt position's
  // logits: prompt logprobs). Throws kOutOfRange when prompt and output could never fit the pool at once.
  RequestId add(std::vector<int32_t> prompt, int64_t max_new_tokens, uint64_t adapter = 0, RequestId after = 0,
                bool reuse_prefix = true);
  StepPlan plan();
  // After the step ran: sampled[i] is the token drawn for plan.items[i] when it samples (others are
  // ignored). A request that reaches its token limit finishes. Items of requests cancelled or
  // finished since the plan are skipped.
  void complete(const StepPlan& plan, std::span<const int32_t> sampled);
  // Ends a request now (EOS, a stop string, a cancelled or disconnected client): its blocks go back
  // to the pool within this call. False when the id is unknown or already finished.
  bool finish(RequestId id);
  // Drops a finished request's record (its tokens); false when unknown or not finished.
  bool forget(RequestId id);

  RequestState state(RequestId id) const;
  std::span<const int32_t> tokens(RequestId id) const;  // prompt, then generated tokens
  int64_t prompt_length(RequestId id) const;
  int64_t computed(RequestId id) const;                 // positions whose K/V are in its blocks
  int64_t cached_tokens(RequestId id) const;            // positions taken from the prefix cache at admission
  const std::vector<cache::BlockId>& blocks(RequestId id) const;
  size_t num_waiting() const { return waiting_.size(); }
  size_t num_running() const { return running_.size(); }
  int64_t preemptions() const { return preemptions_; }

 private:
  struct Request {
    RequestId id = 0;
    std::vector<int32_t> tokens;
    int64_t prompt = 0, max_new = 0, computed = 0, cached = 0;
    uint64_t adapter = 0;
    RequestId after = 0;  // admitted once this request's prompt is computed (0: none)
    bool reuse_prefix = true;  // false: takes no prefix-cache hits (computes every position)
    std::vector<cache::BlockId> blocks;
    int64_t keyed = 0;                           // leading blocks whose prefix keys are recorded
    int64_t released = 0;                        // leading blocks given back (sliding window)
    cache::BlockHash last_key = cache::kRootHash;  // the key of block keyed - 1
    RequestState state = RequestState::kWaiting;
  };
  Request& get(RequestId id);
  const Request& get(RequestId id) const;
  bool reserve(Request& r, int64_t positions);  // blocks to hold [0, positions); false: none taken
  void drop_blocks(Request& r);                 // back to the pool, deepest first
  void admit_prefix(Request& r);                // prefix-cache hits of a request holding no blocks
  void record_keys(Request& r);                 // keys of the blocks filled up to r.computed
  void release_passed(Request& r);              // blocks the sliding window has passed
  void preempt(RequestId id);
  bool held(const Request& r) const;  // waits for its `after` request's prompt

  cache::BlockPool& pool_;
  SchedulerConfig config_;
  std::unordered_map<RequestId, Request> requests_;
  std::deque<RequestId> waiting_;
  std::vector<RequestId> running_;  // admission order
  RequestId next_id_ = 1;
  int64_t preemptions_ = 0;
};

}  // namespace lathe::engine
