// What every route shares: the served model, the engine thread, the server's options, and the
// bookkeeping that draining and /metrics read (active generations, responses by status).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "server/api_error.h"
#include "server/engine_loop.h"
#include "server/response_format.h"
#include "server/served_model.h"

namespace lathe::server {

struct ServerOptions {
  std::string host = "127.0.0.1";  // loopback unless told otherwise
  int port = 8080;                 // 0: any free port (tests)
  std::string api_key;             // empty: no authentication
  size_t max_body_bytes = 8u << 20;
  int max_json_depth = 64;         // deeper request JSON is refused before parsing
  int http_threads = 32;           // connections served at once
  int read_timeout_s = 30;         // a client that sends nothing for this long is dropped
  int write_timeout_s = 30;
  std::chrono::milliseconds poll_interval{10};  // how often a waiting handler checks its client
};

struct ServerContext {
  ServerContext(const ServedModel& m, EngineLoop& e, const ServerOptions& o) : model(m), engine(e), options(o) {}
  const ServedModel& model;
  EngineLoop& engine;
  const ServerOptions& options;

  std::atomic<bool> draining{false};
  // Generations being answered (streams until their last chunk); shutdown waits for none.
  std::mutex active_mu;
  std::condition_variable active_cv;
  int64_t active = 0;
  std::mutex counts_mu;
  std::map<int, int64_t> responses_by_status;
};

// Holds one active generation for as long as it lives (a stream's state keeps it to the end).
class ActiveGeneration {
 public:
  explicit ActiveGeneration(ServerContext& ctx);
  ~ActiveGeneration();
  ActiveGeneration(const ActiveGeneration&) = delete;
  ActiveGeneration& operator=(const ActiveGeneration&) = delete;

 private:
  ServerContext& ctx_;
};

// The request body as JSON: 400 for malformed JSON or nesting deeper than the limit.
nlohmann::json parse_body(const httplib::Request& req, int max_depth);
void send_json(httplib::Response& res, int status, const nlohmann::json& body);
void send_error(httplib::Response& res, const ApiError& error);
// Runs a route, turning whatever it throws into an OpenAI error response.
void guarded(httplib::Response& res, const std::function<void()>& route);

void add_generation_routes(httplib::Server& http, ServerContext& ctx);
void add_info_routes(httplib::Server& http, ServerContext& ctx);

}  // namespace lathe::server
