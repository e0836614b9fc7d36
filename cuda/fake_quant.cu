// Fake-quant forward, range (TensorFlow) and affine (PyTorch) families, per
// tensor or per channel, optionally saving the bit-packed STE mask.
//
//   range:  y = (floor((clamp(x, nmin, nmax) - nmin)·inv + 0.5) - q0)·scale
//   affine: y = (clamp(nearbyint(x·inv) + zp, qmin, qmax) - zp)·scale
//
// Bytes per element: 4 read + 4 write + 1/8 (pass mask) or 2/8 (sides).
#include "checks.hpp"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "tiles.cuh"

namespace lowbit::cuda {
namespace {

// ---------------------------------------------------------------------------
// Quantizers (the kernel is tiles.cuh's quantize_tiles_kernel)

struct RangeQuantizer {
  static constexpr bool kHasSides = true;
  using Params = RangeParams;
  const float* min;
  const float* max;
  int qmin;
  int qmax;

  __device__ Params params(std::int64_t c) const { return nudge_range(min[c], max[c], qmin, qmax); }
  __device__ float apply(float x, const Params& p) const { return fake_quant(x, p); }
  __device__ bool plane0(float x, const Params& p) const { return at_or_above_min(x, p); }
  __device__ bool plane1(float x, const Params& p) const { return at_or_below_max(x, p); }
};

/// Same as RangeQuantizer but with the pass plane as plane 0.
struct RangePassQuantizer : RangeQuantizer {
  __device__ bool plane0(float x, const Params& p) const { return ste_pass(x, p); }
};

struct AffineQuantizer {
  static constexpr bool kHasSides = false;
  using Params = AffineParams;
  const float* scale;
  const std::int32_t* zero_point;
  int qmin;
  int qmax;

  __device__ Params params(std::int64_t c) const {
    return make_affine(scale[c], zero_point[c], qmin, qmax);
  }
  __device__ float apply(float x, const Params& p) const { return fake_quant(x, p); }
  __device__ bool plane0(float x, const Params& p) const { return ste_pass(x, p); }
};

}  // namespace

// ---------------------------------------------------------------------------
// Launchers

void fake_quant_range(const float* x, float* y, const ChannelLayout& layout, const float* min,
                      const float* max, RangeQuant quant, std::uint32_t* mask,
                      MaskFormat mask_format, cudaStream_t stream) {
  lowbit::detail::check_layout(layout);
  lowbit::detail::check_range_quant(quant);
  const std::int64_t n = layout.size();
  lowbit::detail::check_pointer(x, n, "x");
  lowbit::detail::check_pointer(y, n, "y");
  lowbit::detail::check_pointer(min, n > 0 ? layout.channels : 0, "min");
  lowbit::detail::check_pointer(max, n > 0 ? layout.channels : 0, "max");
  if (n == 0) return;
  const RangeQuantizer quantizer{min, max, quant.qmin(), quant.qmax()};
  if (mask_format == MaskFormat::sides)
    detail::launch_quantize_tiles(x, y, mask, mask_format, layout, quantizer, stream);
  else
    detail::launch_quantize_tiles(x, y, mask, mask_format, layout,
                                  RangePassQuantizer{quantizer}, stream);
}

void fake_quant_affine(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                       const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask,
                       cudaStream_t stream) {
  lowbit::detail::check_layout(layout);
  lowbit::detail::check_affine_quant(quant);
  const std::int64_t n = layout.size();
  lowbit::detail::check_pointer(x, n, "x");
  lowbit::detail::check_pointer(y, n, "y");
  lowbit::detail::check_pointer(scale, n > 0 ? layout.channels : 0, "scale");
  lowbit::detail::check_pointer(zero_point, n > 0 ? layout.channels : 0, "zero_point");
  if (n == 0) return;
  detail::launch_quantize_tiles(x, y, mask, MaskFormat::pass, layout,
                                AffineQuantizer{scale, zero_point, quant.qmin, quant.qmax},
                                stream);
}

}  // namespace lowbit::cuda
