// CPU reference of fake_quant.cu, for float, bf16 and fp16 elements (each
// widened exactly, the result rounded once: element.hpp).
#include "checks.hpp"
#include "lowbit/ref.hpp"
#include "mask_ref.hpp"

namespace lowbit::ref {
namespace {

template <class T>
void fake_quant_range_as(const T* x, T* y, const ChannelLayout& layout, const float* min,
                         const float* max, RangeQuant quant, std::uint32_t* mask,
                         MaskFormat mask_format) {
  detail::check_fake_quant_range(x, y, layout, min, max, quant);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  detail::check_ranges(min, max, layout.channels);
  detail::MaskWriter writer(mask, mask_format, n);
  const RangeScaling scaling = range_scaling(layout);
  detail::for_each_channel_run(layout, [&](std::int64_t c, std::int64_t begin, std::int64_t end) {
    const RangeParams p = nudge_range(min[c], max[c], quant.qmin(), quant.qmax());
    for (std::int64_t i = begin; i < end; ++i) {
      const float xi = to_float(x[i]);
      y[i] = from_float<T>(fake_quant(xi, p, scaling));
      if (mask_format == MaskFormat::sides)
        writer.set(i, at_or_above_min(xi, p), at_or_below_max(xi, p));
      else
        writer.set(i, ste_pass(xi, p));
    }
  });
}

template <class T>
void fake_quant_affine_as(const T* x, T* y, const ChannelLayout& layout, const float* scale,
                          const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask,
                          ClipCount* clip_count) {
  detail::check_fake_quant_affine(x, y, layout, scale, zero_point, quant);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  detail::check_scales(scale, layout.channels);
  detail::check_zero_points(zero_point, layout.channels, quant);
  detail::MaskWriter writer(mask, MaskFormat::pass, n);
  detail::ClipCounter counter(clip_count);
  detail::for_each_channel_run(layout, [&](std::int64_t c, std::int64_t begin, std::int64_t end) {
    const AffineParams p = make_affine(scale[c], zero_point[c], quant.qmin, quant.qmax);
    for (std::int64_t i = begin; i < end; ++i) {
      const float xi = to_float(x[i]);
      y[i] = from_float<T>(fake_quant(xi, p));
      writer.set(i, ste_pass(xi, p));
      counter.add(clips(xi, p));
    }
  });
}

}  // namespace

#define LOWBIT_FAKE_QUANT_REF(T)                                                                 \
  void fake_quant_range(const T* x, T* y, const ChannelLayout& layout, const float* min,         \
                        const float* max, RangeQuant quant, std::uint32_t* mask,                 \
                        MaskFormat mask_format) {                                                \
    fake_quant_range_as(x, y, layout, min, max, quant, mask, mask_format);                       \
  }                                                                                              \
  void fake_quant_affine(const T* x, T* y, const ChannelLayout& layout, const float* scale,      \
                         const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask, \
                         ClipCount* clip_count) {                                                \
    fake_quant_affine_as(x, y, layout, scale, zero_point, quant, mask, clip_count);              \
  }
LOWBIT_FAKE_QUANT_REF(float)
LOWBIT_FAKE_QUANT_REF(bf16)
LOWBIT_FAKE_QUANT_REF(fp16)
#undef LOWBIT_FAKE_QUANT_REF

}  // namespace lowbit::ref
