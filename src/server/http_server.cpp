#include "server/http_server.h"

#include <chrono>
#include <csignal>
#include <thread>

#include <httplib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "core/error.h"

namespace lathe::server {

bool constant_time_equal(std::string_view a, std::string_view b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = static_cast<unsigned char>(diff | (x ^ y));
  }
  // volatile read: keeps the compiler from turning the loop into an early-exit comparison.
  volatile unsigned char result = diff;
  return result == 0;
}

namespace {
bool needs_key(const std::string& path) { return path != "/health" && path != "/metrics"; }

const char* default_message(int status) {
  switch (status) {
    case 400: return "the request is malformed";
    case 404: return "no such route";
    case 405: return "method not allowed on this route";
    case 413: return "the request body is too large";
    case 414: return "the request URI is too long";
    default: return status >= 500 ? "internal server error" : "the request failed";
  }
}
}  // namespace

HttpServer::HttpServer(const ServedModel& model, EngineLoop& engine, ServerOptions options)
    : options_(std::move(options)), ctx_(model, engine, options_), http_(std::make_unique<httplib::Server>()) {
  std::signal(SIGPIPE, SIG_IGN);  // a write to a departed client must fail, not kill the process
  install_routes();
}

HttpServer::~HttpServer() = default;

void HttpServer::install_routes() {
  httplib::Server& s = *http_;
  const int threads = std::max(2, options_.http_threads);
  s.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  s.set_payload_max_length(options_.max_body_bytes);
  s.set_read_timeout(options_.read_timeout_s, 0);
  s.set_write_timeout(options_.write_timeout_s, 0);
  s.set_keep_alive_timeout(5);
  s.set_tcp_nodelay(true);  // stream chunks leave at once
  s.set_socket_options([this](socket_t sock) {
    httplib::default_socket_options(sock);  // what httplib sets without a callback (SO_REUSEADDR)
    listen_fd_ = sock;  // the socket that binds is the last one made
  });

  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (options_.api_key.empty() || !needs_key(req.path)) return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    const std::string_view prefix = "Bearer ";
    const bool ok = auth.size() > prefix.size() && std::string_view(auth).substr(0, prefix.size()) == prefix &&
                    constant_time_equal(std::string_view(auth).substr(prefix.size()), options_.api_key);
    if (ok) return httplib::Server::HandlerResponse::Unhandled;
    send_error(res, ApiError(401, auth.empty() ? "missing API key: send 'Authorization: Bearer KEY'" : "invalid API key",
                             "", "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });
  // httplib's own refusals (unknown route, body over the limit, unparsable request line) get the
  // OpenAI error body too; responses a route already filled pass through.
  s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const int status = res.status;
    std::string msg = default_message(status);
    if (status == 404) msg = fmt::format("no route {} {}", req.method, req.path);
    send_error(res, ApiError(status, msg));
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    send_error(res, ApiError(500, "internal server error"));
  });
  s.set_logger([this](const httplib::Request&, const httplib::Response& res) {
    std::lock_guard lk(ctx_.counts_mu);
    ++ctx_.responses_by_status[res.status];
  });
  add_generation_routes(s, ctx_);
  add_info_routes(s, ctx_);
}

int HttpServer::bind() {
  if (options_.port == 0) {
    port_ = http_->bind_to_any_port(options_.host);
  } else {
    port_ = http_->bind_to_port(options_.host, options_.port) ? options_.port : -1;
  }
  if (port_ <= 0) fail(ErrorKind::kIo, "cannot listen on {}:{} (in use, or not an address of this machine)", options_.host, options_.port);
  // listen() again on a listening socket only changes its backlog (Linux).
  if (listen_fd_ >= 0 && ::listen(listen_fd_, kListenBacklog) != 0)
    fail(ErrorKind::kIo, "cannot set the listen backlog on {}:{}", options_.host, port_);
  return port_;
}

int HttpServer::listen_backlog() const {
  if (listen_fd_ < 0) return -1;
  tcp_info info{};
  socklen_t len = sizeof(info);
  if (getsockopt(listen_fd_, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return -1;
  return int(info.tcpi_sacked);  // a listening socket's maximum accept queue (Linux tcp_get_info)
}

void HttpServer::serve() {
  serving_ = true;
  if (!stopping_) http_->listen_after_bind();
  serving_ = false;
}

void HttpServer::shutdown() {
  ctx_.draining = true;
  {
    std::unique_lock lk(ctx_.active_mu);
    ctx_.active_cv.wait(lk, [&] { return ctx_.active == 0; });
  }
  // Only now: httplib cuts off streams still writing once its listener is stopped. httplib's stop()
  // does nothing before its listen loop runs, so a serve() that is starting is waited for.
  stopping_ = true;
  while (serving_ && !http_->is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  http_->stop();
}

std::string HttpServer::url() const {
  const bool v6 = options_.host.find(':') != std::string::npos;
  return fmt::format("http://{}{}{}:{}", v6 ? "[" : "", options_.host, v6 ? "]" : "", port_);
}

}  // namespace lathe::server
