#include "quant/exl2_groups.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace lathe::quant {

std::vector<Exl2Group> exl2_groups_for_bpw(double bits, int64_t K, int64_t N, int64_t group_size) {
  if (!(bits >= 2.0 && bits <= 8.5))
    fail(ErrorKind::kInvalidArgument, "{} bits per weight is outside what EXL2 can store (about 2.2 to 8.1)", bits);
  static const int kWidths[] = {8, 6, 5, 4, 3, 2};
  group_size = std::min(group_size, K);
  const int64_t units = K / group_size, tail = K % group_size;
  const int64_t n_groups = units + (tail ? 1 : 0);
  // The format's overhead per weight at this layout (scales, maxima, group table, permutation),
  // then the payload width that leaves: the first groups at `hi`, the rest at `lo`.
  const double overhead =
      (32.0 * double(K) + double(n_groups) * (16.0 + 32.0 + 4.0 * double(N))) / (double(K) * double(N));
  const double target = bits - overhead;
  int hi = 8, lo = 8;
  for (int b : kWidths)
    if (double(b) >= target) hi = b;
  for (int b : kWidths)
    if (double(b) <= target) {
      lo = b;
      break;
    }
  if (target < 2.0) hi = lo = 2;
  int64_t hi_groups = units;
  if (hi != lo)
    hi_groups = std::clamp<int64_t>(int64_t(std::lround((target - lo) / double(hi - lo) * double(n_groups))), 0, units);
  std::vector<Exl2Group> groups;
  for (int64_t u = 0; u < units; ++u) groups.push_back({u < hi_groups ? hi : lo, group_size});
  if (tail) groups.push_back({lo, tail});
  return groups;
}

}  // namespace lathe::quant
