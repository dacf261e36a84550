// Thread-level parallelism for the CPU backend. OpenMP keeps a warm pool (threads spin briefly
// between regions), which matters for decode where one token is ~100 small parallel regions.
#pragma once

#include <cstdint>

namespace lathe {

// Number of worker threads the CPU backend uses (defaults to the number of cores).
int num_threads();
void set_num_threads(int n);

// Calls fn(begin, end) on disjoint chunks covering [0, n), in parallel. Chunks are at least
// `grain` long so tiny loops stay on one thread.
template <typename Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  const int threads = num_threads();
  if (threads <= 1 || n <= grain) {
    fn(int64_t(0), n);
    return;
  }
  int64_t chunks = (n + grain - 1) / grain;
  if (chunks > threads) chunks = threads;
#pragma omp parallel for num_threads(int(chunks)) schedule(static, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = n * c / chunks;
    const int64_t end = n * (c + 1) / chunks;
    fn(begin, end);
  }
}

}  // namespace lathe
