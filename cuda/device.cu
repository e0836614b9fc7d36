// Device queries shared by the launchers.
#include <array>
#include <atomic>

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

bool device_available() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return count > 0;
}

}  // namespace lowbit::cuda
