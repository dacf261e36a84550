#include "engine/batch_engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <string_view>

#include "core/error.h"
#include "core/tensor.h"

namespace lathe::engine {

namespace {
// log p of `token` and of the k likeliest tokens (ties: lower id first) under softmax(logits).
void log_probs(std::span<const float> logits, int32_t token, int64_t k, float* logprob,
               std::vector<std::pair<int32_t, float>>* top) {
  const float mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float v : logits) sum += std::exp(double(v) - double(mx));
  const double lse = double(mx) + std::log(sum);
  *logprob = float(double(logits[size_t(token)]) - lse);
  if (k <= 0) return;
  std::vector<int32_t> idx(logits.size());
  std::iota(idx.begin(), idx.end(), 0);
  k = std::min<int64_t>(k, int64_t(idx.size()));
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
    return logits[size_t(a)] != logits[size_t(b)] ? logits[size_t(a)] > logits[size_t(b)] : a < b;
  });
  for (int64_t j = 0; j < k; ++j) top->emplace_back(idx[size_t(j)], float(double(logits[size_t(idx[size_t(j)])]) - lse));
}
// The model's sliding window (every layer windowed) lets passed blocks go back to the pool.
SchedulerConfig with_window(SchedulerConfig c, const model::Runner& runner) {
  if (c.release_window == 0) c.release_window = runner.release_window();
  return c;
}
}  // namespace

BatchEngine::BatchEngine(const model::Runner& runner, const BatchEngineOptions& options, const tok::Tokenizer* tokenizer)
    : runner_(runner),
      tokenizer_(tokenizer),
      pool_(options.num_blocks),
      kv_(runner.config(), options.num_blocks, options.scheduler.block_size, runner.ops()),
      ws_(runner.ops()),
      scheduler_(pool_, with_window(options.scheduler, runner)) {
  if (options.overlap) {
    overlap_ = *options.overlap;
  } else {
    const char* env = std::getenv("LATHE_ENGINE_OVERLAP");
    overlap_ = !runner.ops().host_memory() && !(env && std::string_view(env) == "0");
  }
}

RequestId BatchEngine::add(BatchRequest r) { return add_after(std::move(r), 0); }

std::vector<RequestId> BatchEngine::add(const BatchRequest& request, int64_t n) {
  if (n < 1 || n > 128) fail(ErrorKind::kInvalidArgument, "n = {} completions; choose 1 to 128", n);
  std::vector<RequestId> ids{add(request)};
  for (int64_t i = 1; i < n; ++i) {
    BatchRequest r = request;
    r.prompt_logprobs = -1;  // the first completion reports them; the others share its prompt blocks
    r.sampler.seed = request.sampler.seed + uint64_t(i);
    try {
      ids.push_back(add_after(std::move(r), ids.front()));
    } catch (...) {
      for (RequestId id : ids) cancel(id);
      throw;
    }
  }
  return ids;
}

RequestId BatchEngine::add_after(BatchRequest r, RequestId after) {
  const model::ModelConfig& c = runner_.config();
  if (r.prompt.empty()) fail(ErrorKind::kInvalidArgument, "the prompt is empty");
  for (int32_t id : r.prompt)
    if (id < 0 || id >= c.vocab_size)
      fail(ErrorKind::kInvalidArgument, "token id {} is outside the vocabulary (0..{})", id, c.vocab_size - 1);
  if (c.max_position_embeddings > 0) {
    if (int64_t(r.prompt.size()) >= c.max_position_embeddings)
      fail(ErrorKind::kOutOfRange, "the prompt has {} tokens; the model's context is {} (leave room for the reply)",
           r.prompt.size(), c.max_position_embeddings);
    r.max_new_tokens = std::min(r.max_new_tokens, c.max_position_embeddings - int64_t(r.prompt.size()));
  }
  if (!r.stop.empty() && !tokenizer_)
    fail(ErrorKind::kInvalidArgument, "stop strings need the model's tokenizer (tokenizer.json)");
  for (const std::string& s : r.stop)
    if (s.empty()) fail(ErrorKind::kInvalidArgument, "a stop string is empty");
  if (r.logprobs < -1 || r.logprobs > 20) fail(ErrorKind::kInvalidArgument, "top logprobs {} is outside 0..20", r.logprobs);
  if (r.prompt_logprobs < -1 || r.prompt_logprobs > 20)
    fail(ErrorKind::kInvalidArgument, "top prompt logprobs {} is outside 0..20", r.prompt_logprobs);
  const RequestId id = scheduler_.add(std::move(r.prompt), r.max_new_tokens, r.adapter, after, r.prompt_logprobs < 0);
  Live L{Sampler(r.sampler), r.ignore_eos ? std::vector<int32_t>{} : r.eos_ids.empty() ? c.eos_token_ids : r.eos_ids,
         StopMatcher(r.stop), std::nullopt, r.logprobs, std::nullopt, r.prompt_logprobs, {}};
  if (tokenizer_) L.decoder.emplace(*tokenizer_, /*skip_special=*/true);
  if (r.response_format) L.grammar.emplace(r.response_format);
  live_.emplace(id, std::move(L));
  return id;
}

