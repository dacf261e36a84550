// The CPU backend: the Ops interface over the SIMD, multi-threaded op families (matmul.cpp,
// attention.cpp, norm_rope.cpp, elementwise.cpp). Each family picks the best Highway target for
// the running CPU on first use.
#include "ops/cpu/cpu_internal.h"
#include "ops/ops.h"

namespace lathe::ops {
namespace {

class CpuOps final : public Ops {
 public:
  const char* name() const override { return "cpu"; }
  void matmul(const MatmulParams& p) override { cpu::matmul(p); }
  void matmul_exl2(const Exl2MatmulParams& p) override {
    if (!matmul_exl2_glu_unfused(p)) cpu::matmul_exl2(p);
  }
  void rms_norm(const RmsNormParams& p) override { cpu::rms_norm(p); }
  void rope(const RopeParams& p) override { cpu::rope(p); }
  void attention(const AttentionParams& p) override { cpu::attention(p); }
  bool attention_reads_paged() const override { return true; }
  void glu(const GluParams& p) override { cpu::glu(p); }
  void embedding(const EmbeddingParams& p) override { cpu::embedding(p); }
  void add(float* y, const float* x, int64_t n) override { cpu::add(y, x, n); }
  void softcap(float* x, int64_t n, float cap) override { cpu::softcap(x, n, cap); }
  // One pass over the residual instead of add() then rms_norm(). Memory, gather_rows and
  // scatter_add_rows keep the host defaults.
  void add_rms_norm(float* x, const float* delta, const RmsNormParams& p) override { cpu::add_rms_norm(x, delta, p); }
};

}  // namespace

std::unique_ptr<Ops> make_cpu_ops() { return std::make_unique<CpuOps>(); }

}  // namespace lathe::ops
