// Where tests find ../shared (fixtures, models, data). LATHE_SHARED overrides the build-time path.
#pragma once

#include <filesystem>
#include <string>

namespace lathe::testing {

std::filesystem::path shared_dir();
// shared_dir()/rel if it exists, else empty (callers GTEST_SKIP with a message naming it).
std::filesystem::path shared_path(const std::string& rel);
std::filesystem::path binary_dir();
std::filesystem::path source_dir();

}  // namespace lathe::testing

// Skips the current test loudly when a shared fixture is missing.
#define LATHE_REQUIRE_SHARED(var, rel)                                                        \
  const std::filesystem::path var = ::lathe::testing::shared_path(rel);                      \
  if (var.empty()) GTEST_SKIP() << "shared fixture missing: " << (rel)                        \
                                << " (expected under " << ::lathe::testing::shared_dir() << ")"
