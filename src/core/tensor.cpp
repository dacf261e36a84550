#include "core/tensor.h"

#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace lathe {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_to_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

void AlignedFree::operator()(void* p) const { std::free(p); }

Tensor::Tensor(DType dtype, Shape shape) : dtype_(dtype), shape_(std::move(shape)) {
  for (int64_t d : shape_) {
    if (d < 0) fail(ErrorKind::kInvalidArgument, "negative tensor dimension in {}", shape_to_string(shape_));
  }
  const size_t bytes = nbytes();
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (!p) fail(ErrorKind::kOutOfRange, "out of host memory allocating {} bytes", bytes);
  std::memset(p, 0, rounded == 0 ? 64 : rounded);
  data_.reset(p);
}

Tensor Tensor::copy() const {
  Tensor t(dtype_, shape_);
  if (nbytes()) std::memcpy(t.data(), data(), nbytes());
  return t;
}

void Tensor::reshape(Shape shape) {
  if (shape_numel(shape) != numel())
    fail(ErrorKind::kInternal, "reshape {} -> {} changes the element count", shape_to_string(shape_),
         shape_to_string(shape));
  shape_ = std::move(shape);
}

}  // namespace lathe
