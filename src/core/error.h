// Typed errors for the whole library: every failure carries a kind (mapped to exit codes / HTTP
// status only at the boundary) and a one-line message that says what is wrong and what to do.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace lathe {

enum class ErrorKind {
  kInvalidArgument,  // bad user input (flag, id out of range, malformed request)
  kNotFound,         // a file or tensor or key that should exist does not
  kIo,               // the OS refused (open, read, mmap)
  kFormat,           // a file exists but its contents are malformed or truncated
  kUnsupported,      // valid input we do not handle (architecture, dtype, rope type)
  kOutOfRange,       // a size limit (context length, KV capacity)
  kInternal,         // a broken invariant: a bug in lathe
};

const char* to_string(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

template <typename... Args>
[[noreturn]] void fail(ErrorKind kind, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(kind, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace lathe

// Cheap invariant checks stay on in release builds; the message names the broken condition.
#define LATHE_CHECK(cond)                                                                       \
  do {                                                                                          \
    if (!(cond))                                                                                \
      ::lathe::fail(::lathe::ErrorKind::kInternal, "internal check failed: {} ({}:{})", #cond, \
                    __FILE__, __LINE__);                                                        \
  } while (0)
