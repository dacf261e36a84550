#include "server/server_context.h"

#include "core/log.h"
#include "server/json_text.h"

namespace lathe::server {

ActiveGeneration::ActiveGeneration(ServerContext& ctx) : ctx_(ctx) {
  std::lock_guard lk(ctx_.active_mu);
  ++ctx_.active;
}

ActiveGeneration::~ActiveGeneration() {
  {
    std::lock_guard lk(ctx_.active_mu);
    --ctx_.active;
  }
  ctx_.active_cv.notify_all();
}

namespace {
// Nesting depth of JSON text, strings skipped; stops counting once past the limit. Checked before
// parsing so a body of a million '[' costs one pass, not a million nested values.
bool depth_within(const std::string& text, int limit) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}
}  // namespace

nlohmann::json parse_body(const httplib::Request& req, int max_depth) {
  if (req.body.empty()) throw ApiError(400, "the request body is empty; send a JSON object");
  if (!depth_within(req.body, max_depth))
    throw ApiError(400, fmt::format("the request JSON nests deeper than {} levels", max_depth));
  try {
    return nlohmann::json::parse(req.body);
  } catch (const nlohmann::json::exception& e) {
    throw ApiError(400, fmt::format("the request body is not valid JSON: {}", e.what()));
  }
}

void send_json(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(to_text(body), "application/json");
}

void send_error(httplib::Response& res, const ApiError& error) {
  res.status = error.status();
  res.set_content(error.body(), "application/json");
}

void guarded(httplib::Response& res, const std::function<void()>& route) {
  try {
    route();
  } catch (const ApiError& e) {
    send_error(res, e);
  } catch (const Error& e) {
    send_error(res, to_api_error(e));
  } catch (const nlohmann::json::exception& e) {
    send_error(res, ApiError(400, fmt::format("malformed request: {}", e.what())));
  } catch (const std::exception& e) {
    log(LogLevel::kError, "serve", "request failed: {}", e.what());
    send_error(res, ApiError(500, fmt::format("internal error: {}", e.what())));
  }
}

}  // namespace lathe::server
