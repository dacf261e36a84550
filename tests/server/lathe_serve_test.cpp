// The real `lathe serve` binary on the llama fixture model: it prints its URL on start, answers
// curl (a smoke test of every route) and the official openai npm package (tests/server/
// openai_client.cjs: chat, streaming, completions, logprobs, errors), and on SIGTERM finishes the
// stream in flight and exits 0. The curl and node parts skip, saying why, when those are missing.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "test_paths.h"

extern char** environ;

namespace lathe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kKey = "test-key";

// `lathe serve` on port 0 as a child process; its first stdout line gives the URL.
class ServeProcess {
 public:
  explicit ServeProcess(const fs::path& model) {
    const std::string bin = (testing::binary_dir() / "bin" / "lathe").string();
    int out[2];
    if (pipe(out) != 0) return;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    std::vector<std::string> args = {bin, "-t", "2", "serve", "-m", model.string(), "--port", "0", "--device", "cpu",
                                     "--api-key", kKey, "--served-model-name", "fixture"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, bin.c_str(), &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    out_ = out[0];
    // The URL line: "lathe serve: NAME (...) at http://127.0.0.1:PORT".
    std::string line;
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (pid_ > 0 && line.find('\n') == std::string::npos && std::chrono::steady_clock::now() < end) {
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, 1000) <= 0) continue;
      char c[256];
      const ssize_t n = read(out_, c, sizeof c);
      if (n <= 0) break;
      line.append(c, size_t(n));
    }
    const auto at = line.find("http://");
    if (at != std::string::npos) url_ = line.substr(at, line.find('\n', at) - at);
  }
  ~ServeProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) close(out_);
  }
  const std::string& url() const { return url_; }
  // SIGTERM, then the exit code (-1: killed by a signal or still running after 30 s).
  int terminate() {
    kill(pid_, SIGTERM);
    for (int i = 0; i < 3000; ++i) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      usleep(10000);
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::string url_;
};

std::string run(const std::string& cmd, int* code = nullptr) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int status = pclose(p);
  if (code) *code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

bool have(const char* tool) { return run(std::string("command -v ") + tool + " >/dev/null 2>&1 && echo yes") == "yes\n"; }

std::string curl(const std::string& url, const std::string& args) {
  return run("curl -sS -m 60 -H 'Authorization: Bearer " + std::string(kKey) + "' -H 'Content-Type: application/json' " +
             args + " '" + url + "' 2>&1");
}

TEST(LatheServe, CurlSmokeAndSigtermDrain) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  if (!have("curl")) GTEST_SKIP() << "curl not found on PATH (apt-get install curl)";
  ServeProcess server(dir);
  ASSERT_FALSE(server.url().empty()) << "lathe serve printed no URL";
  const std::string& u = server.url();
  EXPECT_EQ(json::parse(run("curl -sS '" + u + "/health'"))["status"], "ok");
  EXPECT_EQ(json::parse(curl(u + "/v1/models", ""))["data"][0]["id"], "fixture");
  const json chat = json::parse(curl(u + "/v1/chat/completions",
                                     "-d '{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":5,\"temperature\":0}'"));
  EXPECT_EQ(chat["object"], "chat.completion") << chat.dump();
  const json comp = json::parse(curl(u + "/v1/completions", "-d '{\"prompt\":\"Hello\",\"max_tokens\":5,\"ignore_eos\":true}'"));
  EXPECT_EQ(comp["usage"]["completion_tokens"], 5) << comp.dump();
  const json tok = json::parse(curl(u + "/tokenize", "-d '{\"prompt\":\"Hello\"}'"));
  EXPECT_GT(tok["count"].get<int>(), 0);
  EXPECT_EQ(json::parse(curl(u + "/detokenize", "-d '{\"tokens\":" + tok["tokens"].dump() + "}'"))["prompt"].is_string(), true);
  EXPECT_NE(run("curl -sS '" + u + "/metrics'").find("lathe_kv_blocks_total"), std::string::npos);
  EXPECT_EQ(json::parse(run("curl -sS '" + u + "/v1/models'"))["error"]["type"], "authentication_error");
  EXPECT_NE(curl(u + "/v1/nope", "-o /dev/null -w '%{http_code}'").find("404"), std::string::npos);

  // A stream in flight when SIGTERM arrives still ends with [DONE]; then the server exits 0.
  FILE* stream = popen(("curl -sS -N -m 60 -H 'Authorization: Bearer " + std::string(kKey) +
                        "' -d '{\"prompt\":\"Hello\",\"max_tokens\":600,\"ignore_eos\":true,\"stream\":true}' '" + u +
                        "/v1/completions' 2>&1")
                           .c_str(),
                       "r");
  ASSERT_NE(stream, nullptr);
  std::array<char, 4096> buf;
  std::string got;
  while (got.find("data: ") == std::string::npos && fgets(buf.data(), int(buf.size()), stream)) got += buf.data();
  ASSERT_NE(got.find("data: "), std::string::npos) << got;
  const auto t0 = std::chrono::steady_clock::now();
  std::thread stopper([&] { EXPECT_EQ(server.terminate(), 0); });
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), stream)) > 0) got.append(buf.data(), n);
  pclose(stream);
  stopper.join();
  EXPECT_NE(got.find("data: [DONE]"), std::string::npos) << got.substr(got.size() > 500 ? got.size() - 500 : 0);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(60));
}

TEST(LatheServe, OfficialOpenAINodeClient) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  if (!have("node")) GTEST_SKIP() << "node not found on PATH (apt-get install nodejs npm)";
  const char* env = std::getenv("LATHE_NPM_DIR");
  const fs::path npm = env ? fs::path(env) : testing::binary_dir() / "npm";
  if (!fs::exists(npm / "node_modules" / "openai" / "package.json"))
    GTEST_SKIP() << "npm package openai missing under " << npm << " (run: npm install --prefix " << npm
                 << " openai@6.49.0, as `make test` does, or set LATHE_NPM_DIR)";
  ServeProcess server(dir);
  ASSERT_FALSE(server.url().empty()) << "lathe serve printed no URL";
  const fs::path script = testing::source_dir() / "tests" / "server" / "openai_client.cjs";
  int code = -1;
  const std::string out = run("node '" + script.string() + "' '" + server.url() + "' fixture '" + npm.string() + "' 2>&1", &code);
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("ok "), std::string::npos) << out;
  EXPECT_EQ(server.terminate(), 0);
}

}  // namespace
}  // namespace lathe