// rows: the item's logits, one row per computed position (row j predicts position start + j + 1).
// Positions already collected (a preempted request computes its prompt again) are skipped.
void BatchEngine::collect_prompt_logprobs(Live& L, const StepItem& item, const float* rows) {
  const auto tokens = scheduler_.tokens(item.id);
  const int64_t prompt = scheduler_.prompt_length(item.id), vocab = runner_.config().vocab_size;
  for (int64_t j = 0; j < item.count; ++j) {
    const int64_t next = item.start + j + 1;  // the prompt token this row predicts
    if (next >= prompt || next <= int64_t(L.prompt_lp.size())) continue;
    TokenLogprob t;
    t.token = tokens[size_t(next)];
    log_probs(std::span(rows + j * vocab, size_t(vocab)), t.token, L.prompt_logprobs, &t.logprob, &t.top);
    L.prompt_lp.push_back(std::move(t));
  }
}

bool BatchEngine::cancel(RequestId id) {
  live_.erase(id);
  return scheduler_.finish(id);
}

BatchEngine::~BatchEngine() {
  // A launched step still writes into the pool and workspace this object owns.
  if (in_flight_) {
    try {
      runner_.ops().synchronize();
    } catch (...) {
    }
  }
}

// A prompt chunk whose request wants prompt logprobs brings every position's logits.
bool BatchEngine::all_rows(const Live& L, const StepItem& it) const {
  return L.prompt_logprobs >= 0 && it.start + 1 < scheduler_.prompt_length(it.id);
}

// Whether a step must bring whole logits rows to the host (see step()): log-probabilities and
// grammar masks need every entry, and a logit bias is applied to the whole row on the host.
bool BatchEngine::needs_rows(const StepPlan& plan) const {
  for (const StepItem& it : plan.items) {
    const Live& L = live_.at(it.id);
    if (it.samples && (L.logprobs >= 0 || L.grammar || !L.sampler.config().logit_bias.empty())) return true;
    if (all_rows(L, it)) return true;
  }
  return false;
}

void BatchEngine::inputs(const StepPlan& plan, std::vector<model::SeqKv>& kvs, std::vector<model::SeqInput>& seqs) const {
  kvs.assign(plan.items.size(), {});
  seqs.clear();
  seqs.reserve(plan.items.size());
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const StepItem& it = plan.items[i];
    kvs[i].blocks = scheduler_.blocks(it.id);
    kvs[i].length = it.start;
    const bool all = all_rows(live_.at(it.id), it);
    seqs.push_back({scheduler_.tokens(it.id).subspan(size_t(it.start), size_t(it.count)), &kvs[i],
                    all ? model::LogitsFor::kAll : it.samples ? model::LogitsFor::kLast : model::LogitsFor::kNone});
  }
}

namespace {
bool is_decode_only(const StepPlan& plan) {
  return std::all_of(plan.items.begin(), plan.items.end(), [](const StepItem& it) { return it.count == 1; });
}
// A wait shorter than this found the device already done: how long it idled is unknown.
constexpr double kRealWait = 50e-6;
}  // namespace

void BatchEngine::account(bool decode_only, std::optional<Clock::time_point> after, Clock::time_point launched,
                          double wait, Clock::time_point ready) {
  for (StepClock* c : {&clock_, decode_only ? &decode_clock_ : nullptr}) {
    if (!c) continue;
    ++c->steps;
    if (!after) continue;
    const double period = std::chrono::duration<double>(ready - *after).count();
    const double device = wait >= kRealWait ? std::chrono::duration<double>(ready - launched).count() : 0.0;
    c->seconds += period;
    c->host_seconds += std::max(0.0, period - device);
  }
}

