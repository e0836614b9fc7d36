// A move-only, typed device allocation (cudaMalloc/cudaFree), for trainers and
// tests that hand lowbit::cuda its buffers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdio>
#include <utility>
#include <vector>

#include "lowbit/error.hpp"
#include "lowbit/types.hpp"

namespace lowbit::cuda {

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  /// `count` uninitialised elements. Throws lowbit::Error if the allocation fails.
  explicit DeviceBuffer(std::size_t count) : count_(count) {
    if (count_ > 0) LOWBIT_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&data_), bytes()));
  }
  /// A device copy of `host`.
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }

  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(count_, other.count_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  /// Frees the memory; a failure is logged, never thrown.
  ~DeviceBuffer() {
    if (data_ == nullptr) return;
    if (const cudaError_t status = cudaFree(data_); status != cudaSuccess)
      std::fprintf(stderr, "lowbit: cudaFree failed: %s\n", cudaGetErrorString(status));
  }

  T* data() const { return data_; }
  std::size_t size() const { return count_; }
  std::size_t bytes() const { return count_ * sizeof(T); }
  /// The buffer as scratch memory for the reducing ops.
  Workspace as_workspace() const { return {data_, bytes()}; }

  /// Copies host.size() == size() elements to the device, in order with the
  /// work queued on `stream`, and waits for the copy. The default is the legacy
  /// default stream, which does not order a non-blocking stream's work: pass
  /// the stream whose kernels use the buffer.
  void upload(const std::vector<T>& host, cudaStream_t stream = nullptr) {
    LOWBIT_EXPECTS(host.size() == count_, "upload of " + std::to_string(host.size()) +
                                              " elements into a buffer of " +
                                              std::to_string(count_));
    if (count_ == 0) return;
    LOWBIT_CUDA_TRY(
        cudaMemcpyAsync(data_, host.data(), bytes(), cudaMemcpyHostToDevice, stream));
    LOWBIT_CUDA_TRY(cudaStreamSynchronize(stream));
  }
  /// The whole buffer on the host, once the work queued on `stream` before
  /// it is done (see upload()).
  std::vector<T> download(cudaStream_t stream = nullptr) const {
    std::vector<T> host(count_);
    if (count_ == 0) return host;
    LOWBIT_CUDA_TRY(
        cudaMemcpyAsync(host.data(), data_, bytes(), cudaMemcpyDeviceToHost, stream));
    LOWBIT_CUDA_TRY(cudaStreamSynchronize(stream));
    return host;
  }

 private:
  T* data_ = nullptr;
  std::size_t count_ = 0;
};

}  // namespace lowbit::cuda
