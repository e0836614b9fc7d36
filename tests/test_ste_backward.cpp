// STE backward of the CPU reference: the inclusive mask, the range gradients
// of the 11-point probe, and per-channel d_min/d_max against plain sums.
#include <gtest/gtest.h>

#include <vector>

#include "lowbit/ref.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

using test::host_workspace;
using test::random_values;
using test::same_bits;

// Gradients 1..11 on the probe: dx keeps 3..9, d_min = 1+2, d_max = 10+11.
TEST(SteBackward, ProbeGradients) {
  const std::vector<float> x = {-0.25f, -0.01f, 0.0f,   0.01f,  0.24f, 0.25f,
                                0.26f,  63.74f, 63.75f, 63.76f, 64.0f};
  std::vector<float> dy(11);
  for (int i = 0; i < 11; ++i) dy[i] = static_cast<float>(i + 1);
  const float lo = 0.0f, hi = 63.75f;
  const auto layout = ChannelLayout::per_tensor(11);
  std::vector<float> y(11), dx(11, -1.0f);
  std::vector<std::uint32_t> pass(mask_words(11)), sides(mask_words(11, MaskFormat::sides));
  ref::fake_quant_range(x.data(), y.data(), layout, &lo, &hi, {8, false}, pass.data());
  ref::fake_quant_range(x.data(), y.data(), layout, &lo, &hi, {8, false}, sides.data(),
                        MaskFormat::sides);
  const std::vector<float> want = {0, 0, 3, 4, 5, 6, 7, 8, 9, 0, 0};

  ref::ste_backward(dy.data(), pass.data(), MaskFormat::pass, 11, dx.data());
  EXPECT_TRUE(same_bits(want, dx));

  std::vector<float> storage;
  float d_min = -1.0f, d_max = -1.0f;
  ref::ste_backward_range(dy.data(), sides.data(), layout, dx.data(), &d_min, &d_max,
                          host_workspace(storage, layout));
  EXPECT_TRUE(same_bits(want, dx));
  EXPECT_EQ(d_min, 3.0f);
  EXPECT_EQ(d_max, 21.0f);
}

// Per-channel range gradients equal plain double sums (to rounding) and NaN
// inputs count neither below nor above.
TEST(SteBackward, PerChannelRangeGradients) {
  const ChannelLayout layout = ChannelLayout::per_channel({5, 7, 3000}, 1);
  const std::int64_t n = layout.size();
  auto x = random_values(n, 11);
  x[17] = std::numeric_limits<float>::quiet_NaN();
  const auto dy = random_values(n, 12, 1.0f);
  std::vector<float> lo(7, -1.0f), hi(7, 1.5f);
  std::vector<float> y(n), dx(n);
  std::vector<std::uint32_t> sides(mask_words(n, MaskFormat::sides));
  ref::fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), {4, false},
                        sides.data(), MaskFormat::sides);
  std::vector<float> storage, d_min(7), d_max(7);
  ref::ste_backward_range(dy.data(), sides.data(), layout, dx.data(), d_min.data(), d_max.data(),
                          host_workspace(storage, layout));
  std::vector<double> below(7, 0.0), above(7, 0.0);
  const RangeParams p = nudge_range(-1.0f, 1.5f, 0, 15);
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t c = (i / layout.inner) % layout.channels;
    if (x[i] < p.nudged_min) below[c] += dy[i];
    if (x[i] > p.nudged_max) above[c] += dy[i];
    ASSERT_EQ(test::bits_of(dx[i]), test::bits_of(ste_gradient(dy[i], ste_pass(x[i], p)))) << i;
  }
  for (int c = 0; c < 7; ++c) {
    EXPECT_NEAR(d_min[c], below[c], 1e-3) << c;
    EXPECT_NEAR(d_max[c], above[c], 1e-3) << c;
  }
}

// The pass and sides masks give the same dx.
TEST(SteBackward, BothMaskFormatsAgree) {
  const std::int64_t n = 4099;
  const auto x = random_values(n, 3);
  const auto dy = random_values(n, 4);
  const float lo = -2.0f, hi = 1.0f;
  std::vector<float> y(n), dx_pass(n), dx_sides(n);
  std::vector<std::uint32_t> pass(mask_words(n)), sides(mask_words(n, MaskFormat::sides));
  const auto layout = ChannelLayout::per_tensor(n);
  ref::fake_quant_range(x.data(), y.data(), layout, &lo, &hi, {3, true}, pass.data());
  ref::fake_quant_range(x.data(), y.data(), layout, &lo, &hi, {3, true}, sides.data(),
                        MaskFormat::sides);
  ref::ste_backward(dy.data(), pass.data(), MaskFormat::pass, n, dx_pass.data());
  ref::ste_backward(dy.data(), sides.data(), MaskFormat::sides, n, dx_sides.data());
  EXPECT_TRUE(same_bits(dx_pass, dx_sides));
}

}  // namespace
}  // namespace lowbit
