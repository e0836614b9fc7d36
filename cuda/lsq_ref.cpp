// CPU reference of lsq.cu.
#include "checks.hpp"
#include "lowbit/ref.hpp"
#include "mask_ref.hpp"
#include "reduction_order.hpp"

namespace lowbit::ref {

void lsq_forward(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                 LsqQuant quant, ClipCount* clip_count) {
  detail::check_lsq_forward(x, y, layout, scale, quant);
  if (layout.size() == 0) return;
  detail::ClipCounter counter(clip_count);
  detail::for_each_channel_run(layout, [&](std::int64_t c, std::int64_t begin, std::int64_t end) {
    const LsqParams p = make_lsq(scale[c], quant.qmin, quant.qmax);
    for (std::int64_t i = begin; i < end; ++i) {
      const float xi = x[i];  // y may alias x
      y[i] = fake_quant(xi, p);
      counter.add(clips(xi, p));
    }
  });
}

void lsq_backward(const float* dy, const float* x, const ChannelLayout& layout,
                  const float* scale, LsqQuant quant, float* dx, float* d_scale,
                  Workspace workspace) {
  detail::check_lsq_backward(dy, x, layout, scale, quant, dx, d_scale, workspace);
  if (layout.size() == 0) return;
  detail::for_each_channel_run(layout, [&](std::int64_t c, std::int64_t begin, std::int64_t end) {
    const LsqParams p = make_lsq(scale[c], quant.qmin, quant.qmax);
    for (std::int64_t i = begin; i < end; ++i) dx[i] = ste_gradient(dy[i], lsq_passes(x[i], p));
  });
  const auto bind = [&](std::int64_t c) {
    const LsqParams p = make_lsq(scale[c], quant.qmin, quant.qmax);
    return [=](std::int64_t i, int) { return lsq_scale_grad_term(x[i], dy[i], p); };
  };
  const float grad_scale = detail::lsq_gradient_scale(layout, quant);
  const auto finish = [&](std::int64_t c, const std::array<float, 1>& totals) {
    d_scale[c] = totals[0] * grad_scale;
  };
  detail::reduce_channels_ref<1>(layout, detail::SumOp{}, bind, finish,
                                 static_cast<float*>(workspace.data));
}

void lsq_init_scale(const float* x, const ChannelLayout& layout, LsqQuant quant, float* scale,
                    Workspace workspace) {
  detail::check_lsq_init_scale(x, layout, quant, scale, workspace);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  const auto bind = [&](std::int64_t) { return [&](std::int64_t i, int) { return fabsf(x[i]); }; };
  const std::int64_t count = layout.outer * layout.inner;
  const auto finish = [&](std::int64_t c, const std::array<float, 1>& totals) {
    scale[c] = lsq_initial_scale(totals[0], count, quant.qmax);
  };
  detail::reduce_channels_ref<1>(layout, detail::SumOp{}, bind, finish,
                                 static_cast<float*>(workspace.data));
}

}  // namespace lowbit::ref
