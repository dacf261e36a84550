// Shared helpers of the tokenizer tests: where the fetched tokenizer files live, file reading,
// and a tokenizer built from inline JSON.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "test_paths.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace lathe::tok::testing {

// scripts/fetch-tokenizers.sh DEST puts DEST/<name>/tokenizer.json; `make test` uses
// build/tokenizers. LATHE_TOKENIZERS_DIR overrides.
inline std::filesystem::path tokenizers_dir() {
  if (const char* env = std::getenv("LATHE_TOKENIZERS_DIR"); env && *env) return env;
  return ::lathe::testing::binary_dir() / "tokenizers";
}

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace lathe::tok::testing

// Skips loudly when a fetched tokenizer is missing.
#define LATHE_REQUIRE_TOKENIZER(var, name)                                                     \
  const std::filesystem::path var = ::lathe::tok::testing::tokenizers_dir() / (name);         \
  if (!std::filesystem::exists(var / "tokenizer.json"))                                       \
  GTEST_SKIP() << "tokenizer files missing: " << (var / "tokenizer.json")                     \
               << " (run scripts/fetch-tokenizers.sh " << ::lathe::tok::testing::tokenizers_dir() \
               << " or set LATHE_TOKENIZERS_DIR)"
