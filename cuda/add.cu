// Elementwise sum (the bypass Add):  y = a + b   (12 bytes per element)
#include "checks.hpp"
#include "launch.cuh"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"

namespace lowbit::cuda {
namespace {

// y may alias a or b: each element is read before it is written, by one thread.
__global__ void add_kernel(const float* a, const float* b, std::int64_t n, float* y) {
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = a[i] + b[i];
}

}  // namespace

void add(const float* a, const float* b, std::int64_t n, float* y, cudaStream_t stream) {
  lowbit::detail::check_add(a, b, n, y);
  if (n == 0) return;
  const unsigned grid = detail::grid_for(n, detail::kBlockThreads);
  add_kernel<<<grid, detail::kBlockThreads, 0, stream>>>(a, b, n, y);
  LOWBIT_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
