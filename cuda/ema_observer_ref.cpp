// CPU reference of ema_observer.cu, ema_fake_quant for float, bf16 and fp16
// elements (each widened exactly, the result rounded once: element.hpp).
#include <vector>

#include "checks.hpp"
#include "lowbit/error.hpp"
#include "lowbit/ref.hpp"
#include "mask_ref.hpp"

namespace lowbit::ref {

void ema_state_init(EmaRangeState* state) {
  LOWBIT_EXPECTS(state != nullptr, "state is null");
  *state = EmaRangeState{};
}

namespace {

template <class T>
void ema_fake_quant_as(const T* x, T* y, std::int64_t n, EmaRangeState* state,
                       const EmaConfig& config, std::uint32_t* mask, MaskFormat mask_format,
                       ClipCount* clip_count) {
  detail::check_ema_fake_quant(x, y, n, state, config);
  if (n == 0) return;

  float lo = INFINITY;
  float hi = -INFINITY;
  for (std::int64_t i = 0; i < n; ++i) {
    const float xi = to_float(x[i]);
    lo = min_nan(lo, xi);
    hi = max_nan(hi, xi);
  }
  // exact: quantize with the range after this batch's update; lagged: before.
  const EmaRangeState before = *state;
  ema_range_step(*state, lo, hi, config);
  const EmaRangeState& used = config.mode == EmaMode::exact ? *state : before;
  const bool quantizes = ema_quantizes(used, before.steps, config);
  const RangeParams p = nudge_range(used.min, used.max, config.quant.qmin(), config.quant.qmax());

  detail::MaskWriter writer(mask, mask_format, n);
  detail::ClipCounter counter(quantizes ? clip_count : nullptr);
  for (std::int64_t i = 0; i < n; ++i) {
    const float xi = to_float(x[i]);
    if (!quantizes) {
      y[i] = from_float<T>(xi);
      writer.set(i, xi == xi, xi == xi);
      continue;
    }
    y[i] = from_float<T>(fake_quant(xi, p, RangeScaling::divide));
    if (mask_format == MaskFormat::sides)
      writer.set(i, at_or_above_min(xi, p), at_or_below_max(xi, p));
    else
      writer.set(i, ste_pass(xi, p));
    counter.add(clips(xi, p));
  }
}

}  // namespace

#define LOWBIT_EMA_FAKE_QUANT_REF(T)                                                        \
  void ema_fake_quant(const T* x, T* y, std::int64_t n, EmaRangeState* state,               \
                      const EmaConfig& config, std::uint32_t* mask, MaskFormat mask_format, \
                      ClipCount* clip_count) {                                              \
    ema_fake_quant_as(x, y, n, state, config, mask, mask_format, clip_count);               \
  }
LOWBIT_EMA_FAKE_QUANT_REF(float)
LOWBIT_EMA_FAKE_QUANT_REF(bf16)
LOWBIT_EMA_FAKE_QUANT_REF(fp16)
#undef LOWBIT_EMA_FAKE_QUANT_REF

// The composition that defines the op, with v stored (the CUDA op never does).
void bias_relu_ema_fake_quant(const float* x, const float* bias, const ChannelLayout& layout,
                              float* y, EmaRangeState* state, const EmaConfig& config,
                              std::uint32_t* mask, ClipCount* clip_count) {
  detail::check_bias_relu_ema_fake_quant(x, layout, y, state, config);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  std::vector<float> v(static_cast<std::size_t>(n));
  bias_activation(x, bias, layout, true, v.data());
  ema_fake_quant(v.data(), y, n, state, config, mask, MaskFormat::pass, clip_count);
  if (mask == nullptr) return;
  for (std::int64_t i = 0; i < n; ++i)
    if (!(v[i] > 0.0f)) mask[i >> 5] &= ~(1u << (i & 31));
}

}  // namespace lowbit::ref
