// Integer-only inference: convolution (and Linear, its 1×1 case) with int32
// accumulation and fixed-point requantization, and max pooling of codes. Each
// thread computes its outputs with integer_element.hpp's functions, as the
// reference does: integers, so the same codes.
#include "checks.hpp"
#include "launch.cuh"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "lowbit/integer_element.hpp"

namespace lowbit::cuda {
namespace {

/// One thread per output code, grid-stride.
__global__ void integer_conv2d_kernel(Conv2dShape s, const std::uint8_t* x,
                                      std::int32_t x_zero_point, int x_fraction_bits, const std::uint8_t* w,
                                      const std::int32_t* w_zero_point, const std::int32_t* bias,
                                      int accumulator_shift, Requantization r, std::uint8_t* y) {
  const std::int64_t oh = s.out_height(), ow = s.out_width();
  const std::int64_t total = s.batch * s.out_channels * oh * ow;
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const std::int64_t ox = i % ow, oy = i / ow % oh, k = i / (ow * oh) % s.out_channels;
    y[i] = integer_conv_output(s, x, x_zero_point, x_fraction_bits, w, w_zero_point, bias, accumulator_shift, r,
                               i / (ow * oh * s.out_channels), k, oy, ox);
  }
}

__global__ void max_pool_codes_kernel(Pool2dShape s, const std::uint8_t* x, std::uint8_t* y) {
  const std::int64_t oh = s.out_height(), ow = s.out_width();
  const std::int64_t total = s.batch * s.channels * oh * ow;
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += stride)
    y[i] = max_pool_code(s, x, i / (ow * oh), i / ow % oh, i % ow);
}

}  // namespace

void integer_conv2d(const Conv2dShape& s, const std::uint8_t* x, std::int32_t x_zero_point, int x_fraction_bits,
                    const std::uint8_t* w, const std::int32_t* w_zero_point,
                    const std::int32_t* bias, int accumulator_shift, const Requantization& r,
                    std::uint8_t* y, cudaStream_t stream) {
  lowbit::detail::check_integer_conv2d(s, x, x_zero_point, x_fraction_bits, w, w_zero_point, bias,
                                       accumulator_shift, r, y);
  const std::int64_t total = s.batch * s.out_channels * s.out_height() * s.out_width();
  if (total == 0) return;
  integer_conv2d_kernel<<<detail::grid_for(total, detail::kBlockThreads), detail::kBlockThreads, 0,
                          stream>>>(s, x, x_zero_point, x_fraction_bits, w, w_zero_point, bias, accumulator_shift, r,
                                    y);
  LOWBIT_LAUNCH_CHECK();
}

void max_pool_codes(const Pool2dShape& s, const std::uint8_t* x, std::uint8_t* y,
                    cudaStream_t stream) {
  lowbit::detail::check_max_pool_codes(s, x, y);
  const std::int64_t total = s.batch * s.channels * s.out_height() * s.out_width();
  if (total == 0) return;
  max_pool_codes_kernel<<<detail::grid_for(total, detail::kBlockThreads), detail::kBlockThreads, 0,
                          stream>>>(s, x, y);
  LOWBIT_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
