// Encode throughput of lathe's tokenizer on a text file, two ways: the whole file in one encode
// call, and line by line (one call per line, newline kept, as a server sees short requests).
// Prints one JSON line per tokenizer: MB/s and tokens/s, the median of 5 timed runs after one
// warm-up (which also fills the BPE word cache, as a long-running process would have it).
// scripts/hf-tokenizers/bench.js measures HF tokenizers the same way; compare-bench.sh joins them.
//
// usage: tokenizer_bench TEXT_FILE TOKENIZERS_DIR [NAME...]   (default names: the six fetched)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace {

template <typename Fn>
double median_seconds(Fn&& fn, int runs = 5) {
  fn();  // warm-up
  std::vector<double> t;
  for (int r = 0; r < runs; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TEXT_FILE TOKENIZERS_DIR [NAME...]\n", argv[0]);
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", argv[1]);
    return 1;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::vector<std::string> lines;
  for (size_t b = 0; b < text.size();) {
    size_t e = text.find('\n', b);
    e = e == std::string::npos ? text.size() : e + 1;
    lines.push_back(text.substr(b, e - b));
    b = e;
  }
  std::vector<std::string> names;
  for (int k = 3; k < argc; ++k) names.push_back(argv[k]);
  if (names.empty()) names = {"llama2", "llama3_1", "qwen3", "deepseek_v3", "gemma3", "gptoss"};

  const double mb = double(text.size()) / 1e6;
  for (const auto& name : names) {
    std::filesystem::path dir = std::filesystem::path(argv[2]) / name;
    try {
      auto tok = lathe::tok::Tokenizer::load(dir);
      size_t whole_tokens = 0, line_tokens = 0;
      double whole = median_seconds([&] { whole_tokens = tok.encode(text, false).size(); });
      double by_line = median_seconds([&] {
        line_tokens = 0;
        for (const auto& l : lines) line_tokens += tok.encode(l, false).size();
      });
      std::printf("{\"tokenizer\":\"%s\",\"bytes\":%zu,\"whole_s\":%.6f,\"whole_mbps\":%.3f,\"whole_tokens\":%zu,"
                  "\"whole_tps\":%.0f,\"lines_s\":%.6f,\"lines_mbps\":%.3f,\"lines_tokens\":%zu,\"lines_tps\":%.0f}\n",
                  name.c_str(), text.size(), whole, mb / whole, whole_tokens, double(whole_tokens) / whole, by_line,
                  mb / by_line, line_tokens, double(line_tokens) / by_line);
      std::fflush(stdout);
    } catch (const lathe::Error& e) {
      std::fprintf(stderr, "%s: %s\n", name.c_str(), e.what());
    }
  }
  return 0;
}
