// Device queries shared by the launchers.
#include <array>
#include <atomic>
#include <string>

#include "launch.cuh"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"

namespace lowbit::cuda {

namespace detail {

int multiprocessor_count() {
  static std::array<std::atomic<int>, 64> cached{};
  int device = 0;
  LOWBIT_CUDA_TRY(cudaGetDevice(&device));
  if (device < 0 || device >= static_cast<int>(cached.size())) device = 0;
  int count = cached[device].load(std::memory_order_relaxed);
  if (count == 0) {
    LOWBIT_CUDA_TRY(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    cached[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

}  // namespace detail

std::string device_problem() {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status == cudaSuccess && count == 0) return "no CUDA device found";
  // A device can be listed yet fail to start (driver mismatch, a device in a
  // bad state): cudaFree(nullptr) creates the context, which surfaces that.
  if (status == cudaSuccess) status = cudaFree(nullptr);
  if (status == cudaSuccess) return {};
  (void)cudaGetLastError();  // the error is reported here, not by the next check
  return std::string("no usable CUDA device: ") + cudaGetErrorName(status) + ": " +
         cudaGetErrorString(status);
}

bool device_available() { return device_problem().empty(); }

}  // namespace lowbit::cuda
