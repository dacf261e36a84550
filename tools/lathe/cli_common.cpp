#include "cli_common.h"

#include <unistd.h>

#include <chrono>
#include <charconv>
#include <cstdio>

#include "core/error.h"

namespace lathe::cli {

ops::KvQuant parse_kv_quant(const std::string& name) {
  if (name == "q8") return ops::KvQuant::kQ8;
  if (name == "q4") return ops::KvQuant::kQ4;
  if (name != "auto" && name != "f32")
    fail(ErrorKind::kInvalidArgument, "unknown --kv-cache '{}' (choose auto, f32, q8 or q4)", name);
  return ops::KvQuant::kNone;
}

std::string kv_cache_name(const ops::Ops& ops, int64_t head_dim) {
  return ops.kv_quant() != ops::KvQuant::kNone ? ops::kv_quant_name(ops.kv_quant()) : dtype_name(ops.kv_dtype(head_dim));
}

std::unique_ptr<ops::Ops> make_backend(const DeviceOptions& options, bool exact_by_default) {
  const std::string& name = options.device;
  ops::BackendOptions bo;
  if (options.precision == "exact") bo.exact_matmul = true;
  else if (options.precision == "fast") bo.exact_matmul = false;
  else if (options.precision == "auto") bo.exact_matmul = exact_by_default;
  else fail(ErrorKind::kInvalidArgument, "unknown precision '{}' (choose auto, exact or fast)", options.precision);
  const ops::KvQuant quant = parse_kv_quant(options.kv_cache);
  bo.kv_f32 = options.kv_cache == "f32";
  const auto with_quant = [&](std::unique_ptr<ops::Ops> ops) {
    if (ops) ops->set_kv_quant(quant);
    return ops;
  };
  if (name == "auto") {
    if (auto cuda = ops::make_cuda_ops(bo)) return with_quant(std::move(cuda));
    return with_quant(ops::make_cpu_ops());
  }
  if (name == "cpu") return with_quant(ops::make_cpu_ops());
  if (name == "ref") return with_quant(ops::make_ref_ops());
  if (name == "cuda") {
    if (auto cuda = ops::make_cuda_ops(bo)) return with_quant(std::move(cuda));
    fail(ErrorKind::kUnsupported,
         "--device cuda: no usable GPU ({}); use --device cpu",
         ops::cuda_available() ? "the CUDA backend failed to start" : "this lathe was built without CUDA or no GPU is present");
  }
  fail(ErrorKind::kInvalidArgument, "unknown device '{}' (choose auto, cuda, cpu or ref)", name);
}

void add_backend_option(CLI::App* cmd, DeviceOptions& options) {
  cmd->add_option("--device,--backend", options.device,
                  "compute backend: auto (cuda when a GPU is present, else cpu), cuda, cpu, or ref (scalar reference)")
      ->capture_default_str();
  cmd->add_option("--precision", options.precision,
                  "GPU matmul activations: exact (float32-accurate, split bf16 GEMMs), fast (rounded to bf16), or "
                  "auto (exact for score/perplexity, fast for generation); the CPU is always exact")
      ->capture_default_str();
  cmd->add_option("--kv-cache", options.kv_cache,
                  "K/V cache element type: auto (bf16 on a GPU in fast precision: half the memory and attention "
                  "bandwidth; float32 otherwise), f32, q8 or q4 (8- or 4-bit codes with a float16 scale per 32 "
                  "elements: ~53% or ~28% of bf16's memory, read directly by attention)")
      ->capture_default_str();
}

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(pos, end - pos);
    while (!item.empty() && isspace(static_cast<unsigned char>(item.front()))) item.erase(0, 1);
    while (!item.empty() && isspace(static_cast<unsigned char>(item.back()))) item.pop_back();
    if (item.empty()) {
      if (end == text.size() && pos == end && !ids.empty()) break;  // tolerate a trailing comma
      fail(ErrorKind::kInvalidArgument, "--ids: empty entry in '{}' (expected comma-separated integers)", text);
    }
    int64_t v = 0;
    auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (ec != std::errc() || p != item.data() + item.size() || v < INT32_MIN || v > INT32_MAX)
      fail(ErrorKind::kInvalidArgument, "--ids: '{}' is not a token id (expected comma-separated integers)", item);
    ids.push_back(int32_t(v));
    pos = end + 1;
  }
  if (ids.empty()) fail(ErrorKind::kInvalidArgument, "--ids: no token ids given");
  return ids;
}

std::optional<tok::Tokenizer> load_tokenizer_if_present(const std::filesystem::path& dir) {
  if (!std::filesystem::exists(dir / "tokenizer.json")) return std::nullopt;
  return tok::Tokenizer::load(dir);
}

tok::Tokenizer require_tokenizer(const std::filesystem::path& dir) {
  if (!std::filesystem::exists(dir / "tokenizer.json"))
    fail(ErrorKind::kNotFound, "{} has no tokenizer.json: text input needs one (or pass token ids with --ids)",
         dir.string());
  return tok::Tokenizer::load(dir);
}

namespace {
double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
std::string fmt_duration(double s) {
  if (s < 0 || s > 1e7) return "?";
  const int64_t t = int64_t(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}
}  // namespace

ProgressBar::ProgressBar(std::string label, int64_t total)
    : label_(std::move(label)), total_(total), start_(now_seconds()), tty_(isatty(STDERR_FILENO) != 0) {}

void ProgressBar::update(int64_t done) {
  if (!tty_ || total_ <= 0) return;
  const double elapsed = now_seconds() - start_;
  const double frac = double(done) / double(total_);
  const int width = 30;
  const int filled = int(frac * width);
  const double eta = done > 0 ? elapsed * double(total_ - done) / double(done) : -1;
  std::fprintf(stderr, "\r%s [%s%s] %lld/%lld  %s elapsed, ETA %s   ", label_.c_str(),
               std::string(size_t(filled), '#').c_str(), std::string(size_t(width - filled), ' ').c_str(),
               static_cast<long long>(done), static_cast<long long>(total_), fmt_duration(elapsed).c_str(),
               fmt_duration(eta).c_str());
  std::fflush(stderr);
}

void ProgressBar::finish() {
  if (tty_) std::fprintf(stderr, "\n");
}

}  // namespace lathe::cli
