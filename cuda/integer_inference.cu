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
                                      std::int32_t x_zero_point, int x_fraction_bits,
                                      const std::uint8_t* w, const std::int32_t* w_zero_point,
                                      const std::int32_t* bias, int accumulator_shift,
                                      Requantization r, std::uint8_t* y) {
  const std::int64_t oh = s.out_height(), ow = s.out_width();
  const std::int64_t total = s.batch * s.out_channels * oh * ow;
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const std::int64_t ox = i % ow, oy = i / ow % oh, k = i / (ow * oh) % s.out_channels;
    y[i] = integer_conv_output(s, x, x_zero_point, x_fraction_bits, w, w_zero_point, bias,
                               accumulator_shift, r, i / (ow * oh * s.out_channels), k, oy, ox);
  }
}

/// A Linear (1×1 on [N, F, 1, 1]) with 4-byte-aligned rows: four products
/// per __dp4a on the codes, the zero points applied after, as
/// Σ(x - xz)(w - wz) = Σxw - wz·Σx - xz·Σw + F·xz·wz: the same integer.
__global__ void integer_linear_dp4a_kernel(Conv2dShape s, const std::uint8_t* x,
                                           std::int32_t x_zero_point, const std::uint8_t* w,
                                           const std::int32_t* w_zero_point,
                                           const std::int32_t* bias, int accumulator_shift,
                                           Requantization r, std::uint8_t* y) {
  const std::int64_t features = s.in_channels, words = features / 4;
  const std::int64_t total = s.batch * s.out_channels;
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const std::int64_t k = i % s.out_channels, n = i / s.out_channels;
    const auto* xr = reinterpret_cast<const unsigned*>(x + n * features);
    const auto* wr = reinterpret_cast<const unsigned*>(w + k * features);
    unsigned xw = 0, xs = 0, ws = 0;
    for (std::int64_t j = 0; j < words; ++j) {
      const unsigned a = xr[j], b = wr[j];
      xw = __dp4a(a, b, xw);
      xs = __dp4a(a, 0x01010101u, xs);
      ws = __dp4a(b, 0x01010101u, ws);
    }
    const std::int64_t wz = w_zero_point[k];
    const std::int64_t sum =
        std::int64_t{xw} - wz * xs - std::int64_t{x_zero_point} * ws + features * x_zero_point * wz;
    y[n * s.out_channels + k] = static_cast<std::uint8_t>(
        requantize(accumulate(static_cast<std::int32_t>(sum), accumulator_shift, bias[k]), r, k));
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

void integer_conv2d(const Conv2dShape& s, const std::uint8_t* x, std::int32_t x_zero_point,
                    int x_fraction_bits, const std::uint8_t* w, const std::int32_t* w_zero_point,
                    const std::int32_t* bias, int accumulator_shift, const Requantization& r,
                    std::uint8_t* y, cudaStream_t stream) {
  lowbit::detail::check_integer_conv2d(s, x, x_zero_point, x_fraction_bits, w, w_zero_point, bias,
                                       accumulator_shift, r, y);
  const std::int64_t total = s.batch * s.out_channels * s.out_height() * s.out_width();
  if (total == 0) return;
  const bool aligned =
      reinterpret_cast<std::uintptr_t>(x) % 4 == 0 && reinterpret_cast<std::uintptr_t>(w) % 4 == 0;
  if (s.kernel == 1 && s.height == 1 && s.width == 1 && x_fraction_bits == 0 &&
      s.in_channels % 4 == 0 && aligned) {
    integer_linear_dp4a_kernel<<<detail::grid_for(total, detail::kBlockThreads),
                                 detail::kBlockThreads, 0, stream>>>(
        s, x, x_zero_point, w, w_zero_point, bias, accumulator_shift, r, y);
    LOWBIT_LAUNCH_CHECK();
    return;
  }
  integer_conv2d_kernel<<<detail::grid_for(total, detail::kBlockThreads), detail::kBlockThreads, 0,
                          stream>>>(s, x, x_zero_point, x_fraction_bits, w, w_zero_point, bias,
                                    accumulator_shift, r, y);
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
