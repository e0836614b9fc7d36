#include <utility>

#include "lowbit/backend.hpp"

namespace lowbit {

Buffer::Buffer(void* data, std::size_t bytes, Release release) noexcept
    : data_(data), bytes_(bytes), release_(release) {}

Buffer::Buffer(Buffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      release_(std::exchange(other.release_, nullptr)) {}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  std::swap(data_, other.data_);
  std::swap(bytes_, other.bytes_);
  std::swap(release_, other.release_);
  return *this;
}

Buffer::~Buffer() {
  if (data_ != nullptr && release_ != nullptr) release_(data_);
}

}  // namespace lowbit
