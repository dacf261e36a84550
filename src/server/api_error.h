// Errors a route answers with: an HTTP status and OpenAI's error body
// {"error": {"message", "type", "param", "code"}}. Handlers throw ApiError; the server turns it (and
// any lathe::Error escaping a handler) into the response, so every failure has the same shape.
#pragma once

#include <stdexcept>
#include <string>

#include <fmt/format.h>

#include "core/error.h"

namespace lathe::server {

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = {}, std::string code = {});
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }
  // OpenAI's error type for the status: invalid_request_error, authentication_error, ...
  const char* type() const;
  std::string body() const;  // the JSON text

 private:
  int status_;
  std::string param_, code_;
};

// 400 naming the request field at fault.
template <typename... Args>
[[noreturn]] void bad_field(const std::string& param, fmt::format_string<Args...> format, Args&&... args) {
  throw ApiError(400, fmt::format(format, std::forward<Args>(args)...), param);
}

// A library error raised while serving a request, as the client should see it: bad input and size
// limits are the client's (400), anything else is the server's (500).
ApiError to_api_error(const Error& e, const std::string& param = {});

}  // namespace lathe::server
