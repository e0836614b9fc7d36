#include "checks.hpp"

#include <cmath>
#include <string>

#include "lowbit/element.hpp"
#include "lowbit/error.hpp"
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
void check_tensor_pair(const float* x, const char* x_name, const float* y, const char* y_name,
                       const ChannelLayout& layout) {
  check_layout(layout);
  check_pointer(x, layout.size(), x_name);
  check_pointer(y, layout.size(), y_name);
}

std::int64_t channels_in_use(const ChannelLayout& layout) {
  return layout.size() > 0 ? layout.channels : 0;
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

void check_fake_quant_range(const float* x, const float* y, const ChannelLayout& layout,
                            const float* min, const float* max, RangeQuant quant) {
  check_bits(quant.bits);
  check_tensor_pair(x, "x", y, "y", layout);
  check_pointer(min, channels_in_use(layout), "min");
  check_pointer(max, channels_in_use(layout), "max");
}

void check_fake_quant_affine(const float* x, const float* y, const ChannelLayout& layout,
                             const float* scale, const std::int32_t* zero_point,
                             AffineQuant quant) {
  check_affine_quant(quant);
  check_tensor_pair(x, "x", y, "y", layout);
  check_pointer(scale, channels_in_use(layout), "scale");
  check_pointer(zero_point, channels_in_use(layout), "zero_point");
}

void check_ste_backward(const float* dy, const std::uint32_t* mask, std::int64_t n,
                        const float* dx) {
  check_pointer(dy, n, "dy");
  check_pointer(mask, n, "mask");
  check_pointer(dx, n, "dx");
}

void check_ste_backward_range(const float* dy, const std::uint32_t* mask,
                              const ChannelLayout& layout, const float* dx, const float* d_min,
                              const float* d_max, Workspace workspace) {
  check_tensor_pair(dy, "dy", dx, "dx", layout);
  check_pointer(mask, layout.size(), "sides_mask");
  check_pointer(d_min, channels_in_use(layout), "d_min");
  check_pointer(d_max, channels_in_use(layout), "d_max");
  check_workspace(workspace, layout);
}

void check_ema_fake_quant(const float* x, const float* y, std::int64_t n,
                          const EmaRangeState* state, const EmaConfig& config) {
  check_bits(config.quant.bits);
  LOWBIT_EXPECTS(config.decay >= 0.0f && config.decay < 1.0f,
                 "EMA decay must be in [0, 1), got " + std::to_string(config.decay));
  LOWBIT_EXPECTS(config.quant_delay >= 0, "quant_delay must not be negative");
  LOWBIT_EXPECTS(config.freeze_step >= 0, "freeze_step must not be negative");
  check_pointer(x, n, "x");
  check_pointer(y, n, "y");
  check_pointer(state, 1, "state");
}

void check_weight_range(const float* w, const ChannelLayout& layout, const float* min,
                        const float* max, Workspace workspace) {
  check_layout(layout);
  check_pointer(w, layout.size(), "w");
  check_pointer(min, channels_in_use(layout), "min");
  check_pointer(max, channels_in_use(layout), "max");
  check_workspace(workspace, layout);
}

void check_lsq_forward(const float* x, const float* y, const ChannelLayout& layout,
                       const float* scale, LsqQuant quant) {
  check_lsq_quant(quant);
  check_tensor_pair(x, "x", y, "y", layout);
  check_pointer(scale, channels_in_use(layout), "scale");
}

void check_lsq_backward(const float* dy, const float* x, const ChannelLayout& layout,
                        const float* scale, LsqQuant quant, const float* dx,
                        const float* d_scale, Workspace workspace) {
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

float lsq_gradient_scale(const ChannelLayout& layout, LsqQuant quant) {
  const double per_channel = static_cast<double>(layout.outer) * static_cast<double>(layout.inner);
  return static_cast<float>(1.0 / std::sqrt(per_channel * quant.qmax));
}

void check_ranges(const float* min, const float* max, std::int64_t channels) {
  for (std::int64_t c = 0; c < channels; ++c) {
    LOWBIT_EXPECTS(is_finite(min[c]) && is_finite(max[c]),
                   "range of channel " + std::to_string(c) + " is not finite: [" +
                       std::to_string(min[c]) + ", " + std::to_string(max[c]) + "]");
    LOWBIT_EXPECTS(min[c] <= max[c], "range of channel " + std::to_string(c) +
                                         " has min > max: [" + std::to_string(min[c]) + ", " +
                                         std::to_string(max[c]) + "]");
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
