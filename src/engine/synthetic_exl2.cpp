#include "engine/synthetic_exl2.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/arch.h"
#include "model/config.h"
#include "quant/exl2.h"
#include "quant/bitpack.h"
#include "quant/exl2_groups.h"

namespace lathe::engine {

namespace fs = std::filesystem;

namespace {

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Random 32-bit words, filled in parallel from per-chunk seeds (the same for any thread count).
void random_words(uint32_t* out, size_t n, uint64_t seed) {
  constexpr int64_t kChunk = 1 << 16;
  parallel_for(int64_t((n + kChunk - 1) / kChunk), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      uint64_t s = seed ^ (uint64_t(c) * 0xd1b54a32d192ed03ull);
      const size_t b = size_t(c) * kChunk, e = std::min(n, b + kChunk);
      for (size_t i = b; i < e; i += 2) {
        const uint64_t r = splitmix(s);
        out[i] = uint32_t(r);
        if (i + 1 < e) out[i + 1] = uint32_t(r >> 32);
      }
    }
  });
}

quant::Exl2Matrix random_layer(int64_t K, int64_t N, const std::vector<quant::Exl2Group>& groups, uint64_t seed) {
  quant::Exl2Matrix m;
  m.in_features = K;
  m.out_features = N;
  m.groups = groups;
  const int64_t Np = m.padded_out(), G = int64_t(groups.size());
  m.q_weight.resize(size_t(m.qrows() * Np));
  random_words(m.q_weight.data(), m.q_weight.size(), seed);
  m.q_scale.resize(size_t(G * (Np / 8)));
  random_words(m.q_scale.data(), m.q_scale.size(), seed + 1);
  m.q_scale_max.assign(size_t(G), f32_to_f16(0.01f));
  int64_t qrow = 0;
  for (const auto& g : groups) {
    m.q_groups.push_back(int16_t(g.bits));
    m.q_groups.push_back(int16_t(qrow));
    qrow += g.rows * g.bits / 32;
  }
  m.q_invperm.resize(size_t(K));
  std::iota(m.q_invperm.begin(), m.q_invperm.end(), 0);
  std::mt19937_64 rng(seed + 2);
  std::shuffle(m.q_invperm.begin(), m.q_invperm.end(), rng);
  return m;
}

}  // namespace

size_t write_synthetic_exl2(const fs::path& model_dir, const fs::path& out_dir, const SyntheticExl2Options& opt) {
  const model::ModelConfig c = model::load_model_config(model_dir);
  const model::ArchSpec* arch = model::find_arch(c.architecture);
  if (!arch || arch->moe || arch->fused_qkv || arch->fused_gate_up || arch->qkv_bias || c.attention_bias || c.mlp_bias ||
      arch->norm_layout != model::NormLayout::kPre || arch->qk_norm)
    fail(ErrorKind::kUnsupported,
         "--synthetic writes Llama-style models (separate q/k/v and gate/up, no biases); {} is not one",
         c.architecture);
  if (!(opt.bpw >= 2.5 && opt.bpw <= 8.0))
    fail(ErrorKind::kInvalidArgument, "--bpw {} is outside what EXL2 can store here (2.5 to 8.0)", opt.bpw);
  if (!quant::exl2_bits_supported(opt.head_bits))
    fail(ErrorKind::kInvalidArgument, "--head-bits {} is not an EXL2 width (2, 3, 4, 5, 6, 8)", opt.head_bits);
  const int64_t H = c.hidden_size, I = c.intermediate_size, hd = c.head_dim;
  const int64_t group = opt.bpw < 3.5 ? 32 : 128;
  std::vector<std::unique_ptr<quant::Exl2Matrix>> layers;
  std::vector<io::NamedTensor> tensors;
  uint64_t seed = opt.seed * 1000003ull;
  auto add = [&](const std::string& name, int64_t N, int64_t K, const std::vector<quant::Exl2Group>& groups) {
    layers.push_back(std::make_unique<quant::Exl2Matrix>(random_layer(K, N, groups, seed += 7)));
    for (auto& t : quant::exl2_tensors(*layers.back(), name)) tensors.push_back(t);
  };
  std::vector<std::vector<uint16_t>> halves;
  halves.reserve(size_t(2 * c.num_layers + 4));
  auto f16 = [&](const std::string& name, Shape shape, bool ones) {
    halves.emplace_back(size_t(shape_numel(shape)));
    auto& h = halves.back();
    if (ones) {
      std::fill(h.begin(), h.end(), f32_to_f16(1.f));
    } else {  // uniform in about +-0.05 (random bits of the fraction, exponent of 2^-5)
      std::vector<uint32_t> r(h.size());
      random_words(r.data(), r.size(), seed += 7);
      for (size_t i = 0; i < h.size(); ++i) h[i] = uint16_t(0x2800u | (r[i] & 0x83ffu));
    }
    tensors.push_back({name, TensorView{h.data(), DType::kF16, shape}});
  };
  f16("model.embed_tokens.weight", {c.vocab_size, H}, false);
  f16("model.norm.weight", {H}, true);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    f16(p + "input_layernorm.weight", {H}, true);
    f16(p + "post_attention_layernorm.weight", {H}, true);
    const auto layout = [&](int64_t N, int64_t K) { return quant::exl2_groups_for_bpw(opt.bpw, K, N, group); };
    add(p + "self_attn.q_proj", c.num_heads * hd, H, layout(c.num_heads * hd, H));
    add(p + "self_attn.k_proj", c.num_kv_heads * hd, H, layout(c.num_kv_heads * hd, H));
    add(p + "self_attn.v_proj", c.num_kv_heads * hd, H, layout(c.num_kv_heads * hd, H));
    add(p + "self_attn.o_proj", H, c.num_heads * hd, layout(H, c.num_heads * hd));
    add(p + "mlp.gate_proj", I, H, layout(I, H));
    add(p + "mlp.up_proj", I, H, layout(I, H));
    add(p + "mlp.down_proj", H, I, layout(H, I));
  }
  add("lm_head", c.vocab_size, H,
      std::vector<quant::Exl2Group>(size_t(H / 128 ? H / 128 : 1), quant::Exl2Group{opt.head_bits, H / 128 ? 128 : H}));

  fs::create_directories(out_dir);
  const fs::path st = out_dir / "output.safetensors";
  io::write_safetensors(st, tensors, {{"format", "pt"}});
  nlohmann::json config = io::read_json_file(model_dir / "config.json");
  config["quantization_config"] = {{"quant_method", "exl2"},
                                   {"version", "lathe"},
                                   {"bits", opt.bpw},
                                   {"head_bits", opt.head_bits},
                                   {"synthetic", true}};
  std::ofstream(out_dir / "config.json") << config.dump(4) << "\n";
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                        "chat_template.jinja", "tokenizer.model"})
    if (fs::exists(model_dir / f)) fs::copy_file(model_dir / f, out_dir / f, fs::copy_options::overwrite_existing);
  return fs::file_size(st);
}

}  // namespace lathe::engine
