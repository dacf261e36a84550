#include "io/json_file.h"

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace lathe::io {

std::string read_text_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail(ErrorKind::kNotFound, "file not found: {}", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ErrorKind::kIo, "cannot read {}", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json read_json_file(const std::filesystem::path& path) {
  const std::string text = read_text_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail(ErrorKind::kFormat, "{} is not valid JSON: {}", path.string(), e.what());
  }
}

}  // namespace lathe::io
