#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_file.h"

namespace lathe::io {
namespace {

namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
  auto d = fs::temp_directory_path() / ("lathe_io_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

Tensor ramp(DType dt, Shape shape) {
  Tensor t(dt, shape);
  std::vector<float> v(size_t(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i) * 0.5f - 3.f;
  convert_from_f32(v.data(), t.data(), dt, v.size());
  return t;
}

TEST(Safetensors, RoundTripAllFloatDtypes) {
  const auto dir = temp_dir("rt");
  Tensor a = ramp(DType::kF32, {3, 5}), b = ramp(DType::kBF16, {7}), c = ramp(DType::kF16, {2, 2, 3});
  write_safetensors(dir / "model.safetensors", {{"a", a.view()}, {"b", b.view()}, {"c", c.view()}}, {{"format", "pt"}});
  SafetensorsFile f(dir / "model.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  for (auto [name, t] : {std::pair{"a", &a}, {"b", &b}, {"c", &c}}) {
    TensorView v = f.view(name);
    EXPECT_EQ(v.dtype, t->dtype());
    EXPECT_EQ(v.shape, t->shape());
    EXPECT_EQ(0, std::memcmp(v.data, t->data(), t->nbytes()));
  }
  EXPECT_THROW(f.view("missing"), Error);
}

TEST(Safetensors, TruncatedFileIsAClearError) {
  const auto dir = temp_dir("trunc");
  Tensor a = ramp(DType::kF32, {64, 64});
  write_safetensors(dir / "model.safetensors", {{"w", a.view()}});
  fs::resize_file(dir / "model.safetensors", fs::file_size(dir / "model.safetensors") - 100);
  try {
    SafetensorsFile f(dir / "model.safetensors");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
  }
  // Cut inside the header too.
  fs::resize_file(dir / "model.safetensors", 20);
  EXPECT_THROW(SafetensorsFile(dir / "model.safetensors"), Error);
  fs::resize_file(dir / "model.safetensors", 3);
  EXPECT_THROW(SafetensorsFile(dir / "model.safetensors"), Error);
}

TEST(Safetensors, GarbageHeaderIsAFormatError) {
  const auto dir = temp_dir("garbage");
  std::ofstream out(dir / "x.safetensors", std::ios::binary);
  const uint64_t n = 5;
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << "{nope";
  out.close();
  try {
    SafetensorsFile f(dir / "x.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
  }
}

TEST(Safetensors, MissingFileIsNotFound) {
  try {
    SafetensorsFile f("/nonexistent/lathe/model.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/lathe/model.safetensors"), std::string::npos);
  }
}

TEST(WeightStore, ShardedFolderResolvesEveryTensor) {
  const auto dir = temp_dir("shards");
  Tensor a = ramp(DType::kBF16, {4, 4}), b = ramp(DType::kF32, {4});
  write_safetensors(dir / "model-00001-of-00002.safetensors", {{"x.weight", a.view()}});
  write_safetensors(dir / "model-00002-of-00002.safetensors", {{"y.weight", b.view()}});
  nlohmann::json idx = {{"metadata", {{"total_size", 48}}},
                        {"weight_map",
                         {{"x.weight", "model-00001-of-00002.safetensors"},
                          {"y.weight", "model-00002-of-00002.safetensors"}}}};
  std::ofstream(dir / "model.safetensors.index.json") << idx.dump();
  WeightStore store(dir);
  EXPECT_EQ(store.names().size(), 2u);
  EXPECT_EQ(store.require("x.weight", {4, 4}).dtype, DType::kBF16);
  EXPECT_EQ(store.require("y.weight", {4}).as<float>()[1], -2.5f);
  try {
    store.require("x.weight", {4, 5});
    FAIL();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("x.weight"), std::string::npos);
    EXPECT_NE(m.find("[4, 4]"), std::string::npos);
    EXPECT_NE(m.find("[4, 5]"), std::string::npos);
  }
  EXPECT_THROW(store.require("z.weight", {1}), Error);
}

TEST(WeightStore, IndexPointingAtWrongShardIsAnError) {
  const auto dir = temp_dir("badidx");
  Tensor a = ramp(DType::kF32, {2});
  write_safetensors(dir / "s1.safetensors", {{"x", a.view()}});
  std::ofstream(dir / "model.safetensors.index.json") << R"({"weight_map": {"y": "s1.safetensors"}})";
  EXPECT_THROW(WeightStore{dir}, Error);
}

TEST(WeightStore, EmptyFolderSaysWhatIsMissing) {
  const auto dir = temp_dir("empty");
  try {
    WeightStore store(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos);
  }
}

TEST(JsonFile, MalformedJsonNamesTheFile) {
  const auto dir = temp_dir("json");
  std::ofstream(dir / "config.json") << "{\"a\": ";
  try {
    read_json_file(dir / "config.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos);
  }
}

}  // namespace
}  // namespace lathe::io
