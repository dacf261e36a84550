#include "server/api_error.h"

#include <nlohmann/json.hpp>

#include "server/json_text.h"

namespace lathe::server {

ApiError::ApiError(int status, std::string message, std::string param, std::string code)
    : std::runtime_error(std::move(message)), status_(status), param_(std::move(param)), code_(std::move(code)) {}

const char* ApiError::type() const {
  switch (status_) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable_error";
    default: return status_ >= 500 ? "server_error" : "invalid_request_error";
  }
}

std::string ApiError::body() const {
  nlohmann::json e = {{"message", what()}, {"type", type()}, {"param", nullptr}, {"code", nullptr}};
  if (!param_.empty()) e["param"] = param_;
  if (!code_.empty()) e["code"] = code_;
  return to_text(nlohmann::json{{"error", std::move(e)}});
}

ApiError to_api_error(const Error& e, const std::string& param) {
  switch (e.kind()) {
    case ErrorKind::kInvalidArgument:
    case ErrorKind::kOutOfRange:
    case ErrorKind::kFormat:  // e.g. a chat template's raise_exception over the messages given
      return ApiError(400, e.what(), param);
    case ErrorKind::kUnsupported: return ApiError(400, e.what(), param, "unsupported");
    default: return ApiError(500, e.what(), param);
  }
}

}  // namespace lathe::server
