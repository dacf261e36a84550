// The engine thread: the one thread that owns the BatchEngine. HTTP handler threads submit requests
// and cancellations through a mutex-guarded queue; the thread takes them in between steps, steps the
// engine while there is work (sleeping on a condition variable when idle) and routes each event to
// its request's RequestChannel. Before each step it also checks every running request's client
// connection (RequestChannel::client_gone), so a client that went away is cancelled, and its KV
// blocks are free, before the next step runs.
//
// Admission control: at most max_running + max_queue sequences are in flight; submit() refuses
// more at once with 429 (never blocks), and with 503 once drain() began.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/batch_engine.h"
#include "server/request_channel.h"

namespace lathe::server {

struct EngineLoopOptions {
  engine::BatchEngineOptions engine;
  int64_t max_queue = 256;  // sequences that may wait beyond the scheduler's max_running
  // Tests: each step lasts at least this long (a stand-in for a real model's step time, so a test
  // can act between steps of the tiny fixture models).
  std::chrono::microseconds min_step_time{0};
};

// A snapshot for /metrics, published by the engine thread after each step.
struct EngineStats {
  int64_t waiting = 0, running = 0;  // sequences
  int64_t in_flight = 0;             // sequences accepted and not finished (queued ones included)
  int64_t kv_blocks_used = 0, kv_blocks_total = 0;
  int64_t prefix_queried = 0, prefix_hits = 0;  // KV blocks looked up in / found in the prefix cache
  int64_t prompt_tokens_total = 0, generation_tokens_total = 0;
  int64_t requests_finished_total = 0, requests_cancelled_total = 0, preemptions_total = 0;
  double tokens_per_second = 0;  // generated tokens over the last few seconds
  engine::BatchEngine::StepClock steps;  // step time, and the part of it blocked on the device
  engine::BatchEngine::StepClock decode_steps;  // the same over decode-only steps
};

class EngineLoop {
 public:
  EngineLoop(const model::Runner& runner, const tok::Tokenizer* tokenizer, const EngineLoopOptions& options);
  ~EngineLoop();  // cancels whatever is left and joins the thread
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  // Queues n completions of `request`; the engine thread accepts (or refuses) it through the channel.
  std::shared_ptr<RequestChannel> submit(engine::BatchRequest request, int64_t n);
  // Ends the request's sequences before the next step; their blocks are free when that step plans.
  void cancel(const std::shared_ptr<RequestChannel>& channel);
  // Refuses new requests (503) and returns once every accepted one has finished.
  void drain();
  bool draining() const;
  EngineStats stats() const;
  int64_t capacity() const { return capacity_; }
  // Runs fn on the engine thread between steps and waits for it (tests: block audits). With the
  // engine's overlap a step may be running on the device meanwhile: fn may use the runner with its
  // own workspace and pool (the backend orders the work), not the engine's.
  void run_on_engine(const std::function<void(engine::BatchEngine&)>& fn);

 private:
  struct Pending {
    engine::BatchRequest request;
    int64_t n = 1;
    std::shared_ptr<RequestChannel> channel;
  };
  struct Route {
    std::shared_ptr<RequestChannel> channel;
    int64_t index = 0;
  };
  void run();
  void admit(Pending& p);
  void drop(const std::shared_ptr<RequestChannel>& channel, bool cancelled);  // its sequences, now
  void fail_all(const ApiError& error);
  void publish(int64_t generated_now);
  void finish_sequences(int64_t count);

  engine::BatchEngine engine_;
  const int64_t capacity_;
  const std::chrono::microseconds min_step_time_;

  mutable std::mutex mu_;
  std::condition_variable wake_;     // the engine thread: work arrived
  std::condition_variable settled_;  // drain() and run_on_engine(): something finished
  std::deque<Pending> incoming_;
  std::vector<std::shared_ptr<RequestChannel>> cancels_;
  std::vector<std::function<void(engine::BatchEngine&)>*> tasks_;
  int64_t tasks_done_ = 0;
  int64_t in_flight_ = 0;
  bool draining_ = false, stop_ = false;
  EngineStats stats_;

  // Engine thread only.
  std::unordered_map<engine::RequestId, Route> routes_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, int64_t>> recent_;  // tokens per step
  int64_t generated_total_ = 0, prompt_total_ = 0, finished_total_ = 0, cancelled_total_ = 0;

  std::thread thread_;
};

}  // namespace lathe::server
