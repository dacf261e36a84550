// The handoff of one API request between its HTTP handler thread and the engine thread: the engine
// thread accepts or refuses the request, then pushes each step's events for its sequences (n > 1
// completions are sequences 0..n-1); the handler waits on a condition variable for them. A handler
// whose client went away asks EngineLoop::cancel; the channel only carries data.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <vector>

#include "engine/batch_engine.h"
#include "server/api_error.h"
#include "server/connection_probe.h"

namespace lathe::server {

struct SequenceUpdate {
  int64_t index = 0;  // which of the request's n sequences
  engine::BatchEvent event;
  int64_t cached_tokens = -1;  // on the update that ends a sequence: its prompt positions the prefix cache served
};

class RequestChannel {
 public:
  explicit RequestChannel(int64_t n) : n_(n) {}
  int64_t n() const { return n_; }

  enum class State { kPending, kAccepted, kFailed };
  // Waits up to `timeout` for the engine thread to take the request in (or refuse it).
  State wait_accepted(std::chrono::milliseconds timeout);
  // Moves the updates that arrived into `out` (appending); waits up to `timeout` when there are none.
  void take(std::vector<SequenceUpdate>& out, std::chrono::milliseconds timeout);
  // True once the request failed or every sequence finished and its updates were taken.
  bool done() const;
  std::optional<ApiError> error() const;
  // The client's connection, for the engine thread to check before each step; unwatch() before the
  // connection may close (its descriptor could then be reused by another one).
  void watch(const ConnectionProbe* probe);
  void unwatch() { watch(nullptr); }

  // ---- engine thread ----
  bool client_gone() const;
  void accept();
  void fail(const ApiError& error);
  void push(SequenceUpdate update);

 private:
  const int64_t n_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  State state_ = State::kPending;
  std::optional<ApiError> error_;
  std::vector<SequenceUpdate> updates_;
  int64_t finished_ = 0;
  const ConnectionProbe* probe_ = nullptr;
};

}  // namespace lathe::server
