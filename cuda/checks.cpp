#include "checks.hpp"

#include <cmath>
#include <limits>
#include <string>

#include "lowbit/element.hpp"
#include "lowbit/error.hpp"
#include "lowbit/nn_element.hpp"
#include "reduction_order.hpp"

namespace lowbit {

ChannelLayout ChannelLayout::per_channel(const std::vector<std::int64_t>& shape, int axis) {
  const int rank = static_cast<int>(shape.size());
  LOWBIT_EXPECTS(axis >= 0 && axis < rank, "channel axis " + std::to_string(axis) +
                                               " is outside a tensor of rank " +
                                               std::to_string(rank));
  ChannelLayout layout{1, shape[axis], 1};
  for (int d = 0; d < rank; ++d) {
    LOWBIT_EXPECTS(shape[d] >= 0, "dimension " + std::to_string(d) + " is negative (" +
                                      std::to_string(shape[d]) + ")");
    if (d < axis) layout.outer *= shape[d];
    if (d > axis) layout.inner *= shape[d];
  }
  return layout;
}

std::size_t reduction_workspace_bytes(const ChannelLayout& layout) {
  detail::check_layout(layout);
  return static_cast<std::size_t>(detail::kReducedQuantities * layout.channels *
                                  detail::items_per_channel(layout)) *
         sizeof(float);
}

namespace detail {
namespace {

void check_bits(int bits) {
  LOWBIT_EXPECTS(bits >= kMinBits && bits <= kMaxBits,
                 "bits must be in 2..16, got " + std::to_string(bits));
}

void check_affine_quant(AffineQuant quant) {
  LOWBIT_EXPECTS(quant.qmin < quant.qmax, "qmin (" + std::to_string(quant.qmin) +
                                              ") must be below qmax (" +
                                              std::to_string(quant.qmax) + ")");
  const std::int64_t levels = std::int64_t{quant.qmax} - quant.qmin + 1;
  LOWBIT_EXPECTS(levels >= 3 && levels <= (std::int64_t{1} << kMaxBits),
                 "the grid [" + std::to_string(quant.qmin) + ", " + std::to_string(quant.qmax) +
                     "] must span 2..16 bits");
  LOWBIT_EXPECTS(quant.qmin >= -(1 << kMaxBits) && quant.qmax <= (1 << kMaxBits),
                 "qmin and qmax must lie within ±65536");
}

void check_lsq_quant(LsqQuant quant) {
  check_affine_quant(quant);
  LOWBIT_EXPECTS(quant.qmin <= 0 && quant.qmax > 0,
                 "an LSQ grid must contain 0 and a positive level, got [" +
                     std::to_string(quant.qmin) + ", " + std::to_string(quant.qmax) + "]");
}

/// Throws when `pointer` is null but n > 0 elements must be read or written.
void check_pointer(const void* pointer, std::int64_t n, const char* name) {
  LOWBIT_EXPECTS(n >= 0, std::string(name) + " has a negative length");
  LOWBIT_EXPECTS(pointer != nullptr || n == 0,
                 std::string(name) + " is null but " + std::to_string(n) + " elements need it");
}

/// x and y of n elements, and per-channel parameters when there is data.
void check_tensor_pair(const void* x, const char* x_name, const void* y, const char* y_name,
                       const ChannelLayout& layout) {
  check_layout(layout);
  check_pointer(x, layout.size(), x_name);
  check_pointer(y, layout.size(), y_name);
}

std::int64_t channels_in_use(const ChannelLayout& layout) {
  return layout.size() > 0 ? layout.channels : 0;
}

/// Sizes >= 0, a window of at least one element that fits the input.
void check_pool_shape(const Pool2dShape& s) {
  LOWBIT_EXPECTS(s.batch >= 0 && s.channels >= 0 && s.kernel >= 1 && s.stride >= 1 &&
                     s.height >= s.kernel && s.width >= s.kernel,
                 "max_pool [N=" + std::to_string(s.batch) + " C=" + std::to_string(s.channels) +
                     " H=" + std::to_string(s.height) + " W=" + std::to_string(s.width) +
                     "] kernel=" + std::to_string(s.kernel) +
                     " stride=" + std::to_string(s.stride) +
                     ": sizes must be >= 0, kernel and stride >= 1, and the window must fit");
}

std::int64_t pool_inputs(const Pool2dShape& s) { return s.batch * s.channels * s.height * s.width; }

std::int64_t pool_outputs(const Pool2dShape& s) {
  return s.batch * s.channels * s.out_height() * s.out_width();
}

void check_workspace(Workspace workspace, const ChannelLayout& layout) {
  const std::size_t needed = reduction_workspace_bytes(layout);
  LOWBIT_EXPECTS(workspace.bytes >= needed && (workspace.data != nullptr || needed == 0),
                 "workspace holds " + std::to_string(workspace.bytes) + " bytes, the op needs " +
                     std::to_string(needed) + " (reduction_workspace_bytes)");
}

}  // namespace

void check_layout(const ChannelLayout& layout) {
  LOWBIT_EXPECTS(layout.outer >= 0 && layout.channels >= 0 && layout.inner >= 0,
                 "layout [outer, channels, inner] = [" + std::to_string(layout.outer) + ", " +
                     std::to_string(layout.channels) + ", " + std::to_string(layout.inner) +
                     "] has a negative size");
}

void check_fake_quant_range(const void* x, const void* y, const ChannelLayout& layout,
                            const float* min, const float* max, RangeQuant quant) {
  check_bits(quant.bits);
  check_tensor_pair(x, "x", y, "y", layout);
  check_pointer(min, channels_in_use(layout), "min");
  check_pointer(max, channels_in_use(layout), "max");
}

void check_fake_quant_affine(const void* x, const void* y, const ChannelLayout& layout,
                             const float* scale, const std::int32_t* zero_point,
                             AffineQuant quant) {
  check_affine_quant(quant);
  check_tensor_pair(x, "x", y, "y", layout);
  check_pointer(scale, channels_in_use(layout), "scale");
  check_pointer(zero_point, channels_in_use(layout), "zero_point");
}

void check_ste_backward(const void* dy, const std::uint32_t* mask, std::int64_t n, const void* dx) {
  check_pointer(dy, n, "dy");
  check_pointer(mask, n, "mask");
  check_pointer(dx, n, "dx");
}

void check_ste_backward_range(const void* dy, const std::uint32_t* mask,
                              const ChannelLayout& layout, const void* dx, const float* d_min,
                              const float* d_max, Workspace workspace) {
  check_tensor_pair(dy, "dy", dx, "dx", layout);
  check_pointer(mask, layout.size(), "sides_mask");
  check_pointer(d_min, channels_in_use(layout), "d_min");
  check_pointer(d_max, channels_in_use(layout), "d_max");
  check_workspace(workspace, layout);
}

void check_ema_fake_quant(const void* x, const void* y, std::int64_t n, const EmaRangeState* state,
                          const EmaConfig& config) {
  check_bits(config.quant.bits);
  LOWBIT_EXPECTS(config.decay >= 0.0f && config.decay < 1.0f,
                 "EMA decay must be in [0, 1), got " + std::to_string(config.decay));
  LOWBIT_EXPECTS(config.quant_delay >= 0, "quant_delay must not be negative");
  LOWBIT_EXPECTS(config.freeze_step >= 0, "freeze_step must not be negative");
  check_pointer(x, n, "x");
  check_pointer(y, n, "y");
  check_pointer(state, 1, "state");
}

void check_bias_relu_ema_fake_quant(const float* x, const ChannelLayout& layout, const float* y,
                                    const EmaRangeState* state, const EmaConfig& config) {
  check_layout(layout);
  check_ema_fake_quant(x, y, layout.size(), state, config);
}

void check_weight_range(const float* w, const ChannelLayout& layout, const float* min,
                        const float* max, Workspace workspace) {
  check_layout(layout);
  check_pointer(w, layout.size(), "w");
  check_pointer(min, channels_in_use(layout), "min");
  check_pointer(max, channels_in_use(layout), "max");
  check_workspace(workspace, layout);
}

void check_quant_delay_identity(const float* x, const float* y, std::int64_t n,
                                const std::int64_t* step, std::int64_t quant_delay) {
  LOWBIT_EXPECTS(quant_delay >= 0, "quant_delay must not be negative");
  check_pointer(x, n, "x");
  check_pointer(y, n, "y");
  check_pointer(step, 1, "step");
}

void check_lsq_forward(const float* x, const float* y, const ChannelLayout& layout,
                       const float* scale, LsqQuant quant) {
  check_lsq_quant(quant);
  check_tensor_pair(x, "x", y, "y", layout);
  check_pointer(scale, channels_in_use(layout), "scale");
}

void check_lsq_backward(const float* dy, const float* x, const ChannelLayout& layout,
                        const float* scale, LsqQuant quant, const float* dx, const float* d_scale,
                        Workspace workspace) {
  check_lsq_quant(quant);
  check_tensor_pair(dy, "dy", dx, "dx", layout);
  check_pointer(x, layout.size(), "x");
  check_pointer(scale, channels_in_use(layout), "scale");
  check_pointer(d_scale, channels_in_use(layout), "d_scale");
  check_workspace(workspace, layout);
}

void check_lsq_init_scale(const float* x, const ChannelLayout& layout, LsqQuant quant,
                          const float* scale, Workspace workspace) {
  check_lsq_quant(quant);
  check_layout(layout);
  check_pointer(x, layout.size(), "x");
  check_pointer(scale, channels_in_use(layout), "scale");
  check_workspace(workspace, layout);
}

void check_packing(const std::uint8_t* codes, const std::uint8_t* packed, std::int64_t n,
                   int bits) {
  LOWBIT_EXPECTS(bits == 2 || bits == 4 || bits == 8,
                 "codes pack at 2, 4 or 8 bits, got " + std::to_string(bits));
  check_pointer(codes, n, "codes");
  check_pointer(packed, n, "packed");
}

void check_bias_activation(const float* x, const ChannelLayout& layout, const float* y) {
  check_tensor_pair(x, "x", y, "y", layout);
}

void check_bias_activation_backward(const float* dy, const float* y, const ChannelLayout& layout,
                                    bool relu, const float* dx, const float* d_bias,
                                    Workspace workspace) {
  check_tensor_pair(dy, "dy", dx, "dx", layout);
  check_pointer(y, relu ? layout.size() : 0, "y");
  if (d_bias != nullptr) check_workspace(workspace, layout);
}

void check_add(const float* a, const float* b, std::int64_t n, const float* y) {
  check_pointer(a, n, "a");
  check_pointer(b, n, "b");
  check_pointer(y, n, "y");
}

void check_max_pool_forward(const Pool2dShape& s, const float* x, const float* y) {
  check_pool_shape(s);
  check_pointer(x, pool_inputs(s), "x");
  check_pointer(y, pool_outputs(s), "y");
}

void check_max_pool_backward(const Pool2dShape& s, const float* x, const float* dy,
                             const float* dx) {
  check_pool_shape(s);
  check_pointer(x, pool_inputs(s), "x");
  check_pointer(dy, pool_outputs(s), "dy");
  check_pointer(dx, pool_inputs(s), "dx");
}

void check_integer_conv2d(const Conv2dShape& s, const std::uint8_t* x, std::int32_t x_zero_point,
                          int x_fraction_bits, const std::uint8_t* w,
                          const std::int32_t* w_zero_point, const std::int32_t* bias,
                          int accumulator_shift, const Requantization& r, const std::uint8_t* y) {
  LOWBIT_EXPECTS(s.batch >= 0 && s.in_channels > 0 && s.height > 0 && s.width > 0 &&
                     s.out_channels > 0 && s.kernel > 0 && s.stride > 0 && s.padding >= 0,
                 "integer conv: sizes must be positive (batch, padding >= 0)");
  LOWBIT_EXPECTS(s.kernel <= s.height + 2 * s.padding && s.kernel <= s.width + 2 * s.padding,
                 "integer conv: the kernel is larger than the padded input");
  LOWBIT_EXPECTS(x_fraction_bits >= 0 && x_fraction_bits <= 16,
                 "integer conv: x_fraction_bits must be in [0, 16]");
  const std::int64_t x_span = std::int64_t{255} << x_fraction_bits;
  LOWBIT_EXPECTS(x_zero_point >= 0 && x_zero_point <= x_span,
                 "integer conv: x_zero_point must be in [0, 255·2^x_fraction_bits]");
  // |(x·2^f - x_zero)·(w - w_zero)| <= 255·2^f·255 per tap, in int32.
  LOWBIT_EXPECTS(s.in_channels * s.kernel * s.kernel <= INT32_MAX / (x_span * 255),
                 "integer conv: " + std::to_string(s.in_channels * s.kernel * s.kernel) +
                     " taps per output would overflow int32 sums");
  LOWBIT_EXPECTS(accumulator_shift >= 0 && accumulator_shift <= 30,
                 "integer conv: accumulator_shift must be in [0, 30]");
  LOWBIT_EXPECTS(r.min >= 0 && r.min <= r.max && r.max <= 255,
                 "integer conv: output codes must lie in [0, 255], min <= max");
  check_pointer(x, s.batch * s.in_channels * s.height * s.width, "x");
  check_pointer(w, s.out_channels * s.in_channels * s.kernel * s.kernel, "w");
  check_pointer(w_zero_point, s.out_channels, "w_zero_point");
  check_pointer(bias, s.out_channels, "bias");
  check_pointer(r.multiplier, s.out_channels, "multiplier");
  check_pointer(r.shift, s.out_channels, "shift");
  check_pointer(y, s.batch * s.out_channels * s.out_height() * s.out_width(), "y");
}

void check_max_pool_codes(const Pool2dShape& s, const std::uint8_t* x, const std::uint8_t* y) {
  check_pool_shape(s);
  check_pointer(x, pool_inputs(s), "x");
  check_pointer(y, pool_outputs(s), "y");
}

void check_softmax_cross_entropy(const float* logits, const std::int32_t* labels,
                                 std::int64_t batch, int classes, const LossTotals* totals) {
  LOWBIT_EXPECTS(classes >= 1 && classes <= kMaxSoftmaxClasses,
                 "classes must be in 1.." + std::to_string(kMaxSoftmaxClasses) + ", got " +
                     std::to_string(classes));
  LOWBIT_EXPECTS(batch >= 0, "batch must not be negative, got " + std::to_string(batch));
  check_pointer(logits, batch * classes, "logits");
  check_pointer(labels, batch, "labels");
  check_pointer(totals, batch > 0 ? 1 : 0, "totals");
}

void check_sgd_step(const float* params, const float* grads, const float* velocity, std::int64_t n,
                    std::int64_t decay_count, const SgdConfig& config) {
  // torch.optim.SGD rejects the same values.
  LOWBIT_EXPECTS(
      is_finite(config.learning_rate) && config.learning_rate >= 0.0f,
      "learning rate must be finite and >= 0, got " + std::to_string(config.learning_rate));
  LOWBIT_EXPECTS(is_finite(config.momentum) && config.momentum >= 0.0f,
                 "momentum must be finite and >= 0, got " + std::to_string(config.momentum));
  LOWBIT_EXPECTS(
      is_finite(config.weight_decay) && config.weight_decay >= 0.0f,
      "weight decay must be finite and >= 0, got " + std::to_string(config.weight_decay));
  check_pointer(params, n, "params");
  check_pointer(grads, n, "grads");
  check_pointer(velocity, n, "velocity");
  LOWBIT_EXPECTS(decay_count >= 0 && decay_count <= n,
                 "decay_count (" + std::to_string(decay_count) +
                     ") must be in [0, n = " + std::to_string(n) + "]");
}

void check_shuffle_count(std::int64_t n) {
  LOWBIT_EXPECTS(n >= 0 && n <= std::numeric_limits<std::int32_t>::max(),
                 "shuffle takes 0..2^31-1 indices, got " + std::to_string(n));
}

void check_shuffle_indices(std::int64_t n, const std::int32_t* perm, Workspace workspace,
                           std::size_t needed) {
  check_shuffle_count(n);
  check_pointer(perm, n, "perm");
  LOWBIT_EXPECTS(workspace.bytes >= needed && (workspace.data != nullptr || needed == 0),
                 "workspace holds " + std::to_string(workspace.bytes) + " bytes, the op needs " +
                     std::to_string(needed) + " (shuffle_workspace_bytes)");
}

void check_gather_batch(const std::uint8_t* images, const std::uint8_t* labels, std::int64_t n,
                        std::int64_t example_size, const std::int64_t* cursor, std::int64_t batch,
                        const Normalization& norm, const float* x, const std::int32_t* labels_out) {
  LOWBIT_EXPECTS(example_size >= 1,
                 "example_size must be positive, got " + std::to_string(example_size));
  LOWBIT_EXPECTS(batch >= 0, "batch must not be negative, got " + std::to_string(batch));
  LOWBIT_EXPECTS(is_finite(norm.mean) && is_finite(norm.std) && norm.std != 0.0f,
                 "normalization needs a finite mean and a finite, non-zero std, got mean " +
                     std::to_string(norm.mean) + " std " + std::to_string(norm.std));
  check_pointer(images, n * example_size, "images");
  check_pointer(labels, n, "labels");
  check_pointer(cursor, batch > 0 ? 1 : 0, "cursor");
  check_pointer(x, batch * example_size, "x");
  check_pointer(labels_out, batch, "labels_out");
}

void check_advance_cursor(const std::int64_t* cursor) { check_pointer(cursor, 1, "cursor"); }

void check_affine_params_from_range(const float* min, const float* max, std::int64_t channels,
                                    AffineQuant quant, const float* scale,
                                    const std::int32_t* zero_point) {
  check_affine_quant(quant);
  check_pointer(min, channels, "min");
  check_pointer(max, channels, "max");
  check_pointer(scale, channels, "scale");
  check_pointer(zero_point, channels, "zero_point");
}

float lsq_gradient_scale(const ChannelLayout& layout, LsqQuant quant) {
  const double per_channel = static_cast<double>(layout.outer) * static_cast<double>(layout.inner);
  return static_cast<float>(1.0 / std::sqrt(per_channel * quant.qmax));
}

void check_ranges(const float* min, const float* max, std::int64_t channels) {
  for (std::int64_t c = 0; c < channels; ++c) {
    LOWBIT_EXPECTS(is_finite(min[c]) && is_finite(max[c]),
                   "range of channel " + std::to_string(c) + " is not finite: [" +
                       std::to_string(min[c]) + ", " + std::to_string(max[c]) + "]");
    LOWBIT_EXPECTS(min[c] <= max[c], "range of channel " + std::to_string(c) + " has min > max: [" +
                                         std::to_string(min[c]) + ", " + std::to_string(max[c]) +
                                         "]");
  }
}

void check_scales(const float* scale, std::int64_t channels) {
  for (std::int64_t c = 0; c < channels; ++c) {
    LOWBIT_EXPECTS(is_finite(scale[c]) && scale[c] > 0.0f,
                   "scale of channel " + std::to_string(c) + " must be positive and finite, got " +
                       std::to_string(scale[c]));
  }
}

void check_zero_points(const std::int32_t* zero_point, std::int64_t channels, AffineQuant quant) {
  for (std::int64_t c = 0; c < channels; ++c) {
    LOWBIT_EXPECTS(zero_point[c] >= quant.qmin && zero_point[c] <= quant.qmax,
                   "zero point of channel " + std::to_string(c) + " (" +
                       std::to_string(zero_point[c]) + ") is outside [" +
                       std::to_string(quant.qmin) + ", " + std::to_string(quant.qmax) + "]");
  }
}

}  // namespace detail
}  // namespace lowbit
