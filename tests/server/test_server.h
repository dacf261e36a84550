// An in-process server for the server tests: a fixture model (CPU backend), its EngineLoop and
// HttpServer on an ephemeral loopback port, serving on a background thread; plus a raw TCP
// connection for what httplib's client will not do (half-sent requests, hanging up mid-stream).
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "engine/fixture_model.h"
#include "server/engine_loop.h"
#include "server/http_server.h"

namespace lathe::server::testing {

struct TestServerOptions {
  int64_t num_blocks = 256;
  int64_t block_size = 4;
  int64_t max_running = 64;
  int64_t max_queue = 64;
  std::string api_key;
  int read_timeout_s = 5;
  std::chrono::microseconds min_step_time{0};  // see EngineLoopOptions
};

class TestServer {
 public:
  TestServer(const std::filesystem::path& model_dir, const TestServerOptions& options = {});
  ~TestServer();  // drains and joins

  httplib::Client client() const;
  // POST with a JSON body; the response (status, body) or a failed result.
  httplib::Result post(const std::string& path, const nlohmann::json& body) const;
  int port() const { return port_; }
  EngineLoop& engine() { return *engine_; }
  HttpServer& http() { return *http_; }
  const ServedModel& model() const { return served_; }
  engine::testing::FixtureModel& fixture() { return *fixture_; }

  // Waits (up to `timeout`) until no sequence is in flight and every KV block is free, then audits
  // the block pool on the engine thread. Returns the blocks still in use (0 when all came back).
  int64_t settle(std::chrono::milliseconds timeout = std::chrono::seconds(5));

 private:
  std::unique_ptr<engine::testing::FixtureModel> fixture_;
  ServedModel served_;
  std::unique_ptr<EngineLoop> engine_;
  std::unique_ptr<HttpServer> http_;
  int port_ = 0;
  std::thread thread_;
};

// A plain TCP connection to the server.
class RawConnection {
 public:
  explicit RawConnection(int port);
  ~RawConnection();
  bool send(const std::string& bytes);
  // Reads until `needle` appeared in what was read so far (or timeout / EOF); returns all read.
  std::string read_until(const std::string& needle, std::chrono::milliseconds timeout);
  void close();

 private:
  int fd_ = -1;
  std::string buffered_;
};

// An HTTP/1.1 POST request's bytes.
std::string http_post(const std::string& path, const std::string& body, const std::string& extra_headers = "");

}  // namespace lathe::server::testing
