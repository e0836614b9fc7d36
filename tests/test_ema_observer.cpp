// The EMA range observer of the CPU reference (DESIGN §2.3, §5 "EMA").
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "lowbit/ref.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

using test::random_values;
using test::same_bits;

struct Observer {
  EmaRangeState state;
  EmaConfig config;
  Observer() { ref::ema_state_init(&state); }
  std::vector<float> step(std::vector<float> x) {
    std::vector<float> y(x.size());
    ref::ema_fake_quant(x.data(), y.data(), static_cast<std::int64_t>(x.size()), &state, config,
                        nullptr);
    return y;
  }
};

TEST(Ema, FirstStepIsExactlyTheBatchRange) {
  for (float decay : {0.0f, 0.5f, 0.9f, 0.999f, 0.9999f}) {
    Observer o;
    o.config.decay = decay;
    o.step({-0.3f, 1.7f, 0.1f});
    EXPECT_EQ(o.state.min, -0.3f) << decay;
    EXPECT_EQ(o.state.max, 1.7f) << decay;
    EXPECT_EQ(o.state.updates, 1);
  }
}

// The batch range includes 0, so the EMA range always contains 0.
TEST(Ema, RangeAlwaysContainsZero) {
  Observer o;
  o.step({0.5f, 2.0f});  // all positive: min is 0
  EXPECT_EQ(o.state.min, 0.0f);
  EXPECT_EQ(o.state.max, 2.0f);
  o.step({-3.0f, -1.0f});  // all negative: max decays toward 0, never below
  EXPECT_LE(o.state.min, 0.0f);
  EXPECT_GE(o.state.max, 0.0f);
  for (int i = 0; i < 100; ++i) {
    const auto x = random_values(64, 100 + i, 0.5f + i);
    o.step(x);
    ASSERT_LE(o.state.min, 0.0f);
    ASSERT_GE(o.state.max, 0.0f);
  }
}

// A sequence computed by hand with TensorFlow's zero-debiased formula
// biased_t = d·biased_{t-1} + (1-d)·v_t, ema_t = biased_t / (1 - d^t).
TEST(Ema, MatchesHandComputedSequence) {
  const float d = 0.9f;
  Observer o;
  o.config.decay = d;
  const std::vector<std::pair<float, float>> batches = {
      {-1.0f, 2.0f}, {-3.0f, 1.0f}, {-0.5f, 4.0f}, {-2.0f, 0.5f}, {0.0f, 3.0f}};
  double biased_min = 0.0, biased_max = 0.0;
  for (std::size_t t = 1; t <= batches.size(); ++t) {
    const auto [lo, hi] = batches[t - 1];
    o.step({lo, hi});
    biased_min = d * biased_min + (1.0 - d) * lo;
    biased_max = d * biased_max + (1.0 - d) * hi;
    const double debias = 1.0 - std::pow(static_cast<double>(d), static_cast<double>(t));
    EXPECT_NEAR(o.state.min, biased_min / debias, 1e-5) << "step " << t;
    EXPECT_NEAR(o.state.max, biased_max / debias, 1e-5) << "step " << t;
  }
  // Step 2 by hand: biased = 0.9·0.1·(-1) + 0.1·(-3) = -0.39; /0.19 = -2.0526...
  Observer again;
  again.config.decay = d;
  again.step({-1.0f, 2.0f});
  again.step({-3.0f, 1.0f});
  EXPECT_NEAR(again.state.min, -0.39 / 0.19, 2e-6);
  EXPECT_NEAR(again.state.max, (0.9 * 0.2 + 0.1) / 0.19, 2e-6);
}

TEST(Ema, NonFiniteBatchIsSkippedAndCounted) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  Observer o;
  o.step({-1.0f, 1.0f});
  const EmaRangeState before = o.state;
  for (const auto& bad : {std::vector<float>{0.5f, nan}, {inf, 0.0f}, {-inf, 1.0f}}) {
    const auto y = o.step(bad);
    EXPECT_EQ(o.state.min, before.min);
    EXPECT_EQ(o.state.max, before.max);
    EXPECT_EQ(o.state.updates, before.updates);
  }
  EXPECT_EQ(o.state.skipped, 3u);
  EXPECT_EQ(o.state.steps, 4);
  // The output still follows the element rules: NaN stays NaN.
  const auto y = o.step({nan, 0.25f});
  EXPECT_TRUE(std::isnan(y[0]));
}

