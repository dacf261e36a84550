#include "core/parallel.h"

#include <omp.h>

#include <thread>

namespace lathe {

namespace {
int g_threads = 0;  // 0: not yet chosen; read-mostly configuration, set once by the CLI
}

int num_threads() {
  if (g_threads <= 0) {
    int n = omp_get_max_threads();
    g_threads = n > 0 ? n : int(std::thread::hardware_concurrency());
    if (g_threads <= 0) g_threads = 1;
  }
  return g_threads;
}

void set_num_threads(int n) { g_threads = n > 0 ? n : 0; }

}  // namespace lathe
