// CPU reference of bias_activation.cu.
#include "checks.hpp"
#include "lowbit/nn_element.hpp"
#include "lowbit/ref.hpp"
#include "mask_ref.hpp"
#include "reduction_order.hpp"

namespace lowbit::ref {

void bias_activation(const float* x, const float* bias, const ChannelLayout& layout, bool relu,
                     float* y) {
  detail::check_bias_activation(x, layout, y);
  if (layout.size() == 0) return;
  detail::for_each_channel_run(layout, [&](std::int64_t c, std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i)
      y[i] = activation_forward(bias != nullptr ? x[i] + bias[c] : x[i], relu);
  });
}

void bias_activation_backward(const float* dy, const float* y, const ChannelLayout& layout,
                              bool relu, const std::uint32_t* pass_mask, float* dx, float* d_bias,
                              Workspace workspace) {
  detail::check_bias_activation_backward(dy, y, layout, relu, dx, d_bias, workspace);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  for (std::int64_t i = 0; i < n; ++i)
    dx[i] = ste_gradient(dy[i], activation_passes(y, relu, pass_mask, i));
  if (d_bias == nullptr) return;
  const auto bind = [&](std::int64_t) { return [&](std::int64_t i, int) { return dx[i]; }; };
  const auto finish = [&](std::int64_t c, const std::array<float, 1>& totals) {
    d_bias[c] = totals[0];
  };
  detail::reduce_channels_ref<1>(layout, detail::SumOp{}, bind, finish,
                                 static_cast<float*>(workspace.data));
}

}  // namespace lowbit::ref
