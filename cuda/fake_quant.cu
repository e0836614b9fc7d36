// Fake-quant forward, range (TensorFlow) and affine (PyTorch) families, per
// tensor or per channel, optionally saving the bit-packed STE mask.
//
//   range:  y = floor(cs / scale - q0 + 0.5)·scale     per tensor (one channel)
//           y = floor(cs·inv - q0 + 0.5)·scale         per channel
//           cs = clamp(x, nmin, nmax) - nmin
//   affine: y = (clamp(nearbyint(x·inv) + zp, qmin, qmax) - zp)·scale
//
// Bytes per element: 4 read + 4 write + 1/8 (pass mask) or 2/8 (sides) for
// float; 2 + 2 + the mask for bf16 and fp16, computed in float.
#include "checks.hpp"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "tiles.cuh"

namespace lowbit::cuda {
namespace {

// ---------------------------------------------------------------------------
// Quantizers (the kernel is tiles.cuh's quantize_tiles_kernel)

struct RangeQuantizer : detail::PlainInput {
  static constexpr bool kHasSides = true;
  using Params = RangeParams;
  const float* min;
  const float* max;
  int qmin;
  int qmax;
  RangeScaling scaling;

  __device__ Params params(std::int64_t c) const { return nudge_range(min[c], max[c], qmin, qmax); }
  __device__ void set_channel(Params& p, std::int64_t c) const { p = params(c); }
  __device__ float apply(float x, const Params& p) const { return fake_quant(x, p, scaling); }
  __device__ bool plane0(float x, const Params& p) const { return at_or_above_min(x, p); }
  __device__ bool plane1(float x, const Params& p) const { return at_or_below_max(x, p); }
  __device__ bool quantizes(const Params&) const { return true; }
  __device__ bool clipped(float x, const Params& p) const { return clips(x, p); }
};

/// Same as RangeQuantizer but with the pass plane as plane 0.
struct RangePassQuantizer : RangeQuantizer {
  __device__ bool plane0(float x, const Params& p) const { return ste_pass(x, p); }
};

struct AffineQuantizer : detail::PlainInput {
  static constexpr bool kHasSides = false;
  using Params = AffineParams;
  const float* scale;
  const std::int32_t* zero_point;
  int qmin;
  int qmax;

  __device__ Params params(std::int64_t c) const {
    return make_affine(scale[c], zero_point[c], qmin, qmax);
  }
  __device__ void set_channel(Params& p, std::int64_t c) const { p = params(c); }
  __device__ float apply(float x, const Params& p) const { return fake_quant(x, p); }
  __device__ bool plane0(float x, const Params& p) const { return ste_pass(x, p); }
  __device__ bool quantizes(const Params&) const { return true; }
  __device__ bool clipped(float x, const Params& p) const { return clips(x, p); }
};

}  // namespace

// ---------------------------------------------------------------------------
// Launchers

namespace {

template <class T>
void fake_quant_range_as(const T* x, T* y, const ChannelLayout& layout, const float* min,
                         const float* max, RangeQuant quant, std::uint32_t* mask,
                         MaskFormat mask_format, cudaStream_t stream) {
  lowbit::detail::check_fake_quant_range(x, y, layout, min, max, quant);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  const RangeQuantizer quantizer{{}, min, max, quant.qmin(), quant.qmax(), range_scaling(layout)};
  if (mask_format == MaskFormat::sides)
    detail::launch_quantize_tiles(x, y, mask, mask_format, layout, quantizer, stream);
  else
    detail::launch_quantize_tiles(x, y, mask, mask_format, layout, RangePassQuantizer{quantizer},
                                  stream);
}

template <class T>
void fake_quant_affine_as(const T* x, T* y, const ChannelLayout& layout, const float* scale,
                          const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask,
                          ClipCount* clip_count, cudaStream_t stream) {
  lowbit::detail::check_fake_quant_affine(x, y, layout, scale, zero_point, quant);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  detail::launch_quantize_tiles(x, y, mask, MaskFormat::pass, layout,
                                AffineQuantizer{{}, scale, zero_point, quant.qmin, quant.qmax},
                                stream, detail::NoObserver{}, clip_count);
}

}  // namespace

#define LOWBIT_FAKE_QUANT_LAUNCHERS(T)                                                           \
  void fake_quant_range(const T* x, T* y, const ChannelLayout& layout, const float* min,         \
                        const float* max, RangeQuant quant, std::uint32_t* mask,                 \
                        MaskFormat mask_format, cudaStream_t stream) {                           \
    fake_quant_range_as(x, y, layout, min, max, quant, mask, mask_format, stream);               \
  }                                                                                              \
  void fake_quant_affine(const T* x, T* y, const ChannelLayout& layout, const float* scale,      \
                         const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask, \
                         ClipCount* clip_count, cudaStream_t stream) {                           \
    fake_quant_affine_as(x, y, layout, scale, zero_point, quant, mask, clip_count, stream);      \
  }
LOWBIT_FAKE_QUANT_LAUNCHERS(float)
LOWBIT_FAKE_QUANT_LAUNCHERS(bf16)
LOWBIT_FAKE_QUANT_LAUNCHERS(fp16)
#undef LOWBIT_FAKE_QUANT_LAUNCHERS

}  // namespace lowbit::cuda