TEST(Ema, FreezeLeavesTheRangeUntouched) {
  Observer o;
  o.config.freeze_step = 2;
  o.step({-1.0f, 1.0f});
  o.step({-2.0f, 2.0f});
  const EmaRangeState frozen = o.state;
  o.step({-50.0f, 50.0f});
  o.step({std::numeric_limits<float>::quiet_NaN()});
  EXPECT_EQ(o.state.min, frozen.min);
  EXPECT_EQ(o.state.max, frozen.max);
  EXPECT_EQ(o.state.updates, 2);
  EXPECT_EQ(o.state.skipped, 0u);  // frozen: not even looked at
  EXPECT_EQ(o.state.steps, 4);
}

// quant_delay: identity for the first steps, while the range still tracks.
TEST(Ema, QuantDelayIsIdentityButTracks) {
  Observer o;
  o.config.quant_delay = 2;
  o.config.quant.bits = 2;
  const std::vector<float> x = {-1.0f, 0.3f, 0.77f, 2.0f};
  EXPECT_TRUE(same_bits(x, o.step(x)));
  EXPECT_TRUE(same_bits(x, o.step(x)));
  EXPECT_EQ(o.state.updates, 2);
  const auto y = o.step(x);
  EXPECT_FALSE(same_bits(x, y));
  const RangeParams p = nudge_range(o.state.min, o.state.max, 0, 3);
  for (std::size_t i = 0; i < x.size(); ++i)
    EXPECT_EQ(y[i], fake_quant(x[i], p, RangeScaling::divide));
}

// exact quantizes with this step's range; lagged with the previous one (and
// passes x through on its very first call, when there is no range yet).
TEST(Ema, ExactAndLaggedOrder) {
  Observer exact, lagged;
  lagged.config.mode = EmaMode::lagged;
  const std::vector<float> first = {-1.0f, 0.5f, 1.0f};
  const std::vector<float> second = {-4.0f, 0.5f, 3.9f};
  exact.step(first);
  EXPECT_TRUE(same_bits(first, lagged.step(first)));
  const EmaRangeState lagged_before = lagged.state;
  const auto y_exact = exact.step(second);
  const auto y_lagged = lagged.step(second);
  EXPECT_EQ(exact.state.min, lagged.state.min);  // same EMA either way
  const RangeParams after = nudge_range(exact.state.min, exact.state.max, 0, 255);
  const RangeParams before = nudge_range(lagged_before.min, lagged_before.max, 0, 255);
  for (std::size_t i = 0; i < second.size(); ++i) {
    EXPECT_EQ(y_exact[i], fake_quant(second[i], after, RangeScaling::divide));
    EXPECT_EQ(y_lagged[i], fake_quant(second[i], before, RangeScaling::divide));
  }
}

TEST(Ema, MaskFollowsIdentityAndRange) {
  Observer o;
  o.config.quant_delay = 1;
  const std::vector<float> x = {-1.0f, std::numeric_limits<float>::quiet_NaN(), 0.5f, 5.0f};
  std::vector<float> y(4);
  std::vector<std::uint32_t> mask(1);
  ref::ema_fake_quant(x.data(), y.data(), 4, &o.state, o.config, mask.data(), MaskFormat::pass);
  EXPECT_EQ(mask[0], 0b1101u);  // identity: everything but NaN passes
  const auto expected_mask = [&](const std::vector<float>& v) {
    const RangeParams p = nudge_range(o.state.min, o.state.max, 0, 255);
    std::uint32_t word = 0;
    for (std::size_t i = 0; i < v.size(); ++i) word |= std::uint32_t{ste_pass(v[i], p)} << i;
    return word;
  };
  const std::vector<float> x2 = {-0.5f, 0.0f, 0.5f, 1.0f};
  ref::ema_fake_quant(x2.data(), y.data(), 4, &o.state, o.config, mask.data(), MaskFormat::pass);
  EXPECT_EQ(o.state.updates, 1);  // the NaN batch was skipped
  EXPECT_EQ(o.state.min, -0.5f);  // so this batch's range is taken whole
  EXPECT_EQ(mask[0], expected_mask(x2));
  const std::vector<float> x3 = {-0.5f, 0.0f, 0.5f, 5.0f};
  ref::ema_fake_quant(x3.data(), y.data(), 4, &o.state, o.config, mask.data(), MaskFormat::pass);
  EXPECT_LT(o.state.max, 4.0f);
  EXPECT_EQ(mask[0], expected_mask(x3));
  EXPECT_EQ(mask[0] >> 3, 0u);  // 5.0 lies above the smoothed range
}

}  // namespace
}  // namespace lowbit
