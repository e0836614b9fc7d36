// Random integer convolutions and their definition as plain loops, shared
// by the op tests of both sides and the CPU backend's test.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "lowbit/integer_element.hpp"
#include "lowbit/types.hpp"

namespace lowbit::test {

struct ConvCase {
  Conv2dShape shape;
  std::vector<std::uint8_t> x, w;
  std::int32_t x_zero_point = 0;
  int x_fraction_bits = 0;
  std::vector<std::int32_t> w_zero_point, bias, multiplier, shift;
  int accumulator_shift = 0;
  std::int32_t y_zero_point = 0, y_min = 0, y_max = 255;
};

/// Random codes, grids and requantization for `shape`, or a random shape
/// too when it has batch -1.
inline ConvCase random_case(std::uint32_t seed, Conv2dShape shape = {-1}) {
  std::mt19937 rng(seed);
  const auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  ConvCase c;
  Conv2dShape& s = c.shape;
  s = shape;
  if (s.batch < 0)
    s = {pick(0, 3), pick(1, 5), pick(1, 13), pick(1, 13),
         pick(1, 7), pick(1, 5), pick(1, 3),  pick(0, 2)};
  while (s.kernel > s.height + 2 * s.padding || s.kernel > s.width + 2 * s.padding) --s.kernel;
  const int x_bits = std::vector<int>{2, 4, 8}[pick(0, 2)];
  const int w_bits = std::vector<int>{2, 4, 8}[pick(0, 2)];
  for (std::int64_t i = 0; i < s.batch * s.in_channels * s.height * s.width; ++i)
    c.x.push_back(static_cast<std::uint8_t>(pick(0, (1 << x_bits) - 1)));
  for (std::int64_t i = 0; i < s.out_channels * s.in_channels * s.kernel * s.kernel; ++i)
    c.w.push_back(static_cast<std::uint8_t>(pick(0, (1 << w_bits) - 1)));
  c.x_fraction_bits = shape.batch < 0 && pick(0, 1) == 1 ? pick(1, 8) : 0;
  c.x_zero_point = pick(0, ((1 << x_bits) - 1) << c.x_fraction_bits);
  c.accumulator_shift = pick(0, 6);
  for (std::int64_t k = 0; k < s.out_channels; ++k) {
    c.w_zero_point.push_back(pick(0, (1 << w_bits) - 1));
    c.bias.push_back(pick(-100000, 100000));
    const FixedPointMultiplier m = fixed_point_multiplier(std::exp2(pick(-400, 0) / 20.0));
    c.multiplier.push_back(m.multiplier);
    c.shift.push_back(m.shift);
  }
  c.y_zero_point = pick(0, 255);
  c.y_min = pick(0, 1) == 1 ? c.y_zero_point : 0;  // a fused ReLU, or none
  c.y_max = pick(c.y_min, 255);
  return c;
}

/// The op's definition as plain loops, sums in int64 (which must fit int32).
inline std::vector<std::uint8_t> expected_conv(const ConvCase& c) {
  const Conv2dShape& s = c.shape;
  const std::int64_t oh = s.out_height(), ow = s.out_width();
  std::vector<std::uint8_t> y;
  for (std::int64_t n = 0; n < s.batch; ++n)
    for (std::int64_t k = 0; k < s.out_channels; ++k)
      for (std::int64_t oy = 0; oy < oh; ++oy)
        for (std::int64_t ox = 0; ox < ow; ++ox) {
          std::int64_t sum = 0;
          for (std::int64_t ci = 0; ci < s.in_channels; ++ci)
            for (std::int64_t ky = 0; ky < s.kernel; ++ky)
              for (std::int64_t kx = 0; kx < s.kernel; ++kx) {
                const std::int64_t iy = oy * s.stride - s.padding + ky;
                const std::int64_t ix = ox * s.stride - s.padding + kx;
                if (iy < 0 || iy >= s.height || ix < 0 || ix >= s.width) continue;
                const std::int64_t a =
                    c.x[((n * s.in_channels + ci) * s.height + iy) * s.width + ix];
                const std::int64_t b =
                    c.w[((k * s.in_channels + ci) * s.kernel + ky) * s.kernel + kx];
                sum += ((a << c.x_fraction_bits) - c.x_zero_point) * (b - c.w_zero_point[k]);
              }
          EXPECT_EQ(sum, static_cast<std::int32_t>(sum));
          const std::int64_t acc = sum * (std::int64_t{1} << c.accumulator_shift) + c.bias[k];
          const std::int32_t clamped_acc = static_cast<std::int32_t>(
              std::min<std::int64_t>(INT32_MAX, std::max<std::int64_t>(INT32_MIN, acc)));
          const std::int64_t code =
              c.y_zero_point + multiply_by_fixed_point(clamped_acc, c.multiplier[k], c.shift[k]);
          y.push_back(static_cast<std::uint8_t>(
              std::min<std::int64_t>(c.y_max, std::max<std::int64_t>(c.y_min, code))));
        }
  return y;
}

}  // namespace lowbit::test
