// CPU reference of weight_range.cu.
#include "checks.hpp"
#include "lowbit/ref.hpp"
#include "mask_ref.hpp"
#include "reduction_order.hpp"

namespace lowbit::ref {

void weight_range(const float* w, const ChannelLayout& layout, bool symmetric, float* min,
                  float* max, Workspace workspace) {
  detail::check_weight_range(w, layout, min, max, workspace);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  const auto bind = [&](std::int64_t) {
    return [&](std::int64_t i, int q) { return detail::weight_range_value(q == 0 ? -w[i] : w[i]); };
  };
  const auto finish = [&](std::int64_t c, const std::array<float, 2>& totals) {
    detail::finish_weight_range(totals[0], totals[1], symmetric, min[c], max[c]);
  };
  detail::reduce_channels_ref<2>(layout, detail::MaxOp{}, bind, finish,
                                 static_cast<float*>(workspace.data));
}

void fake_quant_weights(const float* w, float* y, const ChannelLayout& layout, RangeQuant quant,
                        bool symmetric, float* min, float* max, std::uint32_t* mask,
                        Workspace workspace) {
  detail::check_fake_quant_range(w, y, layout, min, max, quant);
  weight_range(w, layout, symmetric, min, max, workspace);
  fake_quant_range(w, y, layout, min, max, quant, mask, MaskFormat::pass);
}

void quant_delay_identity(const float* x, float* y, std::int64_t n, const std::int64_t* step,
                          std::int64_t quant_delay, std::uint32_t* mask) {
  detail::check_quant_delay_identity(x, y, n, step, quant_delay);
  if (*step >= quant_delay) return;
  detail::MaskWriter writer(mask, MaskFormat::pass, n);
  for (std::int64_t i = 0; i < n; ++i) {
    y[i] = x[i];
    writer.set(i, x[i] == x[i]);
  }
}

}  // namespace lowbit::ref
