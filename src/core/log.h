// Leveled logging to stderr with a subsystem prefix. Nothing in per-token hot paths above debug.
#pragma once

#include <fmt/format.h>

#include <cstdio>

namespace lathe {

enum class LogLevel { kDebug, kInfo, kWarn, kError, kQuiet };
LogLevel log_level();
void set_log_level(LogLevel level);

template <typename... Args>
void log(LogLevel level, const char* subsystem, fmt::format_string<Args...> format, Args&&... args) {
  if (level < log_level()) return;
  static constexpr const char* kNames[] = {"debug", "info", "warn", "error", ""};
  fmt::print(stderr, "[{}] {}: {}\n", subsystem, kNames[int(level)],
             fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace lathe
