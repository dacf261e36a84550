#include "engine/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace lathe::engine {

int64_t StepPlan::tokens() const {
  int64_t n = 0;
  for (const StepItem& i : items) n += i.count;
  return n;
}

Scheduler::Scheduler(cache::BlockPool& pool, const SchedulerConfig& config) : pool_(pool), config_(config) {
  if (config.block_size < 1) fail(ErrorKind::kInvalidArgument, "scheduler: block size {} must be positive", config.block_size);
  if (config.token_budget < 1) fail(ErrorKind::kInvalidArgument, "scheduler: token budget {} must be positive", config.token_budget);
  if (config.max_running < 1) fail(ErrorKind::kInvalidArgument, "scheduler: max running {} must be positive", config.max_running);
}

Scheduler::Request& Scheduler::get(RequestId id) {
  const auto it = requests_.find(id);
  if (it == requests_.end()) fail(ErrorKind::kNotFound, "no request {}", id);
  return it->second;
}
const Scheduler::Request& Scheduler::get(RequestId id) const { return const_cast<Scheduler*>(this)->get(id); }

RequestId Scheduler::add(std::vector<int32_t> prompt, int64_t max_new_tokens, uint64_t adapter, RequestId after,
                         bool reuse_prefix) {
  if (prompt.empty()) fail(ErrorKind::kInvalidArgument, "a request needs at least one prompt token");
  if (max_new_tokens < 1) fail(ErrorKind::kInvalidArgument, "max_new_tokens {} must be at least 1", max_new_tokens);
  // The last generated token is never computed (nothing is sampled from it).
  const int64_t positions = int64_t(prompt.size()) + max_new_tokens - 1;
  int64_t need = (positions + config_.block_size - 1) / config_.block_size;
  if (config_.release_window > 0)  // passed blocks go back: the window and one step's chunk at a time
    need = std::min(need, (config_.release_window + config_.token_budget) / config_.block_size + 2);
  if (need > pool_.num_blocks())
    fail(ErrorKind::kOutOfRange,
         "the request needs {} tokens of KV cache ({} prompt + {} to generate) and the cache holds {}; shorten the "
         "prompt or max_tokens",
         positions, prompt.size(), max_new_tokens, pool_.num_blocks() * config_.block_size);
  Request r;
  r.id = next_id_++;
  r.prompt = int64_t(prompt.size());
  r.tokens = std::move(prompt);
  r.max_new = max_new_tokens;
  r.adapter = adapter;
  r.after = after;
  r.reuse_prefix = reuse_prefix;
  const RequestId id = r.id;
  requests_.emplace(id, std::move(r));
  waiting_.push_back(id);
  return id;
}

bool Scheduler::reserve(Request& r, int64_t positions) {
  const int64_t need = (positions + config_.block_size - 1) / config_.block_size - int64_t(r.blocks.size());
  if (need <= 0) return true;
  auto fresh = pool_.allocate(need);
  if (!fresh) return false;
  r.blocks.insert(r.blocks.end(), fresh->begin(), fresh->end());
  return true;
}

void Scheduler::drop_blocks(Request& r) {
  for (size_t i = r.blocks.size(); i-- > 0;)  // deepest first
    if (r.blocks[i] >= 0) pool_.release(r.blocks[i]);
  r.blocks.clear();
  r.released = 0;
  r.computed = 0;
  r.keyed = 0;
  r.last_key = cache::kRootHash;
}

void Scheduler::admit_prefix(Request& r) {
  r.cached = 0;
  if (!config_.prefix_caching || !r.reuse_prefix || !r.blocks.empty()) return;
  // Keys of the full blocks before the last token: that one is always computed (its logits sample).
  const auto keys = cache::block_hashes(std::span(r.tokens).first(r.tokens.size() - 1), config_.block_size, r.adapter);
  r.blocks = pool_.match(keys);
  r.keyed = int64_t(r.blocks.size());
  if (r.keyed) r.last_key = keys[size_t(r.keyed - 1)];
  r.computed = r.cached = r.keyed * config_.block_size;
}

void Scheduler::record_keys(Request& r) {
  if (!config_.prefix_caching) return;
  const int64_t bs = config_.block_size;
  for (; r.keyed < r.computed / bs; ++r.keyed) {
    r.last_key = cache::hash_block(r.last_key, std::span(r.tokens).subspan(size_t(r.keyed * bs), size_t(bs)), r.adapter);
    pool_.commit(r.blocks[size_t(r.keyed)], r.last_key);  // false: another block holds it; ours stays private
  }
}

bool Scheduler::held(const Request& r) const {
  if (!r.after) return false;
  const auto it = requests_.find(r.after);
  if (it == requests_.end()) return false;
  const Request& lead = it->second;
  return lead.state != RequestState::kFinished && lead.computed < lead.prompt;
}

