// CPU reference of integer_inference.cu.
#include <cmath>

#include "checks.hpp"
#include "lowbit/error.hpp"
#include "lowbit/integer_element.hpp"
#include "lowbit/ref.hpp"

namespace lowbit {

FixedPointMultiplier fixed_point_multiplier(double m) {
  LOWBIT_EXPECTS(m >= 0.0 && std::isfinite(m), "requantization multiplier must be finite and >= 0");
  if (m == 0.0) return {};
  int exponent = 0;
  const double fraction =
      std::frexp(m, &exponent);  // m = fraction·2^exponent, fraction in [0.5, 1)
  auto q = static_cast<std::int64_t>(std::llround(fraction * 2147483648.0));
  if (q == (std::int64_t{1} << 31)) {  // rounded up to 1.0
    q /= 2;
    ++exponent;
  }
  // Below 2^-32, every int32 accumulator requantizes to 0: so does a 0.
  if (exponent < -31) return {};
  LOWBIT_EXPECTS(exponent <= 30,
                 "requantization multiplier " + std::to_string(m) + " is too large (at most 2^30)");
  return {static_cast<std::int32_t>(q), exponent};
}

}  // namespace lowbit

namespace lowbit::ref {

void integer_conv2d(const Conv2dShape& s, const std::uint8_t* x, std::int32_t x_zero_point, int x_fraction_bits,
                    const std::uint8_t* w, const std::int32_t* w_zero_point,
                    const std::int32_t* bias, int accumulator_shift, const Requantization& r,
                    std::uint8_t* y) {
  detail::check_integer_conv2d(s, x, x_zero_point, x_fraction_bits, w, w_zero_point, bias,
                                       accumulator_shift, r, y);
  const std::int64_t oh = s.out_height(), ow = s.out_width();
  for (std::int64_t n = 0; n < s.batch; ++n)
    for (std::int64_t k = 0; k < s.out_channels; ++k)
      for (std::int64_t oy = 0; oy < oh; ++oy)
        for (std::int64_t ox = 0; ox < ow; ++ox)
          *y++ = integer_conv_output(s, x, x_zero_point, x_fraction_bits, w, w_zero_point, bias, accumulator_shift,
                                     r, n, k, oy, ox);
}

void max_pool_codes(const Pool2dShape& s, const std::uint8_t* x, std::uint8_t* y) {
  detail::check_max_pool_codes(s, x, y);
  for (std::int64_t plane = 0; plane < s.batch * s.channels; ++plane)
    for (std::int64_t oy = 0; oy < s.out_height(); ++oy)
      for (std::int64_t ox = 0; ox < s.out_width(); ++ox) *y++ = max_pool_code(s, x, plane, oy, ox);
}

}  // namespace lowbit::ref
