// PyTorch's qparams per channel from a range (affine_qparams in
// nn_element.hpp, torch.ao.quantization's _calculate_qparams):
//   affine:    scale = (max⁺ - min⁻)/(qmax - qmin),  zp = clamp(qmin - round(min⁻/scale))
//   symmetric: scale = max(-min⁻, max⁺)/((qmax - qmin)/2),  zp = 0 or (qmin + qmax)/2
// with min⁻ = min(min, 0), max⁺ = max(max, 0), scale >= FLT_EPSILON.
#include "checks.hpp"
#include "launch.cuh"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "lowbit/nn_element.hpp"

namespace lowbit::cuda {
namespace {

__global__ void affine_params_kernel(const float* min, const float* max, std::int64_t channels,
                                     AffineQuant quant, bool symmetric, float* scale,
                                     std::int32_t* zero_point) {
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t c = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; c < channels;
       c += stride) {
    const AffineQparams p = affine_qparams(min[c], max[c], quant.qmin, quant.qmax, symmetric);
    scale[c] = p.scale;
    zero_point[c] = p.zero_point;
  }
}

}  // namespace

void affine_params_from_range(const float* min, const float* max, std::int64_t channels,
                              AffineQuant quant, bool symmetric, float* scale,
                              std::int32_t* zero_point, cudaStream_t stream) {
  lowbit::detail::check_affine_params_from_range(min, max, channels, quant, scale, zero_point);
  if (channels == 0) return;
  const unsigned grid = detail::grid_for(channels, detail::kBlockThreads);
  affine_params_kernel<<<grid, detail::kBlockThreads, 0, stream>>>(min, max, channels, quant,
                                                                   symmetric, scale, zero_point);
  LOWBIT_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
