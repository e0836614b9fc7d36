// The element math of integer-only inference: gemmlowp's and TFLite's
// fixed-point requantization, written once for lowbit::ref and lowbit::cuda
// (as element.hpp is), so both give the same codes. docs/numerics.md states it.
#pragma once

#include <cstdint>

#include "lowbit/types.hpp"

namespace lowbit {

/// Fixed-point form of a real multiplier m >= 0 (TFLite's
/// QuantizeMultiplier): m ≈ multiplier·2^(shift - 31), multiplier in
/// [2^30, 2^31), shift <= 30. Below 2^-32 (where every int32 accumulator
/// requantizes to 0) it is 0 with shift 0. Host only; throws lowbit::Error
/// for a negative, non-finite or too large m.
struct FixedPointMultiplier {
  std::int32_t multiplier = 0;
  std::int32_t shift = 0;
};
FixedPointMultiplier fixed_point_multiplier(double m);

/// round(a·b / 2^31), ties upward (-1.5 gives -1), saturating the one
/// overflow (INT32_MIN·INT32_MIN): gemmlowp's SaturatingRoundingDoublingHighMul.
LOWBIT_HD std::int32_t rounding_doubling_high_mul(std::int32_t a, std::int32_t b) {
  if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
  const std::int64_t ab = static_cast<std::int64_t>(a) * b;
  const std::int64_t nudge = ab >= 0 ? (std::int64_t{1} << 30) : 1 - (std::int64_t{1} << 30);
  return static_cast<std::int32_t>((ab + nudge) / (std::int64_t{1} << 31));
}

/// round(x / 2^exponent), ties away from zero: gemmlowp's RoundingDivideByPOT
/// (exponent in [0, 31]).
LOWBIT_HD std::int32_t rounding_divide_by_pot(std::int32_t x, int exponent) {
  const std::int32_t mask = static_cast<std::int32_t>((std::int64_t{1} << exponent) - 1);
  const std::int32_t remainder = x & mask;
  const std::int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/// acc·multiplier·2^(shift - 31), rounded twice as TFLite's
/// MultiplyByQuantizedMultiplier rounds (the high half ties upward, the
/// shift ties away from zero); a left shift (shift > 0) comes first and
/// saturates instead of overflowing.
LOWBIT_HD std::int32_t multiply_by_fixed_point(std::int32_t acc, std::int32_t multiplier,
                                               std::int32_t shift) {
  if (shift > 0) {
    const std::int64_t shifted = static_cast<std::int64_t>(acc) * (std::int64_t{1} << shift);
    acc = shifted > INT32_MAX   ? INT32_MAX
          : shifted < INT32_MIN ? INT32_MIN
                                : static_cast<std::int32_t>(shifted);
  }
  return rounding_divide_by_pot(rounding_doubling_high_mul(acc, multiplier),
                                shift > 0 ? 0 : -shift);
}

/// The accumulator sum·2^shift + bias, saturated to int32.
LOWBIT_HD std::int32_t accumulate(std::int32_t sum, int shift, std::int32_t bias) {
  const std::int64_t acc = static_cast<std::int64_t>(sum) * (std::int64_t{1} << shift) + bias;
  return acc > INT32_MAX ? INT32_MAX : acc < INT32_MIN ? INT32_MIN : static_cast<std::int32_t>(acc);
}

/// The output code of an accumulator of channel c.
LOWBIT_HD std::int32_t requantize(std::int32_t acc, const Requantization& r, std::int64_t c) {
  const std::int64_t code =
      std::int64_t{r.zero_point} + multiply_by_fixed_point(acc, r.multiplier[c], r.shift[c]);
  return static_cast<std::int32_t>(code < r.min ? r.min : (code > r.max ? r.max : code));
}

/// Output (n, k, oy, ox) of integer_conv2d (ref.hpp): the window's sum of
/// products in int32, accumulated with the bias and requantized. Both sides
/// compute each output with this, in this order.
LOWBIT_HD std::uint8_t integer_conv_output(const Conv2dShape& s, const std::uint8_t* x,
                                           std::int32_t x_zero_point, int x_fraction_bits,
                                           const std::uint8_t* w,
                                           const std::int32_t* w_zero_point,
                                           const std::int32_t* bias, int accumulator_shift,
                                           const Requantization& r, std::int64_t n, std::int64_t k,
                                           std::int64_t oy, std::int64_t ox) {
  const std::uint8_t* wk = w + k * s.in_channels * s.kernel * s.kernel;
  const std::int32_t wz = w_zero_point[k];
  std::int32_t sum = 0;
  for (std::int64_t c = 0; c < s.in_channels; ++c)
    for (std::int64_t ky = 0; ky < s.kernel; ++ky) {
      const std::int64_t iy = oy * s.stride - s.padding + ky;
      if (iy < 0 || iy >= s.height) continue;
      const std::uint8_t* row = x + ((n * s.in_channels + c) * s.height + iy) * s.width;
      const std::uint8_t* w_row = wk + (c * s.kernel + ky) * s.kernel;
      for (std::int64_t kx = 0; kx < s.kernel; ++kx) {
        const std::int64_t ix = ox * s.stride - s.padding + kx;
        if (ix < 0 || ix >= s.width) continue;
        sum += ((std::int32_t{row[ix]} << x_fraction_bits) - x_zero_point) *
               (std::int32_t{w_row[kx]} - wz);
      }
    }
  return static_cast<std::uint8_t>(requantize(accumulate(sum, accumulator_shift, bias[k]), r, k));
}

/// Output (plane, oy, ox) of max_pool_codes: the window's largest code.
LOWBIT_HD std::uint8_t max_pool_code(const Pool2dShape& s, const std::uint8_t* x,
                                     std::int64_t plane, std::int64_t oy, std::int64_t ox) {
  std::uint8_t best = 0;
  for (std::int64_t ky = 0; ky < s.kernel; ++ky)
    for (std::int64_t kx = 0; kx < s.kernel; ++kx) {
      const std::uint8_t v =
          x[(plane * s.height + oy * s.stride + ky) * s.width + ox * s.stride + kx];
      best = v > best ? v : best;
    }
  return best;
}

}  // namespace lowbit
