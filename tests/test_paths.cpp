#include "test_paths.h"

#include <cstdlib>

namespace lathe::testing {

std::filesystem::path shared_dir() {
  if (const char* env = std::getenv("LATHE_SHARED"); env && *env) return env;
  return std::filesystem::path(LATHE_SHARED_DIR).lexically_normal();
}

std::filesystem::path shared_path(const std::string& rel) {
  auto p = shared_dir() / rel;
  return std::filesystem::exists(p) ? p : std::filesystem::path();
}

std::filesystem::path binary_dir() { return LATHE_BINARY_DIR; }
std::filesystem::path source_dir() { return LATHE_SOURCE_DIR; }

}  // namespace lathe::testing
