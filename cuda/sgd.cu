// One SGD step over the flat parameter buffer (PyTorch's rule, sgd_update in
// nn_element.hpp):
//   g = grad + wd·p (i < decay_count),  v = momentum·v + g,  p = p - lr·v
// One launch; 20 bytes per element.
#include "checks.hpp"
#include "launch.cuh"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "lowbit/nn_element.hpp"

namespace lowbit::cuda {
namespace {

__global__ void sgd_step_kernel(float* params, const float* grads, float* velocity,
                                std::int64_t n, std::int64_t decay_count, SgdConfig config) {
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    float p = params[i];
    float v = velocity[i];
    sgd_update(p, grads[i], v, i < decay_count, config);
    params[i] = p;
    velocity[i] = v;
  }
}

}  // namespace

void sgd_step(float* params, const float* grads, float* velocity, std::int64_t n,
              std::int64_t decay_count, SgdConfig config, cudaStream_t stream) {
  lowbit::detail::check_sgd_step(params, grads, velocity, n, decay_count, config);
  if (n == 0) return;
  const unsigned grid = detail::grid_for(n, detail::kBlockThreads);
  sgd_step_kernel<<<grid, detail::kBlockThreads, 0, stream>>>(params, grads, velocity, n,
                                                              decay_count, config);
  LOWBIT_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
