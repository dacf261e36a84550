// Tensor (owning, 64-byte aligned host memory) and TensorView (non-owning window onto memory owned
// elsewhere: an mmap'd safetensors file, a Tensor, a KV cache). Row-major; shape[0] is the slowest
// dimension, as in torch.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace lathe {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_to_string(const Shape& shape);  // "[4, 64]"

struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  Shape shape;

  int64_t numel() const { return shape_numel(shape); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  int64_t dim(size_t i) const { return shape.at(i); }
  int64_t rank() const { return int64_t(shape.size()); }
  bool empty() const { return data == nullptr; }
  template <typename T>
  const T* as() const { return static_cast<const T*>(data); }
};

struct AlignedFree {
  void operator()(void* p) const;
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, Shape shape);  // zero-filled
  static Tensor zeros(DType dtype, Shape shape) { return Tensor(dtype, std::move(shape)); }
  static Tensor f32(Shape shape) { return Tensor(DType::kF32, std::move(shape)); }

  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;
  Tensor(const Tensor&) = delete;  // copies are explicit: copy()
  Tensor& operator=(const Tensor&) = delete;
  Tensor copy() const;

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  void* data() { return data_.get(); }
  const void* data() const { return data_.get(); }
  template <typename T>
  T* as() { return static_cast<T*>(data_.get()); }
  template <typename T>
  const T* as() const { return static_cast<const T*>(data_.get()); }
  TensorView view() const { return TensorView{data_.get(), dtype_, shape_}; }
  // Same storage, new shape with the same element count.
  void reshape(Shape shape);

 private:
  DType dtype_ = DType::kF32;
  Shape shape_;
  std::unique_ptr<void, AlignedFree> data_;
};

}  // namespace lathe
