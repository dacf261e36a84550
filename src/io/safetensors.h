// safetensors files (https://github.com/huggingface/safetensors, format: 8-byte little-endian header
// length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
// then the data). Read by mmap; every offset is validated against the file size so a truncated or
// corrupt file is a clear error, never an out-of-bounds read.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/mapped_file.h"

namespace lathe::io {

struct SafetensorsEntry {
  std::string dtype_name;  // as written ("BF16", "F8_E4M3", ...): may be one lathe cannot compute with
  Shape shape;
  size_t begin = 0;  // byte offsets into the data section
  size_t end = 0;
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);

  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // A view into the mapped file; throws if the name is absent or its dtype is not one lathe knows.
  TensorView view(const std::string& name) const;
  const std::filesystem::path& path() const { return file_.path(); }

 private:
  MappedFile file_;
  size_t data_start_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

struct NamedTensor {
  std::string name;
  TensorView view;
};

// Writes tensors (in the given order, 8-byte aligned data) and optional string metadata.
void write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// All the safetensors of a Hugging Face model folder: model.safetensors, or the shards listed in
// model.safetensors.index.json. Lookups go to the shard that holds the name.
class WeightStore {
 public:
  explicit WeightStore(const std::filesystem::path& dir);

  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  std::optional<TensorView> find(const std::string& name) const;
  // The tensor, which must exist and have exactly `shape`; errors name the tensor and both shapes.
  TensorView require(const std::string& name, const Shape& shape) const;
  std::vector<std::string> names() const;
  const std::vector<SafetensorsFile>& files() const { return files_; }

 private:
  std::filesystem::path dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // name -> index into files_
};

}  // namespace lathe::io
