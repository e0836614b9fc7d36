// LSQ, learned step size (DESIGN.md §2.3 "Learned", Esser et al. 2019):
// forward y = clamp(round_half_even(x/s), qmin, qmax)·s, backward dx = dy
// inside the grid and d_scale = g·Σ term with g = 1/sqrt(N·qmax), init
// 2·mean|x|/sqrt(qmax), and the scale clamped at kLsqMinScale. (A finite-
// difference check of d_scale is meaningless: the forward is piecewise
// constant in s.) The GPU must equal the reference bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "lowbit/cuda.hpp"
#include "lowbit/element.hpp"
#include "lowbit/error.hpp"
#include "lowbit/ref.hpp"
#include "lowbit/types.hpp"
#include "test_util.hpp"

namespace {

using lowbit::ChannelLayout;
using lowbit::kLsqMinScale;
using lowbit::LsqQuant;
using lowbit::test::channel_of;
using lowbit::test::DeviceBuffer;
using lowbit::test::host_workspace;
using lowbit::test::random_values;
using lowbit::test::same_bits;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> lsq_forward(const std::vector<float>& x, const ChannelLayout& layout,
                               const std::vector<float>& scale, LsqQuant quant) {
  std::vector<float> y(x.size());
  lowbit::ref::lsq_forward(x.data(), y.data(), layout, scale.data(), quant);
  return y;
}

struct Backward {
  std::vector<float> dx, d_scale;
};

Backward lsq_backward(const std::vector<float>& dy, const std::vector<float>& x,
                      const ChannelLayout& layout, const std::vector<float>& scale,
                      LsqQuant quant) {
  Backward b{std::vector<float>(x.size()),
             std::vector<float>(static_cast<std::size_t>(layout.channels))};
  std::vector<float> scratch;
  lowbit::ref::lsq_backward(dy.data(), x.data(), layout, scale.data(), quant, b.dx.data(),
                            b.d_scale.data(), host_workspace(scratch, layout));
  return b;
}

std::vector<float> lsq_init(const std::vector<float>& x, const ChannelLayout& layout,
                            LsqQuant quant) {
  std::vector<float> scale(static_cast<std::size_t>(layout.channels));
  std::vector<float> scratch;
  lowbit::ref::lsq_init_scale(x.data(), layout, quant, scale.data(),
                              host_workspace(scratch, layout));
  return scale;
}

std::vector<float> random_scales(std::int64_t channels, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(0.05f, 0.6f);
  std::vector<float> s(static_cast<std::size_t>(channels));
  for (auto& v : s) v = uniform(rng);
  return s;
}

// x/s as the element math defines it: x·(1/s) in float.
float scaled(float x, float s) { return x * (1.0f / s); }

struct LsqCase {
  std::string name;
  ChannelLayout layout;
  LsqQuant quant;
};

const std::vector<LsqCase>& lsq_cases() {
  static const std::vector<LsqCase> cases = {
      {"per_tensor_signed4", ChannelLayout::per_tensor(5003), LsqQuant::signed_bits(4)},
      {"per_tensor_unsigned8", ChannelLayout::per_tensor(4099), LsqQuant::unsigned_bits(8)},
      {"conv_KCRS_axis0_signed2", ChannelLayout::per_channel({8, 3, 5, 5}, 0),
       LsqQuant::signed_bits(2)},
      {"nchw_axis1_signed4", ChannelLayout::per_channel({3, 5, 700}, 1), LsqQuant::signed_bits(4)},
      {"wide_rows_axis0_unsigned4", ChannelLayout::per_channel({2, 4500}, 0),
       LsqQuant::unsigned_bits(4)},
      // Short rows: one reduction item holds 2048 / inner of them.
      {"columns_axis1_signed4", ChannelLayout::per_channel({2100, 5}, 1),
       LsqQuant::signed_bits(4)},
      {"nchw_axis1_inner3_signed8", ChannelLayout::per_channel({700, 4, 3}, 1),
       LsqQuant::signed_bits(8)},
  };
  return cases;
}

// Signed 4-bit grid [-8, 7], s = 0.5: inside, ties to even, clipping, NaN, ±Inf.
TEST(Lsq, ForwardSignedHandPicked) {
  const std::vector<float> x{1.0f,  1.2f,  0.25f,  0.75f, 1.25f, -0.75f, -1.25f, 3.5f,
                             3.75f, 100.f, -4.0f,  -4.25f, -100.f, kInf, -kInf};
  // x/s:                    2     2.4    0.5     1.5    2.5    -1.5    -2.5    7
  //                         7.5   200    -8      -8.5   -200
  const std::vector<float> want{1.0f, 1.0f, 0.0f,  1.0f,  1.0f, -1.0f, -1.0f, 3.5f,
                                3.5f, 3.5f, -4.0f, -4.0f, -4.0f, 3.5f, -4.0f};
  const auto y = lsq_forward(x, ChannelLayout::per_tensor(15), {0.5f}, LsqQuant::signed_bits(4));
  EXPECT_EQ(y, want);
  const auto nan_y = lsq_forward({kNaN}, ChannelLayout::per_tensor(1), {0.5f},
                                 LsqQuant::signed_bits(4));
  EXPECT_TRUE(std::isnan(nan_y[0]));
}

// Unsigned 4-bit grid [0, 15], s = 0.25: negatives clip to 0, ties to even.
TEST(Lsq, ForwardUnsignedHandPicked) {
  const std::vector<float> x{-0.1f, -1.0f, 3.75f, 3.875f, 0.125f, 0.375f, 2.625f, 1.0f, kNaN};
  // x/s:                    -0.4  -4     15     15.5    0.5     1.5     10.5    4
  const std::vector<float> want{0.0f, 0.0f, 3.75f, 3.75f, 0.0f, 0.5f, 2.5f, 1.0f};
  const auto y = lsq_forward(x, ChannelLayout::per_tensor(9), {0.25f}, LsqQuant::unsigned_bits(4));
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_EQ(y[i], want[i]) << "x = " << x[i];
  EXPECT_TRUE(std::isnan(y[8]));
}

// Per channel, each channel uses its own scale (NCHW axis 1: rows interleave).
TEST(Lsq, ForwardPerChannelUsesOwnScale) {
  const ChannelLayout layout = ChannelLayout::per_channel({2, 2, 2}, 1);
  const std::vector<float> x{0.75f, 10.0f, 0.75f, 10.0f, 0.75f, 10.0f, 0.75f, 10.0f};
  const auto y = lsq_forward(x, layout, {0.5f, 0.25f}, LsqQuant::signed_bits(4));
  EXPECT_EQ(y, (std::vector<float>{1.0f, 3.5f, 0.75f, 1.75f, 1.0f, 3.5f, 0.75f, 1.75f}));
}

// The scale is clamped at kLsqMinScale: 0, tiny negatives, NaN and values at
// or below it all behave exactly like kLsqMinScale, with finite results.
TEST(Lsq, ScaleClampsAtMinScale) {
  const LsqQuant quant = LsqQuant::signed_bits(4);
  const lowbit::LsqParams floor = lowbit::make_lsq(kLsqMinScale, quant.qmin, quant.qmax);
  EXPECT_EQ(floor.scale, kLsqMinScale);
  for (float s : {0.0f, -0.0f, -1e-30f, -1.0f, kNaN, 1e-9f}) {
    SCOPED_TRACE(::testing::Message() << "scale " << s);
    const lowbit::LsqParams p = lowbit::make_lsq(s, quant.qmin, quant.qmax);
    EXPECT_EQ(p.scale, kLsqMinScale);
    EXPECT_EQ(p.inv_scale, floor.inv_scale);
    EXPECT_TRUE(std::isfinite(p.inv_scale));
    for (float x : {0.0f, 3e-8f, -2.5e-8f, 1.0f, -1.0f, 1e-12f}) {
      EXPECT_EQ(lowbit::fake_quant(x, p), lowbit::fake_quant(x, floor)) << "x " << x;
      EXPECT_EQ(lowbit::lsq_passes(x, p), lowbit::lsq_passes(x, floor)) << "x " << x;
      EXPECT_EQ(lowbit::lsq_scale_grad_term(x, 1.0f, p),
                lowbit::lsq_scale_grad_term(x, 1.0f, floor))
          << "x " << x;
    }
    EXPECT_EQ(lowbit::fake_quant(1.0f, p), 7.0f * kLsqMinScale);
    EXPECT_EQ(lowbit::fake_quant(-1.0f, p), -8.0f * kLsqMinScale);
  }
  // A scale above the floor is kept as is.
  EXPECT_EQ(lowbit::make_lsq(0.5f, quant.qmin, quant.qmax).scale, 0.5f);
}

// A trained scale that an optimizer step pushed to or below 0 (or NaN) is
// clamped, not rejected, on the host too: training must go on.
TEST(Lsq, RefClampsNonPositiveScale) {
  const ChannelLayout layout = ChannelLayout::per_tensor(2);
  const std::vector<float> x{0.5f, -0.5f}, dy{1.0f, 1.0f};
  const float floor_scale = kLsqMinScale;
  std::vector<float> want(2), y(2), dx(2), d_scale(1), scratch;
  lowbit::ref::lsq_forward(x.data(), want.data(), layout, &floor_scale, LsqQuant::signed_bits(4));
  for (float s : {0.0f, -1e-30f, -1.0f, kNaN}) {
    SCOPED_TRACE(::testing::Message() << "scale " << s);
    lowbit::ref::lsq_forward(x.data(), y.data(), layout, &s, LsqQuant::signed_bits(4));
    EXPECT_EQ(y, want);
    lowbit::ref::lsq_backward(dy.data(), x.data(), layout, &s, LsqQuant::signed_bits(4),
                              dx.data(), d_scale.data(), host_workspace(scratch, layout));
    EXPECT_TRUE(std::isfinite(d_scale[0]));
  }
}

// dx = dy exactly where qmin < x/s < qmax (Esser et al.: the ends themselves
// are clipped), else dy·0; NaN passes nothing.
TEST(Lsq, BackwardDxHandPicked) {
  const float below_max = std::nextafter(3.5f, -kInf);
  const float above_min = std::nextafter(-4.0f, kInf);
  const std::vector<float> x{3.5f, -4.0f, below_max, above_min, 0.3f, 100.0f, -100.0f, kNaN};
  const std::vector<float> dy{1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, -7.0f, 8.0f};
  const auto b = lsq_backward(dy, x, ChannelLayout::per_tensor(8), {0.5f}, LsqQuant::signed_bits(4));
  EXPECT_TRUE(same_bits(std::vector<float>{0.0f, 0.0f, 3.0f, 4.0f, 5.0f, 0.0f, -0.0f, 0.0f}, b.dx));
}

// d_scale on a hand-computed case: terms round(v) - v inside, qmin below,
// qmax above, times dy, scaled by g = 1/sqrt(N·qmax); NaN contributes 0.
TEST(Lsq, BackwardScaleGradHandPicked) {
  // s = 0.5, grid [-8, 7]: v = 0.5 (tie: 0 - 0.5), 20 (qmax 7), -20 (qmin -8),
  // 1 (0), 1.25 (1 - 1.25, dy 2), NaN (0).
  const std::vector<float> x{0.25f, 10.0f, -10.0f, 0.5f, 0.625f, kNaN};
  const std::vector<float> dy{1.0f, 1.0f, 1.0f, 1.0f, 2.0f, 1.0f};
  const auto b = lsq_backward(dy, x, ChannelLayout::per_tensor(6), {0.5f}, LsqQuant::signed_bits(4));
  const double want = (-0.5 + 7.0 - 8.0 + 0.0 - 0.5 + 0.0) / std::sqrt(6.0 * 7.0);
  EXPECT_NEAR(b.d_scale[0], want, 1e-6 * std::fabs(want));
}

// On random data, dx follows the pass condition exactly and d_scale matches a
// naive double-precision sum. The tolerance is 1e-5 relative to g·Σ|term|
// (the sum's condition): float tree sums cancel differently than double.
TEST(Lsq, BackwardMatchesNaive) {
  for (const auto& c : lsq_cases()) {
    SCOPED_TRACE(c.name);
    const ChannelLayout& layout = c.layout;
    const auto x = random_values(layout.size(), 41, 1.5f);
    const auto dy = random_values(layout.size(), 42, 1.0f);
    const auto scale = random_scales(layout.channels, 43);
    const auto b = lsq_backward(dy, x, layout, scale, c.quant);

    const auto channels = static_cast<std::size_t>(layout.channels);
    std::vector<double> sum(channels, 0.0), magnitude(channels, 0.0);
    std::vector<float> want_dx(x.size());
    for (std::int64_t i = 0; i < layout.size(); ++i) {
      const auto k = static_cast<std::size_t>(i);
      const auto ch = static_cast<std::size_t>(channel_of(layout, i));
      const double v = scaled(x[k], scale[ch]);
      const bool inside = v > c.quant.qmin && v < c.quant.qmax;
      want_dx[k] = inside ? dy[k] : dy[k] * 0.0f;
      const double term = v <= c.quant.qmin   ? c.quant.qmin
                          : v >= c.quant.qmax ? c.quant.qmax
                                              : std::nearbyint(v) - v;
      sum[ch] += term * dy[k];
      magnitude[ch] += std::fabs(term * dy[k]);
    }
    EXPECT_TRUE(same_bits(want_dx, b.dx));
    const double g = 1.0 / std::sqrt(static_cast<double>(layout.outer * layout.inner) *
                                     c.quant.qmax);
    for (std::size_t ch = 0; ch < channels; ++ch)
      EXPECT_NEAR(b.d_scale[ch], g * sum[ch], 1e-5 * g * magnitude[ch]) << "channel " << ch;
  }
}

// lsq_init_scale is 2·mean|x|/sqrt(qmax) per channel, within 1e-6 relative.
TEST(Lsq, InitScaleIsTwiceMeanAbsOverSqrtQmax) {
  for (const auto& c : lsq_cases()) {
    SCOPED_TRACE(c.name);
    const ChannelLayout& layout = c.layout;
    const auto x = random_values(layout.size(), 51, 0.7f);
    const auto got = lsq_init(x, layout, c.quant);
    std::vector<double> sum_abs(static_cast<std::size_t>(layout.channels), 0.0);
    for (std::int64_t i = 0; i < layout.size(); ++i)
      sum_abs[static_cast<std::size_t>(channel_of(layout, i))] +=
          std::fabs(x[static_cast<std::size_t>(i)]);
    const double count = static_cast<double>(layout.outer * layout.inner);
    for (std::size_t ch = 0; ch < got.size(); ++ch) {
      const double want = 2.0 * (sum_abs[ch] / count) / std::sqrt(static_cast<double>(c.quant.qmax));
      EXPECT_NEAR(got[ch], want, 1e-6 * want) << "channel " << ch;
    }
  }
}

// An all-zero channel still gets a positive initial scale: kLsqMinScale.
TEST(Lsq, InitScaleOfZerosIsMinScale) {
  const auto all_zero = lsq_init(std::vector<float>(300, 0.0f), ChannelLayout::per_tensor(300),
                                 LsqQuant::signed_bits(4));
  EXPECT_EQ(all_zero[0], kLsqMinScale);
  EXPECT_GT(all_zero[0], 0.0f);

  const ChannelLayout layout = ChannelLayout::per_channel({3, 10}, 0);
  std::vector<float> x(30, 0.0f);
  for (int i = 0; i < 10; ++i) x[static_cast<std::size_t>(i)] = 1.0f;  // channel 0 only
  const auto scale = lsq_init(x, layout, LsqQuant::unsigned_bits(4));
  EXPECT_FLOAT_EQ(scale[0], 2.0f / std::sqrt(15.0f));
  EXPECT_EQ(scale[1], kLsqMinScale);
  EXPECT_EQ(scale[2], kLsqMinScale);
}

// cuda::lsq_forward, lsq_backward (dx and d_scale) and lsq_init_scale equal
// the reference bit for bit, per tensor and per channel.
TEST(GpuLsq, MatchesReference) {
  LOWBIT_REQUIRE_GPU();
  for (const auto& c : lsq_cases()) {
    SCOPED_TRACE(c.name);
    const ChannelLayout& layout = c.layout;
    const auto x = random_values(layout.size(), 61, 1.5f);
    const auto dy = random_values(layout.size(), 62, 1.0f);
    const auto scale = random_scales(layout.channels, 63);
    const auto channels = static_cast<std::size_t>(layout.channels);

    DeviceBuffer<float> d_x(x), d_dy(dy), d_scale(scale);
    DeviceBuffer<float> d_y(x.size()), d_dx(x.size()), d_grad(channels), d_init(channels);
    DeviceBuffer<float> d_work(lowbit::reduction_workspace_bytes(layout) / sizeof(float) + 1);

    lowbit::ClipCount counts;
    std::vector<float> y(x.size());
    lowbit::ref::lsq_forward(x.data(), y.data(), layout, scale.data(), c.quant, &counts);
    DeviceBuffer<lowbit::ClipCount> d_counts(std::vector<lowbit::ClipCount>(1));
    lowbit::cuda::lsq_forward(d_x.data(), d_y.data(), layout, d_scale.data(), c.quant,
                              d_counts.data(), nullptr);
    EXPECT_TRUE(same_bits(y, d_y.download()));
    const lowbit::ClipCount got = d_counts.download()[0];
    EXPECT_EQ(got.quantized, static_cast<unsigned long long>(layout.size()));
    EXPECT_EQ(got.clipped, counts.clipped);

    lowbit::cuda::lsq_backward(d_dy.data(), d_x.data(), layout, d_scale.data(), c.quant, d_dx.data(),
                               d_grad.data(), d_work.as_workspace(), nullptr);
    const auto want = lsq_backward(dy, x, layout, scale, c.quant);
    EXPECT_TRUE(same_bits(want.dx, d_dx.download()));
    EXPECT_TRUE(same_bits(want.d_scale, d_grad.download()));

    lowbit::cuda::lsq_init_scale(d_x.data(), layout, c.quant, d_init.data(), d_work.as_workspace(),
                                 nullptr);
    EXPECT_TRUE(same_bits(lsq_init(x, layout, c.quant), d_init.download()));
  }
}

// Device scales are not checked by the host: 0, negative and NaN scales are
// clamped on the GPU exactly as make_lsq does.
TEST(GpuLsq, InvalidDeviceScaleClampsToMinScale) {
  LOWBIT_REQUIRE_GPU();
  const ChannelLayout layout = ChannelLayout::per_channel({4, 33}, 0);
  const LsqQuant quant = LsqQuant::signed_bits(4);
  const std::vector<float> scale{0.0f, -1e-30f, kNaN, 0.25f};
  const auto x = random_values(layout.size(), 71, 1e-7f);
  std::vector<float> want(x.size());
  for (std::int64_t i = 0; i < layout.size(); ++i) {
    const auto k = static_cast<std::size_t>(i);
    const auto p = lowbit::make_lsq(scale[static_cast<std::size_t>(channel_of(layout, i))],
                                    quant.qmin, quant.qmax);
    want[k] = lowbit::fake_quant(x[k], p);
  }
  DeviceBuffer<float> d_x(x), d_scale(scale), d_y(x.size());
  lowbit::cuda::lsq_forward(d_x.data(), d_y.data(), layout, d_scale.data(), quant, nullptr,
                            nullptr);
  EXPECT_TRUE(same_bits(want, d_y.download()));
}

}  // namespace
