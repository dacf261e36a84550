// GPTQ for the quantizer (engine-private): an input Hessian's act-order and inverse factor, made
// once per tap point and shared by every projection and layout that reads that input, and one
// projection quantized with it on the backend (ops::Ops::gptq_factor / gptq_exl2: the GPU's
// cuSOLVER/cuBLAS where the Hessian already is), packed into an EXL2 layer on the host when the
// final pass stores it.
#pragma once

#include <cstdint>
#include <vector>

#include "ops/ops.h"
#include "quant/exl2.h"
#include "quant/exl2_groups.h"

namespace lathe::engine::qz {

struct GptqOptions {
  double damp = 0.12;  // fraction of the mean Hessian diagonal added to it
};

class GptqFactor {
 public:
  // h: [k, k] input Hessian (double, backend memory). Damping starts at damp * the mean diagonal
  // and doubles until the matrix factors (10 tries; then a clear error).
  GptqFactor(ops::Ops& ops, const double* h, int64_t k, double damp);
  // Round to nearest: channel order kept, no error feedback.
  GptqFactor(ops::Ops& ops, int64_t k);

  int64_t k() const { return k_; }
  const std::vector<int32_t>& perm() const { return perm_; }
  const int32_t* perm_backend() const { return static_cast<const int32_t*>(perm_b_.data()); }
  const float* u() const { return static_cast<const float*>(u_.data()); }  // null: round to nearest
  const double* h() const { return h_; }

 private:
  int64_t k_;
  const double* h_ = nullptr;
  std::vector<int32_t> perm_;
  ops::Buffer perm_b_, u_;
};

// One projection's quantized values in backend memory (what gptq_exl2 writes).
struct GptqResult {
  std::vector<quant::Exl2Group> groups;
  int64_t out_features = 0, in_features = 0;
  ops::Buffer q, codes, maxes;
};

// w: the projection's weight [out, in] in backend memory; wq (optional, backend, [out, in] f16
// bits) gets the dequantized weight.
GptqResult gptq_solve(ops::Ops& ops, const GptqFactor& f, const ops::Weight& w,
                      const std::vector<quant::Exl2Group>& groups, uint16_t* wq = nullptr);
// The stored EXL2 layer (host); bias: host [out] or null.
quant::Exl2Matrix gptq_pack(ops::Ops& ops, const GptqFactor& f, const GptqResult& r, const float* bias);
// ||w - wq|| / ||w|| with w host and wq f16 bits in backend memory, both [out, in].
double relative_error(ops::Ops& ops, const ops::Weight& w_host, const uint16_t* wq, int64_t rows, int64_t cols);

}  // namespace lathe::engine::qz