// Penalties and the best candidates where the logits are (model::Runner::launch_select): only k
// values a row come back, the whole row only when a sampler's draw reaches past them.
void BatchEngine::launch(StepPlan plan) {
  const int64_t vocab = runner_.config().vocab_size;
  std::vector<model::SeqKv> kvs;
  std::vector<model::SeqInput> seqs;
  inputs(plan, kvs, seqs);
  std::vector<model::SelectRow> rows;
  int64_t k = 1;
  for (const StepItem& it : plan.items) {
    if (!it.samples) continue;
    Live& L = live_.at(it.id);
    const SamplerConfig& sc = L.sampler.config();
    model::SelectRow r;
    r.temperature = sc.temperature;
    r.repetition = sc.repetition_penalty;
    r.presence = sc.presence_penalty;
    r.frequency = sc.frequency_penalty;
    for (auto [id, count] : L.sampler.penalty_counts(scheduler_.tokens(it.id)))
      if (id < vocab) r.penalized.push_back({id, count});
    rows.push_back(std::move(r));
    k = std::max(k, L.sampler.candidates_wanted(vocab));
  }
  runner_.launch_select(seqs, kv_, ws_, rows, k);
  const bool decode_only = is_decode_only(plan);
  in_flight_ = InFlight{std::move(plan), decode_only, Clock::now(), ready_};
}

// Waits for the launched step and draws its tokens. Requests that ended since the launch (a
// stop string, a cancel) have their rows skipped: their extra token is dropped.
std::vector<BatchEvent> BatchEngine::collect() {
  InFlight f = std::move(*in_flight_);
  in_flight_.reset();
  const double w0 = runner_.ops().device_wait_seconds();
  model::Selection sel;
  runner_.collect_selection(ws_, &sel);
  const Clock::time_point ready = Clock::now();
  account(f.decode_only, f.after, f.launched, runner_.ops().device_wait_seconds() - w0, ready);
  ready_ = ready;

  const int64_t vocab = runner_.config().vocab_size;
  std::vector<int32_t> sampled(f.plan.items.size(), -1);
  std::vector<BatchEvent> events;
  std::vector<float> full;
  int64_t row = 0;
  for (size_t i = 0; i < f.plan.items.size(); ++i) {
    if (!f.plan.items[i].samples) continue;
    const int64_t r = row++;
    const auto live = live_.find(f.plan.items[i].id);
    if (live == live_.end()) continue;
    Live& L = live->second;
    const size_t at = size_t(r * sel.k);
    int32_t t = L.sampler.choose(std::span(sel.ids).subspan(at, size_t(sel.k)), std::span(sel.values).subspan(at, size_t(sel.k)),
                                 sel.sums[size_t(r)], vocab);
    if (t < 0) {
      full.resize(size_t(vocab));
      runner_.selected_logits_row(ws_, r, full);
      t = L.sampler.choose_full(full);
    }
    sampled[i] = t;
    events.push_back(BatchEvent{f.plan.items[i].id, t, {}, false, FinishReason::kLength});
  }
  scheduler_.complete(f.plan, sampled);
  end_early(events);
  return events;
}

// The whole logits rows come to the host (log-probabilities and grammar masks need every entry).
std::vector<BatchEvent> BatchEngine::run_rows(const StepPlan& plan) {
  const std::optional<Clock::time_point> after = ready_;
  const double w0 = runner_.ops().device_wait_seconds();
  const int64_t vocab = runner_.config().vocab_size;
  std::vector<model::SeqKv> kvs;
  std::vector<model::SeqInput> seqs;
  inputs(plan, kvs, seqs);
  Tensor logits;
  runner_.forward_batch(seqs, kv_, ws_, &logits);
  const Clock::time_point ready = Clock::now();
  // (no launch time to split by: a wait counts the step as the device's from its start)
  account(is_decode_only(plan), after, after.value_or(ready), runner_.ops().device_wait_seconds() - w0, ready);
  ready_ = ready;

  std::vector<int32_t> sampled(plan.items.size(), -1);
  std::vector<BatchEvent> events;
  int64_t row = 0;
  for (size_t i = 0; i < plan.items.size(); ++i) {
    Live& L = live_.at(plan.items[i].id);
    if (seqs[i].logits == model::LogitsFor::kAll) {
      collect_prompt_logprobs(L, plan.items[i], logits.as<float>() + row * vocab);
      row += plan.items[i].count - 1;  // the last row is the sampling row (if it samples)
      if (!plan.items[i].samples) ++row;
    }
    if (!plan.items[i].samples) continue;
    const std::span<const float> l(logits.as<float>() + row++ * vocab, size_t(vocab));
    const auto history = scheduler_.tokens(plan.items[i].id);
    sampled[i] = L.grammar ? L.grammar->sample(L.sampler, l, history, L.eos) : L.sampler.sample(l, history);
    BatchEvent e{plan.items[i].id, sampled[i], {}, false, FinishReason::kLength};
    if (L.logprobs >= 0) log_probs(l, sampled[i], L.logprobs, &e.logprob, &e.top);
    if (L.prompt_logprobs >= 0) {
      e.prompt_logprobs = std::move(L.prompt_lp);
      L.prompt_logprobs = -1;  // handed out once, even if a preemption recomputes the prompt
    }
    events.push_back(std::move(e));
  }
  scheduler_.complete(plan, sampled);
  end_early(events);
  return events;
}

