// The element math of element.hpp, which the CPU reference and the CUDA
// kernels share: TensorFlow's nudging cases, the 11-point probe, exact ties,
// degenerate and subnormal inputs, and the per-channel cursor's index
// arithmetic. Range-mode cases hold for both scalings (the values are
// dyadic); where the two differ, tests/test_range_golden.cpp pins each
// against TensorFlow.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "channel_cursor.hpp"
#include "lowbit/element.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

using test::bits_of;

float from_bits(std::uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr RangeScaling kScalings[] = {RangeScaling::divide, RangeScaling::multiply};

const char* name(RangeScaling s) { return s == RangeScaling::divide ? "divide" : "multiply"; }

struct NudgeCase {
  const char* name;
  float min, max;                    // requested range
  float nudged_min, nudged_max;      // expected
};

// TensorFlow's nudging cases at a step of 0.25 for every width and both
// range kinds. All values are dyadic so every expectation is exact.
std::vector<NudgeCase> nudge_cases(RangeQuant q) {
  const float steps = static_cast<float>(q.qmax() - q.qmin());
  const float span = steps * 0.25f;
  return {
      {"no nudging", 0.0f, span, 0.0f, span},
      {"nudged down", -0.0625f, span - 0.0625f, 0.0f, span},          // zp 0.25 -> 0
      {"nudged up", -0.1875f, span - 0.1875f, -0.25f, span - 0.25f},  // zp 0.75 -> 1
      {"tie rounds away", -0.125f, span - 0.125f, -0.25f, span - 0.25f},  // zp 0.5 -> 1
      {"zero point at qmax", -(span - 0.0625f), 0.0625f, -span, 0.0f},
      {"min above zero", 0.5f, 0.5f + span, 0.0f, span},   // zp below qmin -> qmin
      {"max below zero", -0.5f - span, -0.5f, -span, 0.0f},  // zp above qmax -> qmax
  };
}

class NudgeTest : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(NudgeTest, MatchesTensorFlowCases) {
  const RangeQuant q{std::get<0>(GetParam()), std::get<1>(GetParam())};
  for (const NudgeCase& c : nudge_cases(q)) {
    SCOPED_TRACE(c.name);
    const RangeParams p = nudge_range(c.min, c.max, q.qmin(), q.qmax());
    EXPECT_EQ(p.scale, 0.25f);
    EXPECT_EQ(p.nudged_min, c.nudged_min);
    EXPECT_EQ(p.nudged_max, c.nudged_max);
    // The nudged ends and 0 are fixed points; values quantize onto the grid.
    for (RangeScaling s : kScalings) {
      SCOPED_TRACE(name(s));
      EXPECT_EQ(fake_quant(c.nudged_min, p, s), c.nudged_min);
      EXPECT_EQ(fake_quant(c.nudged_max, p, s), c.nudged_max);
      EXPECT_EQ(fake_quant(0.0f, p, s), 0.0f);
      EXPECT_EQ(fake_quant(c.nudged_min + 0.3f, p, s), c.nudged_min + 0.25f);
      EXPECT_EQ(fake_quant(c.nudged_min - 1.0f, p, s), c.nudged_min);
      EXPECT_EQ(fake_quant(c.nudged_max + 1.0f, p, s), c.nudged_max);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllWidths, NudgeTest,
                         ::testing::Combine(::testing::Values(2, 3, 4, 8, 12, 16),
                                            ::testing::Bool()));

// Symmetric [-10, 10] at 8 bits: 0 is exactly representable, in both kinds.
TEST(Nudge, SymmetricRangeKeepsZeroExact) {
  for (bool narrow : {false, true}) {
    const RangeQuant q{8, narrow};
    const RangeParams p = nudge_range(-10.0f, 10.0f, q.qmin(), q.qmax());
    for (RangeScaling s : kScalings) {
      EXPECT_EQ(fake_quant(0.0f, p, s), 0.0f) << "narrow " << narrow;
      EXPECT_EQ(fake_quant(-0.0f, p, s), 0.0f);
    }
    EXPECT_LE(p.nudged_min, 0.0f);
    EXPECT_GE(p.nudged_max, 0.0f);
  }
}

// The 11-point probe around [0, 63.75] (8 bits, step 0.25, no nudging).
TEST(Probe, ForwardAndMask) {
  const RangeParams p = nudge_range(0.0f, 63.75f, 0, 255);
  const float step = 0.25f;
  const float min = 0.0f, max = 63.75f;
  const std::vector<float> x = {min - step,        min - 0.01f, min,         min + 0.01f,
                                min + step - 0.01f, min + step,  min + step + 0.01f,
                                max - 0.01f,        max,         max + 0.01f, max + step};
  const std::vector<float> y = {0.0f,  0.0f,   0.0f,   0.0f,   0.25f, 0.25f,
                                0.25f, 63.75f, 63.75f, 63.75f, 63.75f};
  const std::vector<bool> pass = {false, false, true, true, true, true,
                                  true,  true,  true, false, false};
  for (std::size_t i = 0; i < x.size(); ++i) {
    for (RangeScaling s : kScalings) EXPECT_EQ(fake_quant(x[i], p, s), y[i]) << "probe point " << i;
    EXPECT_EQ(ste_pass(x[i], p), pass[i]) << "probe point " << i;
    // The sides planes tell below (plane 1 only) from above (plane 0 only).
    EXPECT_EQ(at_or_above_min(x[i], p), i >= 2) << i;
    EXPECT_EQ(at_or_below_max(x[i], p), i <= 8) << i;
  }
}

// Range mode rounds ties up (floor(v + 0.5)); affine mode to even.
TEST(Ties, RangeRoundsUpAffineRoundsToEven) {
  const RangeParams range = nudge_range(-128.0f, 127.0f, 0, 255);  // scale 1
  ASSERT_EQ(range.scale, 1.0f);
  const AffineParams affine = make_affine(1.0f, 0, -128, 127);
  const std::vector<float> x = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f};
  const std::vector<float> up = {1.0f, 2.0f, 3.0f, 0.0f, -1.0f, -2.0f};
  const std::vector<float> even = {0.0f, 2.0f, 2.0f, -0.0f, -2.0f, -2.0f};
  for (std::size_t i = 0; i < x.size(); ++i) {
    for (RangeScaling s : kScalings) EXPECT_EQ(fake_quant(x[i], range, s), up[i]) << x[i];
    EXPECT_EQ(fake_quant(x[i], affine), even[i]) << x[i];
  }
}

// Near a tie, TensorFlow's per-tensor kernel (a division) and its per-channel
// kernel (a multiplication by the recomputed inverse) give levels one apart.
// Both values were read off TensorFlow 2.21 at 8 bits, range [-1, 1].
TEST(TensorFlowKernels, DivisionAndMultiplicationDifferNearTies) {
  const RangeParams p = nudge_range(-1.0f, 1.0f, 0, 255);
  const float x = from_bits(0xbf1d9d9fu);  // -0.61568636
  EXPECT_EQ(bits_of(fake_quant(x, p, RangeScaling::divide)), 0xbf1e9e9fu);    // -0.61960787
  EXPECT_EQ(bits_of(fake_quant(x, p, RangeScaling::multiply)), 0xbf1c9c9du);  // -0.6117647
}

// TensorFlow subtracts quant_zero before the floor. Subtracting it after, as
// (floor(cs·inv + 0.5) - quant_zero)·scale, lands a level lower here.
TEST(TensorFlowKernels, QuantZeroIsSubtractedBeforeTheFloor) {
  const RangeParams p = nudge_range(-1.0f, 1.0f, 0, 255);
  const float x = from_bits(0xbf7bfbfdu);  // -0.9843138
  for (RangeScaling s : kScalings)
    EXPECT_EQ(bits_of(fake_quant(x, p, s)), 0xbf7afafcu) << name(s);  // -0.9803922
  const float shifted = x - p.nudged_min;
  const float after = (std::floor(shifted * p.inv_scale + 0.5f) - p.quant_zero) * p.scale;
  EXPECT_EQ(bits_of(after), 0xbf7cfcfeu);  // -0.98823535, one level below TensorFlow
}

// TensorFlow's CPU kernels run with denormals-are-zero: a subnormal input or
// bound is a zero of its sign.
TEST(TensorFlowKernels, SubnormalsCountAsZero) {
  const float tiny = std::numeric_limits<float>::denorm_min();
  const RangeParams from_zero = nudge_range(0.0f, 1.0f, 0, 255);
  for (float x : {tiny, -tiny, 1e-40f, -1e-40f}) {
    EXPECT_TRUE(ste_pass(x, from_zero)) << x;  // -1e-40 is 0, not below the range
    EXPECT_TRUE(at_or_above_min(x, from_zero)) << x;
    for (RangeScaling s : kScalings) EXPECT_EQ(bits_of(fake_quant(x, from_zero, s)), 0u) << x;
  }
  EXPECT_EQ(nudge_range(-1e-40f, 1e-40f, 0, 255).scale, 0.0f);  // [0, 0]
  const RangeParams flushed = nudge_range(-1.0f, 1e-40f, 0, 255);
  const RangeParams exact = nudge_range(-1.0f, 0.0f, 0, 255);
  EXPECT_EQ(flushed.nudged_min, exact.nudged_min);
  EXPECT_EQ(flushed.nudged_max, exact.nudged_max);
  EXPECT_EQ(flushed.scale, exact.scale);
  EXPECT_EQ(bits_of(flush_subnormal(-1e-40f)), 0x80000000u);
  EXPECT_EQ(flush_subnormal(FLT_MIN), FLT_MIN);
  EXPECT_TRUE(std::isnan(flush_subnormal(kNaN)));
}

// A range narrower than FLT_MIN per step has no normal scale: zero-width.
TEST(Degenerate, SubnormalScaleIsZeroWidth) {
  const RangeParams p = nudge_range(0.0f, 1e-37f, 0, 65535);
  EXPECT_EQ(p.scale, 0.0f);
  EXPECT_GT(nudge_range(0.0f, 1e-37f, 0, 3).scale, 0.0f);
}

// TensorFlow's [0, 0]: every output +0 and every gradient passed, NaN
// included. lowbit treats min == max != 0 the same way (TensorFlow divides by
// a zero scale there).
TEST(Degenerate, ZeroWidthRangeGivesZeroAndPassesGradient) {
  for (float v : {0.0f, -0.0f, 3.0f, -2.0f}) {
    const RangeParams p = nudge_range(v, v, 0, 15);
    EXPECT_EQ(p.scale, 0.0f);
    for (float x : {-5.0f, 0.0f, 7.0f, kInf, kNaN}) {
      for (RangeScaling s : kScalings) EXPECT_EQ(bits_of(fake_quant(x, p, s)), 0u) << x;
      EXPECT_TRUE(ste_pass(x, p));
      EXPECT_TRUE(at_or_above_min(x, p) && at_or_below_max(x, p));
    }
  }
}

// Device-side sanitising: values the host API would reject stay harmless.
TEST(Degenerate, InvalidRangesAreSanitisedToZeroWidth) {
  for (auto [lo, hi] : {std::pair{2.0f, 1.0f}, {kNaN, 1.0f}, {-1.0f, kInf}, {-kInf, 0.0f}}) {
    const RangeParams p = nudge_range(lo, hi, 0, 255);
    EXPECT_EQ(p.scale, 0.0f) << lo << " " << hi;
    EXPECT_EQ(fake_quant(1.0f, p, RangeScaling::divide), 0.0f);
  }
  const AffineParams a = make_affine(0.5f, 300, 0, 255);  // zero point clamped to qmax
  EXPECT_EQ(a.zero_point, 255.0f);
}

TEST(NonFinite, NaNStaysNaNAndInfClampsToTheEnds) {
  const RangeParams range = nudge_range(-1.0f, 1.0f, 0, 255);
  const AffineParams affine = make_affine(0.1f, 3, -8, 7);
  const LsqParams lsq = make_lsq(0.1f, -8, 7);
  for (RangeScaling s : kScalings) {
    EXPECT_TRUE(std::isnan(fake_quant(kNaN, range, s)));
    EXPECT_EQ(fake_quant(kInf, range, s), range.nudged_max);
    EXPECT_EQ(fake_quant(-kInf, range, s), range.nudged_min);
  }
  EXPECT_TRUE(std::isnan(fake_quant(kNaN, affine)));
  EXPECT_TRUE(std::isnan(fake_quant(kNaN, lsq)));
  EXPECT_FALSE(ste_pass(kNaN, range));
  EXPECT_FALSE(at_or_above_min(kNaN, range) || at_or_below_max(kNaN, range));
  EXPECT_FALSE(ste_pass(kNaN, affine));
  EXPECT_FALSE(lsq_passes(kNaN, lsq));
  EXPECT_EQ(lsq_scale_grad_term(kNaN, 2.0f, lsq), 0.0f);
  EXPECT_EQ(fake_quant(kInf, affine), (7.0f - 3.0f) * 0.1f);
  EXPECT_EQ(fake_quant(-kInf, affine), (-8.0f - 3.0f) * 0.1f);
  EXPECT_FALSE(ste_pass(kInf, range));
  EXPECT_FALSE(ste_pass(kInf, affine));
}

// Every output of every width lies on the grid and inside the nudged range.
TEST(Grid, OutputsAreGridPointsForAllWidths) {
  for (int bits = kMinBits; bits <= kMaxBits; ++bits) {
    const RangeQuant q{bits, false};
    const RangeParams p = nudge_range(-1.3f, 2.7f, q.qmin(), q.qmax());
    for (float x = -2.0f; x <= 3.0f; x += 0.037f) {
      const float y = fake_quant(x, p, bits % 2 == 0 ? RangeScaling::divide : RangeScaling::multiply);
      ASSERT_GE(y, p.nudged_min);
      ASSERT_LE(y, p.nudged_max);
      const float k = y / p.scale;
      ASSERT_NEAR(k, std::round(k), 1e-2f) << "bits " << bits << " x " << x;
      if (x >= p.nudged_min && x <= p.nudged_max) {
        ASSERT_LE(std::fabs(y - x), p.scale) << "bits " << bits << " x " << x;
      }
    }
  }
}

// The cursor visits exactly the channels that division gives, including
// indices past 2^31 and steps that wrap several rows.
TEST(ChannelCursor, MatchesDivisionForLargeIndices) {
  using cuda::detail::channel_step;
  using cuda::detail::ChannelCursor;
  const std::vector<ChannelLayout> layouts = {
      {3, 7, 5}, {1, 64, 1}, {2, 3, 1000003}, {1 << 20, 3, 1 << 11}, {1, 1, std::int64_t{1} << 33}};
  for (const ChannelLayout& layout : layouts) {
    for (std::int64_t delta : {std::int64_t{32}, std::int64_t{255} * 256, std::int64_t{1} << 31}) {
      const auto step = channel_step(delta, layout);
      std::int64_t i = layout.size() / 3 + 11;
      ChannelCursor cursor;
      cursor.start(i, layout.inner, layout.channels);
      for (int k = 0; k < 50; ++k) {
        ASSERT_EQ(cursor.channel, (i / layout.inner) % layout.channels) << "i " << i;
        ASSERT_EQ(cursor.off, i % layout.inner) << "i " << i;
        cursor.advance(step, layout.inner, layout.channels);
        i += delta;
      }
    }
  }
}

TEST(Lsq, ScaleIsKeptPositive) {
  EXPECT_EQ(make_lsq(0.0f, -8, 7).scale, kLsqMinScale);
  EXPECT_EQ(make_lsq(-1.0f, -8, 7).scale, kLsqMinScale);
  EXPECT_EQ(make_lsq(kNaN, -8, 7).scale, kLsqMinScale);
  EXPECT_EQ(make_lsq(0.5f, -8, 7).scale, 0.5f);
  EXPECT_EQ(lsq_initial_scale(0.0f, 10, 7), kLsqMinScale);
}

}  // namespace
}  // namespace lowbit
