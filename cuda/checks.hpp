// Argument checks shared by lowbit::ref and lowbit::cuda, so both reject the
// same inputs with the same messages.
#pragma once

#include <cstdint>

#include "lowbit/types.hpp"

namespace lowbit::detail {

void check_bits(int bits);
void check_layout(const ChannelLayout& layout);
void check_range_quant(RangeQuant quant);
void check_affine_quant(AffineQuant quant);
void check_lsq_quant(LsqQuant quant);
void check_ema_config(const EmaConfig& config);
void check_pack_bits(int bits);
/// Throws when `pointer` is null but n > 0 elements must be read or written.
void check_pointer(const void* pointer, std::int64_t n, const char* name);
void check_workspace(Workspace workspace, const ChannelLayout& layout);

/// LSQ's gradient scale g = 1/sqrt(N·qmax), N = elements per channel.
float lsq_gradient_scale(const ChannelLayout& layout, LsqQuant quant);

// Value checks, only possible where the values are in host memory (ref).
void check_ranges(const float* min, const float* max, std::int64_t channels);
void check_scales(const float* scale, std::int64_t channels);
void check_zero_points(const std::int32_t* zero_point, std::int64_t channels, AffineQuant quant);

}  // namespace lowbit::detail
