#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_file.h"

namespace lathe::io {

namespace {
constexpr uint64_t kMaxHeader = 100ull << 20;  // the reference implementation's own cap (100 MB)
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : file_(path) {
  const std::string where = path.string();
  if (file_.size() < 8)
    fail(ErrorKind::kFormat, "{} is truncated ({} bytes): not a safetensors file", where, file_.size());
  uint64_t header_len = 0;
  std::memcpy(&header_len, file_.data(), 8);
  if (header_len > kMaxHeader || header_len > file_.size() - 8)
    fail(ErrorKind::kFormat, "{} is truncated or not a safetensors file (header claims {} bytes, file has {})",
         where, header_len, file_.size());
  data_start_ = 8 + header_len;
  const size_t data_size = file_.size() - data_start_;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(file_.data() + 8, file_.data() + 8 + header_len);
  } catch (const nlohmann::json::parse_error& e) {
    fail(ErrorKind::kFormat, "{}: safetensors header is not valid JSON ({})", where, e.what());
  }
  if (!header.is_object()) fail(ErrorKind::kFormat, "{}: safetensors header is not a JSON object", where);
  for (auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (info.is_object())
        for (auto& [k, v] : info.items())
          if (v.is_string()) metadata_[k] = v.get<std::string>();
      continue;
    }
    try {
      SafetensorsEntry e;
      e.dtype_name = info.at("dtype").get<std::string>();
      for (auto& d : info.at("shape")) e.shape.push_back(d.get<int64_t>());
      const auto& off = info.at("data_offsets");
      e.begin = off.at(0).get<size_t>();
      e.end = off.at(1).get<size_t>();
      if (e.end < e.begin) fail(ErrorKind::kFormat, "{}: tensor '{}' has inverted data offsets", where, name);
      if (e.end > data_size)
        fail(ErrorKind::kFormat,
             "{} is truncated: tensor '{}' ends at byte {} of the data section but the file holds {}; "
             "re-download or re-save the model",
             where, name, e.end, data_size);
      DType dt;
      if (dtype_from_name(e.dtype_name, &dt) && size_t(shape_numel(e.shape)) * dtype_size(dt) != e.end - e.begin)
        fail(ErrorKind::kFormat, "{}: tensor '{}' {} {} needs {} bytes but its offsets span {}", where, name,
             e.dtype_name, shape_to_string(e.shape), size_t(shape_numel(e.shape)) * dtype_size(dt), e.end - e.begin);
      entries_.emplace(name, std::move(e));
    } catch (const nlohmann::json::exception& ex) {
      fail(ErrorKind::kFormat, "{}: malformed header entry for '{}' ({})", where, name, ex.what());
    }
  }
}

TensorView SafetensorsFile::view(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) fail(ErrorKind::kNotFound, "tensor '{}' not found in {}", name, path().string());
  DType dt;
  if (!dtype_from_name(it->second.dtype_name, &dt))
    fail(ErrorKind::kUnsupported, "tensor '{}' in {} has dtype {}, which lathe does not support", name,
         path().string(), it->second.dtype_name);
  return TensorView{file_.data() + data_start_ + it->second.begin, dt, it->second.shape};
}

void write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  std::vector<size_t> begins;
  for (const auto& t : tensors) {
    offset = (offset + 7) / 8 * 8;
    begins.push_back(offset);
    header[t.name] = {{"dtype", dtype_name(t.view.dtype)},
                      {"shape", t.view.shape},
                      {"data_offsets", {offset, offset + t.view.nbytes()}}};
    offset += t.view.nbytes();
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8) text.push_back(' ');  // keeps the data section 8-byte aligned
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail(ErrorKind::kIo, "cannot write {}", tmp.string());
    const uint64_t n = text.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out.write(text.data(), std::streamsize(text.size()));
    size_t pos = 0;
    const char zeros[8] = {};
    for (size_t i = 0; i < tensors.size(); ++i) {
      out.write(zeros, std::streamsize(begins[i] - pos));
      out.write(static_cast<const char*>(tensors[i].view.data), std::streamsize(tensors[i].view.nbytes()));
      pos = begins[i] + tensors[i].view.nbytes();
    }
    if (!out) fail(ErrorKind::kIo, "write to {} failed (disk full?)", tmp.string());
  }
  std::filesystem::rename(tmp, path);  // never leave a half-written file under the real name
}

WeightStore::WeightStore(const std::filesystem::path& dir) : dir_(dir) {
  const auto index = dir / "model.safetensors.index.json";
  const auto single = dir / "model.safetensors";
  std::vector<std::string> shard_names;
  if (std::filesystem::exists(index)) {
    const auto j = read_json_file(index);
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      fail(ErrorKind::kFormat, "{} has no \"weight_map\" object", index.string());
    std::map<std::string, size_t> shard_ids;
    std::map<std::string, std::string> want;  // tensor -> shard file
    for (auto& [tensor, shard] : j["weight_map"].items()) {
      const std::string s = shard.get<std::string>();
      if (!shard_ids.count(s)) {
        shard_ids[s] = shard_names.size();
        shard_names.push_back(s);
      }
      want[tensor] = s;
    }
    for (const auto& s : shard_names) files_.emplace_back(dir / s);
    for (auto& [tensor, shard] : want) {
      const size_t id = shard_ids[shard];
      if (!files_[id].contains(tensor))
        fail(ErrorKind::kFormat, "{} lists '{}' in {}, but that shard does not contain it", index.string(), tensor,
             shard);
      where_[tensor] = id;
    }
    return;
  }
  if (std::filesystem::exists(single)) {
    files_.emplace_back(single);
  } else {
    std::vector<std::filesystem::path> found;
    if (std::filesystem::is_directory(dir))
      for (auto& e : std::filesystem::directory_iterator(dir))
        if (e.path().extension() == ".safetensors") found.push_back(e.path());
    if (found.empty())
      fail(ErrorKind::kNotFound,
           "no model.safetensors or model.safetensors.index.json in {} (lathe reads Hugging Face safetensors "
           "folders; convert .bin/.pt checkpoints with save_pretrained(safe_serialization=True))",
           dir.string());
    std::sort(found.begin(), found.end());
    for (auto& p : found) files_.emplace_back(p);
  }
  for (size_t i = 0; i < files_.size(); ++i)
    for (auto& [name, e] : files_[i].entries()) where_[name] = i;
}

std::optional<TensorView> WeightStore::find(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return std::nullopt;
  return files_[it->second].view(name);
}

TensorView WeightStore::require(const std::string& name, const Shape& shape) const {
  auto v = find(name);
  if (!v) fail(ErrorKind::kNotFound, "tensor '{}' is missing from the weights in {}", name, dir_.string());
  if (v->shape != shape)
    fail(ErrorKind::kFormat, "tensor '{}' has shape {} but the config implies {}", name, shape_to_string(v->shape),
         shape_to_string(shape));
  if (!dtype_is_float(v->dtype) || v->dtype == DType::kF64)
    fail(ErrorKind::kUnsupported, "tensor '{}' has dtype {}; lathe runs F32, F16 and BF16 weights", name,
         dtype_name(v->dtype));
  return *v;
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  for (auto& [n, i] : where_) out.push_back(n);
  return out;
}

}  // namespace lathe::io
