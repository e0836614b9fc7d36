// UniqueHandle: the one move-only owner behind every CUDA, cuDNN and cuBLAS
// object of the CUDA backend (stream, graph, handles, descriptors).
#pragma once

#include <cstdio>
#include <utility>

namespace lowbit::gpu {

/// Owns one library object (an opaque pointer type). `Destroy` is a stateless
/// functor that frees it and logs a failure: destructors never throw.
template <class Raw, class Destroy>
class UniqueHandle {
 public:
  UniqueHandle() = default;
  explicit UniqueHandle(Raw raw) noexcept : raw_(raw) {}
  UniqueHandle(UniqueHandle&& other) noexcept : raw_(std::exchange(other.raw_, Raw{})) {}
  UniqueHandle& operator=(UniqueHandle&& other) noexcept {
    std::swap(raw_, other.raw_);
    return *this;
  }
  UniqueHandle(const UniqueHandle&) = delete;
  UniqueHandle& operator=(const UniqueHandle&) = delete;
  ~UniqueHandle() {
    if (raw_ != Raw{}) Destroy{}(raw_);
  }

  Raw get() const noexcept { return raw_; }

 private:
  Raw raw_{};
};

/// What a destructor does with a failed release: say so on stderr.
inline void log_release_failure(const char* call, const char* error) noexcept {
  std::fprintf(stderr, "lowbit: %s failed: %s\n", call, error);
}

}  // namespace lowbit::gpu
