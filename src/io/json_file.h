// Reading JSON files with errors that name the file and the problem.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>

namespace lathe::io {

nlohmann::json read_json_file(const std::filesystem::path& path);
std::string read_text_file(const std::filesystem::path& path);

}  // namespace lathe::io