void Scheduler::release_passed(Request& r) {
  const int64_t w = config_.release_window, bs = config_.block_size;
  if (w <= 0) return;
  // Block i is passed when its last position precedes the window of the next position computed.
  for (; r.released < int64_t(r.blocks.size()) && (r.released + 1) * bs <= r.computed - w + 1; ++r.released) {
    pool_.release(r.blocks[size_t(r.released)]);
    r.blocks[size_t(r.released)] = -1;
  }
}

void Scheduler::preempt(RequestId id) {
  Request& r = get(id);
  drop_blocks(r);
  r.state = RequestState::kWaiting;
  running_.erase(std::find(running_.begin(), running_.end(), id));
  waiting_.push_front(id);
  ++preemptions_;
}

StepPlan Scheduler::plan() {
  StepPlan p;
  int64_t budget = config_.token_budget;
  // 1. Running requests, oldest first; the newest gives way when blocks run out.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Request& r = get(running_[i]);
    const int64_t want = std::min<int64_t>(int64_t(r.tokens.size()) - r.computed, budget);
    if (want <= 0) {
      ++i;
      continue;
    }
    if (!reserve(r, r.computed + want)) {
      const RequestId victim = running_.back();
      preempt(victim);
      p.preempted.push_back(victim);
      continue;  // retry r (or, if r was the victim, the loop ends)
    }
    p.items.push_back({r.id, r.computed, want, r.computed + want == int64_t(r.tokens.size())});
    budget -= want;
    ++i;
  }
  // 2. Waiting requests in order, while budget, blocks and room last (none after a preemption);
  // a request that follows another (n > 1) waits until that one's prompt is in the cache.
  for (size_t w = 0; w < waiting_.size() && budget > 0 && int64_t(running_.size()) < config_.max_running &&
                     p.preempted.empty();) {
    Request& r = get(waiting_[w]);
    if (held(r)) {
      ++w;
      continue;
    }
    admit_prefix(r);
    const int64_t want = std::min<int64_t>(int64_t(r.tokens.size()) - r.computed, budget);
    if (!reserve(r, r.computed + want)) {
      drop_blocks(r);  // its prefix hits too: it waits whole
      r.cached = 0;
      break;
    }
    waiting_.erase(waiting_.begin() + long(w));
    r.state = RequestState::kRunning;
    running_.push_back(r.id);
    p.items.push_back({r.id, r.computed, want, r.computed + want == int64_t(r.tokens.size())});
    budget -= want;
  }
  return p;
}

void Scheduler::complete(const StepPlan& plan, std::span<const int32_t> sampled) {
  if (sampled.size() < plan.items.size())
    fail(ErrorKind::kInternal, "scheduler: {} sampled tokens for {} plan items", sampled.size(), plan.items.size());
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const StepItem& it = plan.items[i];
    const auto found = requests_.find(it.id);
    if (found == requests_.end() || found->second.state != RequestState::kRunning) continue;  // finished meanwhile
    Request& r = found->second;
    if (it.start != r.computed)
      fail(ErrorKind::kInternal, "scheduler: request {} computed {} but the plan started at {}", r.id, r.computed, it.start);
    r.computed = it.start + it.count;
    record_keys(r);
    release_passed(r);
    if (!it.samples) continue;
    r.tokens.push_back(sampled[i]);
    if (int64_t(r.tokens.size()) - r.prompt >= r.max_new) finish(r.id);
  }
}

bool Scheduler::finish(RequestId id) {
  const auto it = requests_.find(id);
  if (it == requests_.end() || it->second.state == RequestState::kFinished) return false;
  Request& r = it->second;
  if (r.state == RequestState::kRunning) running_.erase(std::find(running_.begin(), running_.end(), id));
  else waiting_.erase(std::find(waiting_.begin(), waiting_.end(), id));
  const int64_t keep = r.computed;
  drop_blocks(r);
  r.computed = keep;
  r.state = RequestState::kFinished;
  return true;
}

bool Scheduler::forget(RequestId id) {
  const auto it = requests_.find(id);
  if (it == requests_.end() || it->second.state != RequestState::kFinished) return false;
  requests_.erase(it);
  return true;
}

RequestState Scheduler::state(RequestId id) const { return get(id).state; }
std::span<const int32_t> Scheduler::tokens(RequestId id) const { return get(id).tokens; }
int64_t Scheduler::prompt_length(RequestId id) const { return get(id).prompt; }
int64_t Scheduler::computed(RequestId id) const { return get(id).computed; }
int64_t Scheduler::cached_tokens(RequestId id) const { return get(id).cached; }
const std::vector<cache::BlockId>& Scheduler::blocks(RequestId id) const { return get(id).blocks; }

}  // namespace lathe::engine
