#include "server/engine_loop.h"

#include <algorithm>

#include "core/log.h"

namespace lathe::server {

namespace {
constexpr auto kRateWindow = std::chrono::seconds(10);
}

EngineLoop::EngineLoop(const model::Runner& runner, const tok::Tokenizer* tokenizer, const EngineLoopOptions& options)
    : engine_(runner, options.engine, tokenizer),
      capacity_(options.engine.scheduler.max_running + std::max<int64_t>(0, options.max_queue)),
      min_step_time_(options.min_step_time) {
  stats_.kv_blocks_total = engine_.blocks().num_blocks();
  thread_ = std::thread([this] { run(); });
}

EngineLoop::~EngineLoop() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

std::shared_ptr<RequestChannel> EngineLoop::submit(engine::BatchRequest request, int64_t n) {
  if (n > capacity_)
    throw ApiError(400, fmt::format("n = {} is more completions than this server runs at once ({})", n, capacity_), "n");
  auto channel = std::make_shared<RequestChannel>(n);
  {
    std::lock_guard lk(mu_);
    if (draining_ || stop_) throw ApiError(503, "the server is shutting down", "", "shutting_down");
    if (in_flight_ + n > capacity_)
      throw ApiError(429,
                     fmt::format("the server is at capacity ({} sequences in flight); retry later", in_flight_),
                     "", "queue_full");
    in_flight_ += n;
    incoming_.push_back({std::move(request), n, channel});
  }
  wake_.notify_all();
  return channel;
}

void EngineLoop::cancel(const std::shared_ptr<RequestChannel>& channel) {
  {
    std::lock_guard lk(mu_);
    cancels_.push_back(channel);
  }
  wake_.notify_all();
}

void EngineLoop::drain() {
  std::unique_lock lk(mu_);
  draining_ = true;
  settled_.wait(lk, [&] { return in_flight_ == 0; });
}

bool EngineLoop::draining() const {
  std::lock_guard lk(mu_);
  return draining_;
}

EngineStats EngineLoop::stats() const {
  std::lock_guard lk(mu_);
  EngineStats s = stats_;
  s.in_flight = in_flight_;
  return s;
}

void EngineLoop::run_on_engine(const std::function<void(engine::BatchEngine&)>& fn) {
  std::function<void(engine::BatchEngine&)> task = fn;
  std::unique_lock lk(mu_);
  tasks_.push_back(&task);
  const int64_t ticket = tasks_done_ + int64_t(tasks_.size());
  wake_.notify_all();
  settled_.wait(lk, [&] { return tasks_done_ >= ticket; });
}

void EngineLoop::finish_sequences(int64_t count) {
  {
    std::lock_guard lk(mu_);
    in_flight_ -= count;
  }
  settled_.notify_all();
}

void EngineLoop::admit(Pending& p) {
  try {
    const int64_t prompt = int64_t(p.request.prompt.size());
    const std::vector<engine::RequestId> ids = engine_.add(p.request, p.n);
    for (size_t i = 0; i < ids.size(); ++i) routes_[ids[i]] = {p.channel, int64_t(i)};
    prompt_total_ += prompt;
    p.channel->accept();
  } catch (const Error& e) {
    p.channel->fail(to_api_error(e, "prompt"));
    finish_sequences(p.n);
  }
}

void EngineLoop::drop(const std::shared_ptr<RequestChannel>& channel, bool cancelled) {
  int64_t dropped = 0;
  for (auto it = routes_.begin(); it != routes_.end();) {
    if (it->second.channel != channel) {
      ++it;
      continue;
    }
    engine_.cancel(it->first);
    engine_.forget(it->first);
    it = routes_.erase(it);
    ++dropped;
  }
  if (cancelled && dropped) ++cancelled_total_;
  if (dropped) finish_sequences(dropped);
}

void EngineLoop::fail_all(const ApiError& error) {
  std::vector<std::shared_ptr<RequestChannel>> channels;
  for (const auto& [id, route] : routes_)
    if (std::find(channels.begin(), channels.end(), route.channel) == channels.end()) channels.push_back(route.channel);
  for (const auto& c : channels) {
    c->fail(error);
    drop(c, false);
  }
}

void EngineLoop::publish(int64_t generated_now) {
  const auto now = std::chrono::steady_clock::now();
  if (generated_now) recent_.emplace_back(now, generated_now);
  while (!recent_.empty() && now - recent_.front().first > kRateWindow) recent_.pop_front();
  int64_t window_tokens = 0;
  for (const auto& [t, n] : recent_) window_tokens += n;
  double rate = 0;
  if (window_tokens > 0) {
    const double span = std::chrono::duration<double>(now - recent_.front().first).count();
    rate = double(window_tokens) / std::max(span, 1.0);
  }
  const auto& pool = engine_.blocks();
  std::lock_guard lk(mu_);
  stats_.waiting = int64_t(engine_.scheduler().num_waiting()) + int64_t(incoming_.size());
  stats_.running = int64_t(engine_.scheduler().num_running());
  stats_.kv_blocks_used = pool.num_used();
  stats_.prefix_queried = pool.stats().queried;
  stats_.prefix_hits = pool.stats().hits;
  stats_.prompt_tokens_total = prompt_total_;
  stats_.generation_tokens_total = generated_total_;
  stats_.requests_finished_total = finished_total_;
  stats_.requests_cancelled_total = cancelled_total_;
  stats_.preemptions_total = engine_.scheduler().preemptions();
  stats_.tokens_per_second = rate;
  stats_.steps = engine_.clock();
  stats_.decode_steps = engine_.decode_clock();
}

void EngineLoop::run() {
  for (;;) {
    std::deque<Pending> incoming;
    std::vector<std::shared_ptr<RequestChannel>> cancels;
    std::vector<std::function<void(engine::BatchEngine&)>*> tasks;
    bool stop = false;
    {
      std::unique_lock lk(mu_);
      wake_.wait(lk, [&] {
        return stop_ || !incoming_.empty() || !cancels_.empty() || !tasks_.empty() || !routes_.empty();
      });
      stop = stop_;
      incoming.swap(incoming_);
      cancels.swap(cancels_);
      tasks.swap(tasks_);
    }
    // Cancellations first: a channel cancelled before it was admitted is refused instead.
    for (const auto& c : cancels) {
      for (auto it = incoming.begin(); it != incoming.end();)
        if (it->channel == c) {
          c->fail(ApiError(499, "the client closed the request"));
          finish_sequences(it->n);
          it = incoming.erase(it);
        } else {
          ++it;
        }
      drop(c, true);
    }
    if (stop) {
      for (Pending& p : incoming) {
        p.channel->fail(ApiError(503, "the server is shutting down", "", "shutting_down"));
        finish_sequences(p.n);
      }
      fail_all(ApiError(503, "the server is shutting down", "", "shutting_down"));
    } else {
      for (Pending& p : incoming) admit(p);
    }
    if (!tasks.empty()) {
      for (auto* t : tasks) (*t)(engine_);
      {
        std::lock_guard lk(mu_);
        tasks_done_ += int64_t(tasks.size());
      }
      settled_.notify_all();
    }
    if (stop) {
      publish(0);
      return;
    }
    // Clients that went away since the last step: their blocks go back before this one plans.
    std::vector<std::shared_ptr<RequestChannel>> gone;
    for (const auto& [id, route] : routes_)
      if (std::find(gone.begin(), gone.end(), route.channel) == gone.end() && route.channel->client_gone())
        gone.push_back(route.channel);
    for (const auto& c : gone) drop(c, true);
    int64_t generated = 0;
    if (!engine_.idle()) {
      try {
        const auto started = std::chrono::steady_clock::now();
        std::vector<engine::BatchEvent> events = engine_.step();
        if (min_step_time_.count() > 0) std::this_thread::sleep_until(started + min_step_time_);
        for (engine::BatchEvent& e : events) {
          const auto it = routes_.find(e.id);
          if (it == routes_.end()) continue;
          if (e.token >= 0) ++generated;
          const bool finished = e.finished;
          const int64_t cached = finished ? engine_.cached_tokens(it->first) : -1;
          it->second.channel->push({it->second.index, std::move(e), cached});
          if (finished) {
            engine_.forget(it->first);
            routes_.erase(it);
            ++finished_total_;
            finish_sequences(1);
          }
        }
      } catch (const std::exception& e) {
        // A failed step leaves no request it planned in a known state: all of them end with a 500.
        log(LogLevel::kError, "serve", "engine step failed: {}", e.what());
        fail_all(ApiError(500, fmt::format("the engine failed: {}", e.what())));
      }
    } else if (!routes_.empty()) {
      // Defensive: routes with no engine work can never finish; end them rather than spin.
      fail_all(ApiError(500, "the engine lost track of a request"));
    }
    generated_total_ += generated;
    publish(generated);
  }
}

}  // namespace lathe::server
