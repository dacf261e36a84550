#include "test_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace lathe::server::testing {

TestServer::TestServer(const std::filesystem::path& dir, const TestServerOptions& o)
    : fixture_(std::make_unique<engine::testing::FixtureModel>(dir)) {
  const model::ModelConfig& c = fixture_->runner.config();
  served_.name = "fixture";
  served_.created = 1;
  served_.tokenizer = &fixture_->tokenizer;
  served_.chat_template = tmpl::load_chat_template(dir);
  served_.context = c.max_position_embeddings;
  served_.vocab_size = c.vocab_size;
  served_.eos_ids = c.eos_token_ids;
  served_.generation = c.generation;
  served_.kv_positions = o.num_blocks * o.block_size;
  EngineLoopOptions eo;
  eo.engine.num_blocks = o.num_blocks;
  eo.engine.scheduler.block_size = o.block_size;
  eo.engine.scheduler.max_running = o.max_running;
  eo.max_queue = o.max_queue;
  eo.min_step_time = o.min_step_time;
  engine_ = std::make_unique<EngineLoop>(fixture_->runner, &fixture_->tokenizer, eo);
  ServerOptions so;
  so.port = 0;
  so.api_key = o.api_key;
  so.http_threads = 24;
  so.read_timeout_s = o.read_timeout_s;
  so.write_timeout_s = 5;
  http_ = std::make_unique<HttpServer>(served_, *engine_, so);
  port_ = http_->bind();
  thread_ = std::thread([this] { http_->serve(); });
}

TestServer::~TestServer() {
  http_->shutdown();
  thread_.join();
  engine_->drain();
}

httplib::Client TestServer::client() const {
  httplib::Client c("127.0.0.1", port_);
  c.set_read_timeout(60, 0);
  c.set_connection_timeout(5, 0);
  return c;
}

httplib::Result TestServer::post(const std::string& path, const nlohmann::json& body) const {
  auto c = client();
  return c.Post(path.c_str(), body.dump(), "application/json");
}

int64_t TestServer::settle(std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  int64_t used = 0;
  for (;;) {
    const EngineStats s = engine_->stats();
    engine_->run_on_engine([&](engine::BatchEngine& e) {
      e.blocks().audit();
      used = e.blocks().num_used();
    });
    if ((used == 0 && s.in_flight == 0) || std::chrono::steady_clock::now() > end) return used + s.in_flight;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

RawConnection::RawConnection(int port) {
  fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) close();
}

RawConnection::~RawConnection() { close(); }

bool RawConnection::send(const std::string& bytes) {
  size_t sent = 0;
  while (fd_ >= 0 && sent < bytes.size()) {
    const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += size_t(n);
  }
  return fd_ >= 0;
}

std::string RawConnection::read_until(const std::string& needle, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (fd_ >= 0 && buffered_.find(needle) == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, int(left.count())) <= 0) break;
    char buf[4096];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) break;
    buffered_.append(buf, size_t(n));
  }
  return buffered_;
}

void RawConnection::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

std::string http_post(const std::string& path, const std::string& body, const std::string& extra_headers) {
  return "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n" + extra_headers + "\r\n" + body;
}

}  // namespace lathe::server::testing
