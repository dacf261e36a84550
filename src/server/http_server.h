// lathe serve's HTTP side: an OpenAI-compatible server on cpp-httplib over one EngineLoop.
// Routes: POST /v1/chat/completions, /v1/completions, /tokenize, /detokenize; GET /v1/models,
// /health, /metrics. Every error is OpenAI's JSON shape; the API key (when set) guards everything
// but /health and /metrics and is compared in constant time; bodies over the size limit get 413,
// unknown routes 404. shutdown() drains: new generations get 503 while those in flight finish,
// then the listener closes and serve() returns.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "server/engine_loop.h"
#include "server/server_context.h"
#include "server/served_model.h"

namespace httplib {
class Server;
}

namespace lathe::server {

class HttpServer {
 public:
  HttpServer(const ServedModel& model, EngineLoop& engine, ServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds options.host:options.port (port 0: any free one); returns the port. Throws kIo on failure.
  int bind();
  // Serves until shutdown(); returns once in-flight requests are answered. Call bind() first.
  void serve();
  // Thread-safe (a signal-handling thread calls it): drain, then stop serve().
  void shutdown();
  std::string url() const;  // http://host:port
  // Connections the kernel queues for accept(): httplib listens with 5, which a burst of clients
  // overflows (connections dropped or delayed by a SYN retry); bind() raises it to this.
  static constexpr int kListenBacklog = 4096;
  // The backlog the kernel applies to the listening socket (TCP_INFO; the kernel caps the request
  // at net.core.somaxconn), or -1 before bind().
  int listen_backlog() const;

 private:
  void install_routes();
  ServerOptions options_;
  ServerContext ctx_;
  std::unique_ptr<httplib::Server> http_;
  int port_ = 0;
  int listen_fd_ = -1;  // the listening socket httplib made last (bind() raises its backlog)
  std::atomic<bool> serving_{false}, stopping_{false};
};

// Compares a presented secret with the expected one in time that depends only on their lengths'
// maximum, not on where they first differ.
bool constant_time_equal(std::string_view presented, std::string_view expected);

}  // namespace lathe::server
