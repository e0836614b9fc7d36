// CPU reference of weight_range.cu.
#include "checks.hpp"
#include "lowbit/ref.hpp"
#include "reduction_order.hpp"

namespace lowbit::ref {

void weight_range(const float* w, const ChannelLayout& layout, bool symmetric, float* min,
                  float* max, Workspace workspace) {
  detail::check_layout(layout);
  const std::int64_t n = layout.size();
  detail::check_pointer(w, n, "w");
  detail::check_pointer(min, n > 0 ? layout.channels : 0, "min");
  detail::check_pointer(max, n > 0 ? layout.channels : 0, "max");
  detail::check_workspace(workspace, layout);
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
  detail::check_range_quant(quant);
  weight_range(w, layout, symmetric, min, max, workspace);
  fake_quant_range(w, y, layout, min, max, quant, mask, MaskFormat::pass);
}

}  // namespace lowbit::ref
