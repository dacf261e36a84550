// The default accumulate_gram (host memory): the quantizer's input Hessians on the CPU backends,
// and the reference the device backends are tested against.
#include <Eigen/Dense>
#include <algorithm>

#include "core/error.h"
#include "ops/ops.h"

namespace lathe::ops {

void Ops::accumulate_gram(const GramParams& p) {
  if (p.rows < 0 || p.dim < 0) fail(ErrorKind::kInvalidArgument, "accumulate_gram: negative size");
  if (p.rows == 0 || p.dim == 0) return;
  if (!host_memory())
    fail(ErrorKind::kInternal, "backend {} must implement accumulate_gram (its memory is not host memory)", name());
  using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  // Rows in slices, so the double copy of x stays small beside h.
  constexpr int64_t kSlice = 1024;
  Eigen::Map<MatD> H(p.h, p.dim, p.dim);
  for (int64_t r0 = 0; r0 < p.rows; r0 += kSlice) {
    const int64_t n = std::min(kSlice, p.rows - r0);
    const MatD X = Eigen::Map<const MatF>(p.x + r0 * p.dim, n, p.dim).cast<double>();
    H.noalias() += X.transpose() * X;
  }
}

}  // namespace lathe::ops
