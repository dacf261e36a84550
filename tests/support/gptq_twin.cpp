#include "support/gptq_twin.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "io/safetensors.h"
#include "quant/gptq.h"
#include "support/golden.h"

namespace lathe::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

bool is_linear(const std::string& name) {
  for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    if (name.find(std::string(p) + ".weight") != std::string::npos) return true;
  return false;
}

}  // namespace

int write_gptq_twin(const fs::path& src, const fs::path& gptq_dir, const fs::path& plain_dir, uint32_t seed) {
  for (const auto& d : {gptq_dir, plain_dir}) {
    if (d.empty()) continue;
    fs::remove_all(d);
    fs::create_directories(d);
  }
  json config = read_json(src / "config.json");
  if (!plain_dir.empty()) std::ofstream(plain_dir / "config.json") << config.dump(2);
  config["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 32}, {"desc_act", true}};
  std::ofstream(gptq_dir / "config.json") << config.dump(2);

  io::WeightStore store(src);
  std::mt19937 rng(seed);
  std::vector<io::NamedTensor> gptq_tensors, plain_tensors;
  std::vector<std::unique_ptr<quant::GptqMatrix>> keep;
  std::vector<std::vector<uint16_t>> storage;
  storage.reserve(64);
  int quantized = 0;
  for (const std::string& name : store.names()) {
    const TensorView v = *store.find(name);
    if (!is_linear(name) || v.dim(1) % 32 != 0 || v.dim(0) % 8 != 0) {
      gptq_tensors.push_back({name, v});
      plain_tensors.push_back({name, v});
      continue;
    }
    // RTN to 4 bits per 32-row group (asymmetric), groups in a shuffled (act-order) assignment.
    const int64_t N = v.dim(0), K = v.dim(1), G = K / 32;
    std::vector<float> w(size_t(N * K));
    convert_to_f32(v.data, v.dtype, w.data(), w.size());
    std::vector<int32_t> g_idx(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) g_idx[size_t(k)] = int32_t(k / 32);
    std::shuffle(g_idx.begin(), g_idx.end(), rng);
    std::vector<float> lo(size_t(G * N), INFINITY), hi(size_t(G * N), -INFINITY);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n) {
        const size_t at = size_t(g_idx[size_t(k)] * N + n);
        lo[at] = std::min(lo[at], w[size_t(n * K + k)]);
        hi[at] = std::max(hi[at], w[size_t(n * K + k)]);
      }
    std::vector<float> scales(size_t(G * N));
    std::vector<uint8_t> zeros(size_t(G * N)), q(size_t(K * N));
    for (size_t i = 0; i < scales.size(); ++i) {
      scales[i] = f16_to_f32(f32_to_f16(std::max((hi[i] - lo[i]) / 15.f, 1e-6f)));
      zeros[i] = uint8_t(std::clamp(int(std::lround(-lo[i] / scales[i])), 1, 15));
    }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n) {
        const size_t g = size_t(g_idx[size_t(k)] * N + n);
        q[size_t(k * N + n)] = uint8_t(std::clamp(int(std::lround(w[size_t(n * K + k)] / scales[g])) + zeros[g], 0, 15));
      }
    keep.push_back(std::make_unique<quant::GptqMatrix>(
        quant::gptq_pack(4, K, N, 32, false, q.data(), zeros.data(), scales.data(), g_idx)));
    const std::string prefix = name.substr(0, name.size() - std::string(".weight").size());
    storage.emplace_back();
    for (auto& t : quant::gptq_tensors(*keep.back(), prefix, &storage.back())) gptq_tensors.push_back(t);
    std::vector<float> deq(size_t(N * K));
    quant::gptq_dequantize(*keep.back(), deq.data());
    storage.emplace_back(deq.size());
    for (size_t i = 0; i < deq.size(); ++i) storage.back()[i] = f32_to_f16(deq[i]);
    plain_tensors.push_back({name, TensorView{storage.back().data(), DType::kF16, {N, K}}});
    ++quantized;
  }
  io::write_safetensors(gptq_dir / "model.safetensors", gptq_tensors);
  if (!plain_dir.empty()) io::write_safetensors(plain_dir / "model.safetensors", plain_tensors);
  return quantized;
}

}  // namespace lathe::testing
