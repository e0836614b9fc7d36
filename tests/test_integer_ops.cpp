// Integer-only inference ops on both sides: the fixed-point element math
// against exact arithmetic, integer_conv2d and max_pool_codes against plain
// int64 loops on seeded random shapes, codes and grids (integers: equal, not
// close), and their argument checks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "both_sides.hpp"
#include "integer_cases.hpp"
#include "lowbit/deploy.hpp"
#include "lowbit/integer_element.hpp"

namespace lowbit {
namespace {

// Exact roundings (long double holds every product of two int32s exactly).
std::int64_t round_away(long double value) {
  return static_cast<std::int64_t>(value < 0 ? -std::floor(-value + 0.5L)
                                             : std::floor(value + 0.5L));
}
std::int64_t round_up(long double value) {
  return static_cast<std::int64_t>(std::floor(value + 0.5L));
}

TEST(IntegerElement, HighMulRoundsTiesUpAndDivideRoundsThemAway) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<std::int32_t> any(INT32_MIN, INT32_MAX);
  for (int i = 0; i < 100000; ++i) {
    const std::int32_t a = any(rng), b = any(rng);
    const long double exact = static_cast<long double>(a) * b / 2147483648.0L;
    ASSERT_EQ(rounding_doubling_high_mul(a, b), round_up(exact)) << a << " * " << b;
    const int e = i % 32;
    ASSERT_EQ(rounding_divide_by_pot(a, e), round_away(std::ldexp(static_cast<long double>(a), -e)))
        << a << " / 2^" << e;
  }
  EXPECT_EQ(rounding_doubling_high_mul(INT32_MIN, INT32_MIN), INT32_MAX);  // the one overflow
  EXPECT_EQ(rounding_doubling_high_mul(-3, 1 << 30), -1);                  // -1.5: up
  EXPECT_EQ(rounding_doubling_high_mul(3, 1 << 30), 2);
  EXPECT_EQ(rounding_divide_by_pot(-3, 1), -2);  // -1.5: away from 0
  EXPECT_EQ(rounding_divide_by_pot(3, 1), 2);
  EXPECT_EQ(rounding_divide_by_pot(-5, 2), -1);  // -1.25
}

TEST(IntegerElement, FixedPointMultipliersApproximateTheRealOne) {
  std::mt19937 rng(6);
  std::uniform_real_distribution<double> exponent(-30.0, 20.0);
  std::uniform_int_distribution<std::int32_t> acc(-(1 << 24), 1 << 24);
  for (int i = 0; i < 20000; ++i) {
    const double m = std::exp2(exponent(rng));
    const FixedPointMultiplier f = fixed_point_multiplier(m);
    if (m >= std::ldexp(1.0, 30)) continue;
    ASSERT_GE(f.multiplier, 1 << 30) << m;
    ASSERT_LE(std::fabs(std::ldexp(static_cast<double>(f.multiplier), f.shift - 31) - m),
              std::ldexp(1.0, f.shift - 32))
        << m;
    const std::int32_t a = acc(rng);
    const double exact = a * m;
    // A left shift (m >= 1) comes first and saturates: TFLite's order.
    if (std::fabs(std::ldexp(static_cast<double>(a), std::max(f.shift, 0))) > INT32_MAX) continue;
    // One rounding of a 31-bit multiplier: within one unit of the real product.
    EXPECT_LE(std::fabs(multiply_by_fixed_point(a, f.multiplier, f.shift) - exact), 1.0)
        << a << " * " << m;
  }
  EXPECT_EQ(fixed_point_multiplier(0.0).multiplier, 0);
  EXPECT_EQ(fixed_point_multiplier(1e-12).multiplier, 0);  // every acc rounds to 0 anyway
  const FixedPointMultiplier half = fixed_point_multiplier(0.5);
  EXPECT_EQ(half.multiplier, 1 << 30);
  EXPECT_EQ(half.shift, 0);
  EXPECT_EQ(multiply_by_fixed_point(3, half.multiplier, half.shift), 2);  // 1.5: up
  EXPECT_EQ(multiply_by_fixed_point(-3, half.multiplier, half.shift), -1);
  const FixedPointMultiplier big = fixed_point_multiplier(1000.0);  // a left shift
  EXPECT_EQ(multiply_by_fixed_point(7, big.multiplier, big.shift), 7000);
  // The shifted accumulator saturates (to INT32_MAX, not a wrapped negative).
  EXPECT_EQ(multiply_by_fixed_point(INT32_MAX / 2, big.multiplier, big.shift),
            rounding_doubling_high_mul(INT32_MAX, big.multiplier));
  EXPECT_EQ(accumulate(INT32_MAX / 2, 4, 0), INT32_MAX);  // saturates, never wraps
  EXPECT_EQ(accumulate(-3, 2, 5), -7);
}

// ---------------------------------------------------------------------------
// The ops on both sides

template <class Api>
class IntegerOps : public test::BothSides<Api> {};
TYPED_TEST_SUITE(IntegerOps, test::Sides, test::SideNames);

// Random convolutions, then Linear layers (1×1 on [N, F, 1, 1], which the
// GPU runs with __dp4a when F is a multiple of 4), LeNet-5's among them.
TYPED_TEST(IntegerOps, ConvMatchesPlainLoopsOnRandomShapes) {
  TypeParam api;
  std::vector<test::ConvCase> cases;
  for (std::uint32_t seed = 0; seed < 60; ++seed) cases.push_back(test::random_case(seed));
  std::uint32_t seed = 100;
  for (const std::int64_t features : {4, 8, 400, 120, 84, 6, 255})
    cases.push_back(test::random_case(seed++, {5, features, 1, 1, 7, 1, 1, 0}));
  for (const test::ConvCase& c : cases) {
    const Conv2dShape& s = c.shape;
    auto x = api.upload(c.x);
    auto w = api.upload(c.w);
    auto w_zero = api.upload(c.w_zero_point);
    auto bias = api.upload(c.bias);
    auto multiplier = api.upload(c.multiplier);
    auto shift = api.upload(c.shift);
    const std::size_t outputs =
        static_cast<std::size_t>(s.batch * s.out_channels * s.out_height() * s.out_width());
    auto y = api.upload(std::vector<std::uint8_t>(outputs, 0xA5));
    const Requantization r{multiplier.data(), shift.data(), c.y_zero_point, c.y_min, c.y_max};
    api.integer_conv2d(s, x.data(), c.x_zero_point, c.x_fraction_bits, w.data(), w_zero.data(),
                       bias.data(), c.accumulator_shift, r, y.data());
    ASSERT_EQ(api.download(y), test::expected_conv(c))
        << "batch " << s.batch << " " << s.in_channels << "x" << s.height << "x" << s.width
        << " -> " << s.out_channels << " k" << s.kernel << " s" << s.stride << " p" << s.padding;
  }
}

TYPED_TEST(IntegerOps, MaxPoolTakesEachWindowsLargestCode) {
  TypeParam api;
  std::mt19937 rng(9);
  for (const Pool2dShape s : {Pool2dShape{3, 6, 28, 28, 2, 2}, Pool2dShape{2, 3, 9, 7, 3, 2},
                              Pool2dShape{1, 1, 5, 5, 2, 1}, Pool2dShape{0, 2, 4, 4, 2, 2}}) {
    std::vector<std::uint8_t> x_host(
        static_cast<std::size_t>(s.batch * s.channels * s.height * s.width));
    for (auto& v : x_host) v = static_cast<std::uint8_t>(rng());
    std::vector<std::uint8_t> want;
    for (std::int64_t plane = 0; plane < s.batch * s.channels; ++plane)
      for (std::int64_t oy = 0; oy < s.out_height(); ++oy)
        for (std::int64_t ox = 0; ox < s.out_width(); ++ox) {
          std::uint8_t best = 0;
          for (std::int64_t ky = 0; ky < s.kernel; ++ky)
            for (std::int64_t kx = 0; kx < s.kernel; ++kx)
              best = std::max(
                  best,
                  x_host[static_cast<std::size_t>(
                      (plane * s.height + oy * s.stride + ky) * s.width + ox * s.stride + kx)]);
          want.push_back(best);
        }
    auto x = api.upload(x_host);
    auto y = api.upload(std::vector<std::uint8_t>(want.size(), 0));
    api.max_pool_codes(s, x.data(), y.data());
    EXPECT_EQ(api.download(y), want) << s.height << "x" << s.width << " k" << s.kernel;
  }
}

TYPED_TEST(IntegerOps, BadArgumentsAreRefusedBeforeAnyWork) {
  TypeParam api;
  const Conv2dShape s{1, 2, 4, 4, 3, 3, 1, 1};
  auto x = api.upload(std::vector<std::uint8_t>(32, 1));
  auto w = api.upload(std::vector<std::uint8_t>(54, 1));
  auto ints = api.upload(std::vector<std::int32_t>(3, 1 << 30));
  auto y = api.upload(std::vector<std::uint8_t>(48, 7));
  const Requantization r{ints.data(), ints.data(), 0, 0, 255};
  const auto conv = [&](const Conv2dShape& shape, const std::uint8_t* weights, int shift,
                        const Requantization& req) {
    return [&, shape, weights, shift, req] {
      api.integer_conv2d(shape, x.data(), 0, 0, weights, ints.data(), ints.data(), shift, req,
                         y.data());
    };
  };
  EXPECT_TRUE(test::throws_mentioning(conv(s, nullptr, 0, r), "w is null"));
  EXPECT_TRUE(test::throws_mentioning(conv(s, w.data(), 31, r), "accumulator_shift"));
  const auto zero_point = [&](std::int32_t x_zero_point, int x_fraction_bits) {
    return [&, x_zero_point, x_fraction_bits] {
      api.integer_conv2d(s, x.data(), x_zero_point, x_fraction_bits, w.data(), ints.data(),
                         ints.data(), 0, r, y.data());
    };
  };
  EXPECT_TRUE(test::throws_mentioning(zero_point(256, 0), "x_zero_point must be in"));
  EXPECT_TRUE(test::throws_mentioning(zero_point(0, 17), "x_fraction_bits"));
  Requantization wide = r;
  wide.max = 256;
  EXPECT_TRUE(test::throws_mentioning(conv(s, w.data(), 0, wide), "[0, 255]"));
  Conv2dShape huge = s;
  huge.in_channels = 2000;  // 33025 taps fit in int32 sums; 2000·25 do not
  huge.kernel = 5;
  huge.height = huge.width = 5;
  EXPECT_TRUE(test::throws_mentioning(conv(huge, w.data(), 0, r), "overflow"));
  EXPECT_EQ(api.download(y), std::vector<std::uint8_t>(48, 7));
}

}  // namespace
}  // namespace lowbit