// What ends a request without its text: EOS, and the token or context limit (the scheduler
// finished it in complete()). These are off before the next step is planned.
void BatchEngine::end_early(std::vector<BatchEvent>& events) {
  for (BatchEvent& e : events) {
    const Live& L = live_.at(e.id);
    if (std::find(L.eos.begin(), L.eos.end(), e.token) != L.eos.end()) {
      scheduler_.finish(e.id);
      e.finished = true;
      e.reason = FinishReason::kEos;
    } else if (scheduler_.state(e.id) == RequestState::kFinished) {
      e.finished = true;
      const int64_t ctx = runner_.config().max_position_embeddings;
      e.reason = ctx > 0 && int64_t(scheduler_.tokens(e.id).size()) >= ctx ? FinishReason::kContext : FinishReason::kLength;
    }
  }
}

void BatchEngine::finish_text(std::vector<BatchEvent>& events) {
  for (BatchEvent& e : events) {
    Live& L = live_.at(e.id);
    const bool eos = e.finished && e.reason == FinishReason::kEos;
    if (!eos) e.text = text_of(L, e.token);
    if (!eos && (L.stops.stopped() || (L.grammar && L.grammar->done()))) {  // a stop string, or the document is complete
      scheduler_.finish(e.id);  // (no-op when its limit ended it too: the stop string names the reason)
      e.finished = true;
      e.reason = FinishReason::kStop;
    }
    if (e.finished) {
      // Whatever the decoder and the stop matcher still hold is final now (none after a stop string).
      if (!L.stops.stopped() && L.decoder) e.text += L.stops.push(L.decoder->flush()) + L.stops.flush();
      live_.erase(e.id);
    }
  }
}

std::vector<BatchEvent> BatchEngine::step() {
  std::vector<BatchEvent> events;
  try {
    if (in_flight_) {
      events = collect();
    } else {
      StepPlan plan;
      if (held_) {
        // Planned after the last step; requests that ended since (a stop string, a cancel) are dropped.
        plan = std::move(*held_);
        held_.reset();
        std::erase_if(plan.items, [&](const StepItem& it) {
          return !live_.contains(it.id) || scheduler_.state(it.id) != RequestState::kRunning;
        });
      } else {
        plan = scheduler_.plan();
      }
      if (plan.empty()) {
        ready_.reset();
        return {};
      }
      if (needs_rows(plan)) {
        events = run_rows(plan);
      } else {
        launch(std::move(plan));
        events = collect();
      }
    }
    // The next step goes to the device before this one's text work (and the caller's).
    if (overlap_ && scheduler_.num_running() + scheduler_.num_waiting() > 0) {
      StepPlan next = scheduler_.plan();
      if (!next.empty()) {
        if (needs_rows(next))
          held_ = std::move(next);
        else
          launch(std::move(next));
      }
    }
  } catch (...) {
    // A failed step leaves its requests in no known state (the caller ends them); nothing stays queued.
    if (in_flight_) {
      in_flight_.reset();
      try {
        runner_.ops().synchronize();
      } catch (...) {
      }
    }
    held_.reset();
    ready_.reset();
    throw;
  }
  finish_text(events);
  if (idle()) ready_.reset();  // the next step starts after a pause: not timed
  return events;
}

std::string BatchEngine::text_of(Live& L, int32_t token) {
  if (!L.decoder) return {};
  return L.stops.push(L.decoder->push(token));
}

std::vector<int32_t> BatchEngine::generated(RequestId id) const {
  const auto t = scheduler_.tokens(id);
  return {t.begin() + scheduler_.prompt_length(id), t.end()};
}

bool BatchEngine::forget(RequestId id) { return scheduler_.forget(id); }

}  // namespace lathe::engine
