#include "server/request_channel.h"

namespace lathe::server {

RequestChannel::State RequestChannel::wait_accepted(std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return state_ != State::kPending; });
  return state_;
}

void RequestChannel::take(std::vector<SequenceUpdate>& out, std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return !updates_.empty() || state_ == State::kFailed; });
  for (SequenceUpdate& u : updates_) out.push_back(std::move(u));
  updates_.clear();
}

bool RequestChannel::done() const {
  std::lock_guard lk(mu_);
  return state_ == State::kFailed || (finished_ == n_ && updates_.empty());
}

std::optional<ApiError> RequestChannel::error() const {
  std::lock_guard lk(mu_);
  return error_;
}

void RequestChannel::watch(const ConnectionProbe* probe) {
  std::lock_guard lk(mu_);
  probe_ = probe;
}

bool RequestChannel::client_gone() const {
  std::lock_guard lk(mu_);
  return probe_ && probe_->closed();
}

void RequestChannel::accept() {
  {
    std::lock_guard lk(mu_);
    state_ = State::kAccepted;
  }
  cv_.notify_all();
}

void RequestChannel::fail(const ApiError& error) {
  {
    std::lock_guard lk(mu_);
    state_ = State::kFailed;
    error_ = error;
  }
  cv_.notify_all();
}

void RequestChannel::push(SequenceUpdate update) {
  {
    std::lock_guard lk(mu_);
    if (update.event.finished) ++finished_;
    updates_.push_back(std::move(update));
  }
  cv_.notify_all();
}

}  // namespace lathe::server
