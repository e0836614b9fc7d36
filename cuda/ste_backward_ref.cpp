// CPU reference of ste_backward.cu, for float, bf16 and fp16 elements (each
// widened exactly, the result rounded once: element.hpp).
#include "checks.hpp"
#include "lowbit/ref.hpp"
#include "mask_ref.hpp"
#include "reduction_order.hpp"

namespace lowbit::ref {
namespace {

template <class T>
void ste_backward_as(const T* dy, const std::uint32_t* mask, MaskFormat mask_format, std::int64_t n,
                     T* dx) {
  detail::check_ste_backward(dy, mask, n, dx);
  for (std::int64_t i = 0; i < n; ++i) {
    bool pass = detail::mask_bit(mask, n, 0, i);
    if (mask_format == MaskFormat::sides) pass = pass && detail::mask_bit(mask, n, 1, i);
    dx[i] = from_float<T>(ste_gradient(to_float(dy[i]), pass));
  }
}

template <class T>
void ste_backward_range_as(const T* dy, const std::uint32_t* sides_mask,
                           const ChannelLayout& layout, T* dx, float* d_min, float* d_max,
                           Workspace workspace) {
  detail::check_ste_backward_range(dy, sides_mask, layout, dx, d_min, d_max, workspace);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  ste_backward_as(dy, sides_mask, MaskFormat::sides, n, dx);
  const auto bind = [&](std::int64_t) {
    return [&](std::int64_t i, int q) {
      const bool ge_min = detail::mask_bit(sides_mask, n, 0, i);
      const bool le_max = detail::mask_bit(sides_mask, n, 1, i);
      const bool counted = q == 0 ? le_max && !ge_min : ge_min && !le_max;
      return ste_gradient(to_float(dy[i]), counted);
    };
  };
  const auto finish = [&](std::int64_t c, const std::array<float, 2>& totals) {
    d_min[c] = totals[0];
    d_max[c] = totals[1];
  };
  detail::reduce_channels_ref<2>(layout, detail::SumOp{}, bind, finish,
                                 static_cast<float*>(workspace.data));
}

}  // namespace

#define LOWBIT_STE_BACKWARD_REF(T)                                                        \
  void ste_backward(const T* dy, const std::uint32_t* mask, MaskFormat mask_format,       \
                    std::int64_t n, T* dx) {                                              \
    ste_backward_as(dy, mask, mask_format, n, dx);                                        \
  }                                                                                       \
  void ste_backward_range(const T* dy, const std::uint32_t* sides_mask,                   \
                          const ChannelLayout& layout, T* dx, float* d_min, float* d_max, \
                          Workspace workspace) {                                          \
    ste_backward_range_as(dy, sides_mask, layout, dx, d_min, d_max, workspace);           \
  }
LOWBIT_STE_BACKWARD_REF(float)
LOWBIT_STE_BACKWARD_REF(bf16)
LOWBIT_STE_BACKWARD_REF(fp16)
#undef LOWBIT_STE_BACKWARD_REF

}  // namespace lowbit::ref
