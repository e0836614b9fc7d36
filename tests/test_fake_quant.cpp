// The CPU reference of the fake-quant forward: per tensor and per channel on
// every axis, both families, masks in both formats, equal to an independent
// element loop that finds each channel by division.
#include <gtest/gtest.h>

#include <vector>

#include "lowbit/ref.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

using test::random_values;
using test::same_bits;

struct Shape {
  std::vector<std::int64_t> dims;
  int axis;
};

const std::vector<Shape> kShapes = {
    {{37}, 0}, {{6, 1, 5, 5}, 0}, {{4, 6, 9, 7}, 1}, {{120, 400}, 0}, {{3, 5, 2, 3, 11}, 4},
    {{2, 3, 4, 5, 6}, 2}, {{1000}, 0}};

std::vector<float> channel_ranges(std::int64_t channels, std::uint32_t seed, bool lower) {
  std::vector<float> v = random_values(channels, seed, 1.5f);
  for (auto& r : v) r = lower ? -std::fabs(r) - 0.1f : std::fabs(r) + 0.1f;
  return v;
}

std::vector<std::uint32_t> expected_mask(const std::vector<bool>& plane0,
                                         const std::vector<bool>& plane1) {
  const std::int64_t n = static_cast<std::int64_t>(plane0.size());
  std::vector<std::uint32_t> words(mask_words(n, plane1.empty() ? MaskFormat::pass
                                                                : MaskFormat::sides));
  for (std::int64_t i = 0; i < n; ++i) {
    if (plane0[i]) words[i / 32] |= 1u << (i % 32);
    if (!plane1.empty() && plane1[i]) words[(n + 31) / 32 + i / 32] |= 1u << (i % 32);
  }
  return words;
}

class RangeForward : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(RangeForward, PerChannelOnEveryAxisMatchesElementLoop) {
  const RangeQuant quant{std::get<0>(GetParam()), std::get<1>(GetParam())};
  std::uint32_t seed = 1;
  for (const Shape& shape : kShapes) {
    const ChannelLayout layout = ChannelLayout::per_channel(shape.dims, shape.axis);
    const std::int64_t n = layout.size();
    const auto x = random_values(n, seed++);
    const auto lo = channel_ranges(layout.channels, seed++, true);
    const auto hi = channel_ranges(layout.channels, seed++, false);
    for (MaskFormat format : {MaskFormat::pass, MaskFormat::sides}) {
      std::vector<float> y(n);
      std::vector<std::uint32_t> mask(mask_words(n, format), 0xdeadbeefu);
      ref::fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), quant, mask.data(),
                            format);
      std::vector<float> want(n);
      std::vector<bool> plane0(n), plane1;
      if (format == MaskFormat::sides) plane1.resize(n);
      for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t c = (i / layout.inner) % layout.channels;
        const RangeParams p = nudge_range(lo[c], hi[c], quant.qmin(), quant.qmax());
        want[i] = fake_quant(x[i], p, range_scaling(layout));
        plane0[i] = format == MaskFormat::pass ? ste_pass(x[i], p) : at_or_above_min(x[i], p);
        if (format == MaskFormat::sides) plane1[i] = at_or_below_max(x[i], p);
      }
      EXPECT_TRUE(same_bits(want, y)) << "axis " << shape.axis;
      EXPECT_TRUE(same_bits(expected_mask(plane0, plane1), mask)) << "axis " << shape.axis;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllWidths, RangeForward,
                         ::testing::Combine(::testing::Range(kMinBits, kMaxBits + 1),
                                            ::testing::Bool()));

TEST(AffineForward, PerChannelOnEveryAxisMatchesElementLoop) {
  std::uint32_t seed = 100;
  for (int bits : {2, 4, 8, 16}) {
    const AffineQuant quant = bits % 4 == 0 ? AffineQuant::signed_bits(bits)
                                            : AffineQuant::unsigned_bits(bits);
    for (const Shape& shape : kShapes) {
      const ChannelLayout layout = ChannelLayout::per_channel(shape.dims, shape.axis);
      const std::int64_t n = layout.size();
      const auto x = random_values(n, seed++);
      std::vector<float> scale(layout.channels);
      std::vector<std::int32_t> zero_point(layout.channels);
      for (std::int64_t c = 0; c < layout.channels; ++c) {
        scale[c] = 4.0f / static_cast<float>(quant.qmax - quant.qmin) * (1.0f + 0.1f * c);
        zero_point[c] = quant.qmin + static_cast<std::int32_t>((c * 7919) % (quant.qmax - quant.qmin + 1));
      }
      std::vector<float> y(n);
      std::vector<std::uint32_t> mask(mask_words(n), 0xdeadbeefu);
      ref::fake_quant_affine(x.data(), y.data(), layout, scale.data(), zero_point.data(), quant,
                             mask.data());
      std::vector<float> want(n);
      std::vector<bool> pass(n);
      for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t c = (i / layout.inner) % layout.channels;
        const AffineParams p = make_affine(scale[c], zero_point[c], quant.qmin, quant.qmax);
        want[i] = fake_quant(x[i], p);
        pass[i] = ste_pass(x[i], p);
      }
      EXPECT_TRUE(same_bits(want, y)) << "bits " << bits << " axis " << shape.axis;
      EXPECT_TRUE(same_bits(expected_mask(pass, {}), mask));
    }
  }
}

// x and y may be the same buffer.
TEST(RangeForward, InPlace) {
  const auto x = random_values(1001, 7);
  std::vector<float> y(x.size()), inplace = x;
  const float lo = -1.0f, hi = 2.0f;
  const auto layout = ChannelLayout::per_tensor(1001);
  ref::fake_quant_range(x.data(), y.data(), layout, &lo, &hi, {4, false}, nullptr);
  ref::fake_quant_range(inplace.data(), inplace.data(), layout, &lo, &hi, {4, false}, nullptr);
  EXPECT_TRUE(same_bits(y, inplace));
}

// The probe through the array API: the mask is inclusive at both ends.
TEST(RangeForward, ProbeMask) {
  const std::vector<float> x = {-0.25f, -0.01f, 0.0f,   0.01f,  0.24f, 0.25f,
                                0.26f,  63.74f, 63.75f, 63.76f, 64.0f};
  const float lo = 0.0f, hi = 63.75f;
  std::vector<float> y(x.size());
  std::vector<std::uint32_t> mask(1);
  ref::fake_quant_range(x.data(), y.data(), ChannelLayout::per_tensor(11), &lo, &hi, {8, false},
                        mask.data());
  EXPECT_EQ(mask[0], 0b00111111100u);
}

}  // namespace
}  // namespace lowbit
