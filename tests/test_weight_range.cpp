// Last-value weight ranges (DESIGN.md §2.3, TensorFlow's weight quantization):
// weight_range is the exact per-channel [min, max] (or [-max|w|, max|w|]),
// and fake_quant_weights with a symmetric narrow range puts every weight on
// the grid k·scale, |k| <= 2^(bits-1) - 1, with 0 kept exact. The GPU must
// equal the reference bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "lowbit/cuda.hpp"
#include "lowbit/ref.hpp"
#include "lowbit/types.hpp"
#include "test_util.hpp"

namespace {

using lowbit::ChannelLayout;
using lowbit::RangeQuant;
using lowbit::test::channel_of;
using lowbit::test::DeviceBuffer;
using lowbit::test::host_workspace;
using lowbit::test::random_values;
using lowbit::test::same_bits;

struct WeightCase {
  std::string name;
  std::vector<std::int64_t> shape;
  int axis;  // -1: per tensor
};

ChannelLayout layout_of(const WeightCase& c) {
  if (c.axis >= 0) return ChannelLayout::per_channel(c.shape, c.axis);
  std::int64_t n = 1;
  for (std::int64_t d : c.shape) n *= d;
  return ChannelLayout::per_tensor(n);
}

struct Range {
  std::vector<float> min, max;
};

Range ref_range(const std::vector<float>& w, const ChannelLayout& layout, bool symmetric) {
  Range r{std::vector<float>(static_cast<std::size_t>(layout.channels)),
          std::vector<float>(static_cast<std::size_t>(layout.channels))};
  std::vector<float> scratch;
  lowbit::ref::weight_range(w.data(), layout, symmetric, r.min.data(), r.max.data(),
                            host_workspace(scratch, layout));
  return r;
}

// The obvious loop: per channel min and max (or max |w|) in index order.
Range naive_range(const std::vector<float>& w, const ChannelLayout& layout, bool symmetric) {
  const auto channels = static_cast<std::size_t>(layout.channels);
  Range r{std::vector<float>(channels, std::numeric_limits<float>::infinity()),
          std::vector<float>(channels, -std::numeric_limits<float>::infinity())};
  for (std::int64_t i = 0; i < layout.size(); ++i) {
    const auto c = static_cast<std::size_t>(channel_of(layout, i));
    const float v = w[static_cast<std::size_t>(i)];
    if (symmetric) {
      if (std::fabs(v) > r.max[c]) r.max[c] = std::fabs(v);
    } else {
      if (v < r.min[c]) r.min[c] = v;
      if (v > r.max[c]) r.max[c] = v;
    }
  }
  if (symmetric)
    for (std::size_t c = 0; c < channels; ++c) r.min[c] = -r.max[c];
  return r;
}

const std::vector<WeightCase>& weight_cases() {
  static const std::vector<WeightCase> cases = {
      {"conv_KCRS_axis0", {16, 6, 5, 5}, 0},
      {"fc_out_in_axis0", {120, 84}, 0},
      {"fc_wide_rows", {3, 5000}, 0},  // rows longer than one reduction piece
      // Short rows: one reduction item holds 2048 / inner of them.
      {"columns_axis1", {2049, 3}, 1},
      {"nchw_axis1_inner100", {45, 7, 100}, 1},
      {"per_tensor", {10007}, -1},
  };
  return cases;
}

// Per channel and per tensor, weight_range equals the naive min/max loop
// exactly (min and max do not depend on the order).
TEST(WeightRange, EqualsNaiveMinMax) {
  for (const auto& c : weight_cases()) {
    for (bool symmetric : {false, true}) {
      SCOPED_TRACE(c.name + (symmetric ? " symmetric" : " asymmetric"));
      const ChannelLayout layout = layout_of(c);
      const auto w = random_values(layout.size(), 11, 0.3f);
      const Range got = ref_range(w, layout, symmetric);
      const Range want = naive_range(w, layout, symmetric);
      for (std::int64_t ch = 0; ch < layout.channels; ++ch) {
        const auto k = static_cast<std::size_t>(ch);
        EXPECT_EQ(got.min[k], want.min[k]) << "channel " << ch;
        EXPECT_EQ(got.max[k], want.max[k]) << "channel " << ch;
      }
    }
  }
}

// Symmetric ranges are [-m, m] with m the largest magnitude, even when the
// largest magnitude is negative.
TEST(WeightRange, SymmetricUsesLargestMagnitude) {
  const ChannelLayout layout = ChannelLayout::per_channel({2, 3}, 0);
  const std::vector<float> w{-5.0f, 1.0f, 2.0f,  // channel 0: most negative wins
                             0.5f, -0.25f, 3.0f};
  const Range sym = ref_range(w, layout, true);
  EXPECT_EQ(sym.min, (std::vector<float>{-5.0f, -3.0f}));
  EXPECT_EQ(sym.max, (std::vector<float>{5.0f, 3.0f}));
  const Range asym = ref_range(w, layout, false);
  EXPECT_EQ(asym.min, (std::vector<float>{-5.0f, -0.25f}));
  EXPECT_EQ(asym.max, (std::vector<float>{2.0f, 3.0f}));
}

// A NaN in one channel gives that channel a NaN range and no other.
TEST(WeightRange, NonFiniteWeightsAreLeftOut) {
  // NCHW-like axis 1: channel 1's rows are interleaved with the others.
  const ChannelLayout layout = ChannelLayout::per_channel({3, 4, 10}, 1);
  auto w = random_values(layout.size(), 5, 1.0f);
  const auto finite = w;
  w[static_cast<std::size_t>(2 * 40 + 1 * 10 + 7)] = std::numeric_limits<float>::quiet_NaN();
  w[static_cast<std::size_t>(0 * 40 + 2 * 10 + 3)] = std::numeric_limits<float>::infinity();
  w[static_cast<std::size_t>(1 * 40 + 3 * 10 + 0)] = -std::numeric_limits<float>::infinity();
  for (bool symmetric : {false, true}) {
    SCOPED_TRACE(symmetric ? "symmetric" : "asymmetric");
    const Range got = ref_range(w, layout, symmetric);
    const Range want = naive_range(finite, layout, symmetric);
    for (std::size_t ch = 0; ch < 4; ++ch) {
      // Dropping one weight can only shrink the range; all others agree.
      EXPECT_GE(got.min[ch], want.min[ch]) << "channel " << ch;
      EXPECT_LE(got.max[ch], want.max[ch]) << "channel " << ch;
      EXPECT_TRUE(std::isfinite(got.min[ch]) && std::isfinite(got.max[ch]));
    }
    EXPECT_EQ(got.min[0], want.min[0]);
    EXPECT_EQ(got.max[0], want.max[0]);
  }
  // A channel of only non-finite weights gets [0, 0]; fake quant then keeps
  // NaN as NaN and maps everything else to 0.
  const std::vector<float> bad = {std::numeric_limits<float>::quiet_NaN(),
                                  std::numeric_limits<float>::infinity()};
  const Range empty = ref_range(bad, ChannelLayout::per_tensor(2), true);
  EXPECT_EQ(empty.min[0], 0.0f);
  EXPECT_EQ(empty.max[0], 0.0f);
}

// Symmetric narrow-range fake quantization: outputs on the grid k·scale with
// |k| <= 2^(bits-1) - 1, 0 -> exactly 0, and each channel's largest |w|
// reproduced within half a step; the ranges written are [-max|w|, max|w|].
TEST(WeightRange, SymmetricNarrowFakeQuantLiesOnGrid) {
  for (const auto& c : weight_cases()) {
    const ChannelLayout layout = layout_of(c);
    auto w = random_values(layout.size(), 23, 0.1f);
    for (std::int64_t i = 0; i < layout.size(); i += 97) w[static_cast<std::size_t>(i)] = 0.0f;
    const Range naive = naive_range(w, layout, true);
    for (int bits : {2, 4, 8}) {
      SCOPED_TRACE(c.name + " bits " + std::to_string(bits));
      const RangeQuant quant{bits, true};
      const auto channels = static_cast<std::size_t>(layout.channels);
      std::vector<float> y(w.size()), min(channels), max(channels), scratch;
      lowbit::ref::fake_quant_weights(w.data(), y.data(), layout, quant, true, min.data(),
                                      max.data(), nullptr, host_workspace(scratch, layout));
      EXPECT_EQ(min, naive.min);
      EXPECT_EQ(max, naive.max);

      const float k_limit = static_cast<float>((1 << (bits - 1)) - 1);
      std::vector<float> scale(channels);
      for (std::size_t ch = 0; ch < channels; ++ch)
        scale[ch] = (max[ch] - min[ch]) / static_cast<float>(quant.qmax() - quant.qmin());
      std::vector<float> largest_error(channels, 0.0f);
      int failures = 0;
      for (std::int64_t i = 0; i < layout.size() && failures < 5; ++i) {
        const auto k = static_cast<std::size_t>(i);
        const auto ch = static_cast<std::size_t>(channel_of(layout, i));
        const float step = std::nearbyint(y[k] / scale[ch]);
        const bool on_grid = std::fabs(step) <= k_limit && y[k] == step * scale[ch];
        const bool zero_ok = w[k] != 0.0f || y[k] == 0.0f;
        if (!on_grid || !zero_ok) {
          ++failures;
          ADD_FAILURE() << "[" << i << "] w " << w[k] << " y " << y[k] << " scale " << scale[ch]
                        << " step " << step;
        }
        if (std::fabs(w[k]) == naive.max[ch])
          largest_error[ch] = std::fabs(y[k] - w[k]);
      }
      for (std::size_t ch = 0; ch < channels; ++ch)
        EXPECT_LE(largest_error[ch], 0.5f * scale[ch]) << "channel " << ch;
    }
  }
}

// cuda::weight_range and cuda::fake_quant_weights equal the reference bit for
// bit: ranges, outputs and masks, per channel and per tensor.
TEST(GpuWeightRange, MatchesReference) {
  LOWBIT_REQUIRE_GPU();
  for (const auto& c : weight_cases()) {
    const ChannelLayout layout = layout_of(c);
    const auto channels = static_cast<std::size_t>(layout.channels);
    const auto w = random_values(layout.size(), 31, 0.2f);
    DeviceBuffer<float> d_w(w);
    DeviceBuffer<float> d_work(lowbit::reduction_workspace_bytes(layout) / sizeof(float) + 1);
    for (bool symmetric : {false, true}) {
      SCOPED_TRACE(c.name + (symmetric ? " symmetric" : " asymmetric"));
      const Range want = ref_range(w, layout, symmetric);
      DeviceBuffer<float> d_min(channels), d_max(channels);
      lowbit::cuda::weight_range(d_w.data(), layout, symmetric, d_min.data(), d_max.data(),
                                 d_work.as_workspace(), nullptr);
      EXPECT_TRUE(same_bits(want.min, d_min.download()));
      EXPECT_TRUE(same_bits(want.max, d_max.download()));

      for (RangeQuant quant : {RangeQuant{2, true}, RangeQuant{4, true}, RangeQuant{8, true},
                               RangeQuant{8, false}, RangeQuant{16, false}}) {
        SCOPED_TRACE(::testing::Message() << "bits " << quant.bits << " narrow "
                                          << quant.narrow_range);
        std::vector<float> y(w.size()), min(channels), max(channels), scratch;
        std::vector<std::uint32_t> mask(static_cast<std::size_t>(lowbit::mask_words(layout.size())));
        lowbit::ref::fake_quant_weights(w.data(), y.data(), layout, quant, symmetric, min.data(),
                                        max.data(), mask.data(), host_workspace(scratch, layout));
        DeviceBuffer<float> d_y(w.size());
        DeviceBuffer<std::uint32_t> d_mask(mask.size());
        lowbit::cuda::fake_quant_weights(d_w.data(), d_y.data(), layout, quant, symmetric,
                                         d_min.data(), d_max.data(), d_mask.data(),
                                         d_work.as_workspace(), nullptr);
        EXPECT_TRUE(same_bits(y, d_y.download()));
        EXPECT_TRUE(same_bits(min, d_min.download()));
        EXPECT_TRUE(same_bits(max, d_max.download()));
        EXPECT_TRUE(same_bits(mask, d_mask.download()));
      }
    }
  }
}

// quant_delay_identity (TensorFlow's quant_delay for weights): while the steps
// done are below the delay, y = x and the mask passes every element but NaN,
// as ema_fake_quant's identity phase does; from the delay on, y and the mask
// keep what the quantizer wrote.
TEST(QuantDelayIdentity, PassesThroughOnlyWhileTheStepsAreBelowTheDelay) {
  const std::int64_t n = 100;  // a partial last mask word
  auto x = random_values(n, 3, 1.0f);
  x[5] = std::numeric_limits<float>::quiet_NaN();
  x[70] = std::numeric_limits<float>::infinity();
  const std::vector<float> written(static_cast<std::size_t>(n), 7.0f);
  const std::vector<std::uint32_t> written_mask(4, 0xdeadbeefu);
  std::vector<float> y = written;
  std::vector<std::uint32_t> mask = written_mask;
  const std::int64_t delay = 2;
  for (const std::int64_t done : {std::int64_t{2}, std::int64_t{9}}) {
    lowbit::ref::quant_delay_identity(x.data(), y.data(), n, &done, delay, mask.data());
    EXPECT_TRUE(same_bits(written, y)) << done;
    EXPECT_EQ(mask, written_mask) << done;
  }

  // The identity phase of ema_fake_quant, bit for bit.
  lowbit::EmaRangeState state;
  lowbit::ref::ema_state_init(&state);
  lowbit::EmaConfig config;
  config.quant_delay = delay;
  std::vector<float> ema_y(x.size());
  std::vector<std::uint32_t> ema_mask(4);
  lowbit::ref::ema_fake_quant(x.data(), ema_y.data(), n, &state, config, ema_mask.data());
  const std::int64_t done = 1;
  lowbit::ref::quant_delay_identity(x.data(), y.data(), n, &done, delay, mask.data());
  EXPECT_TRUE(same_bits(x, y));
  EXPECT_TRUE(same_bits(ema_y, y));
  EXPECT_EQ(mask, ema_mask);
  EXPECT_EQ((mask[0] >> 5) & 1u, 0u) << "NaN does not pass";
  EXPECT_EQ(mask[3] >> 4, 0u) << "bits past n stay clear";

  EXPECT_NO_THROW(lowbit::ref::quant_delay_identity(x.data(), y.data(), n, &done, delay, nullptr));
  EXPECT_TRUE(lowbit::test::throws_mentioning(
      [&] { lowbit::ref::quant_delay_identity(x.data(), y.data(), n, nullptr, delay, nullptr); },
      "step is null"));
  EXPECT_TRUE(lowbit::test::throws_mentioning(
      [&] { lowbit::ref::quant_delay_identity(x.data(), y.data(), n, &done, -1, nullptr); },
      "quant_delay must not be negative"));
}

// cuda::quant_delay_identity equals the reference bit for bit, before and
// after the delay, for sizes around the 32-element mask word.
TEST(GpuQuantDelayIdentity, MatchesReference) {
  LOWBIT_REQUIRE_GPU();
  const std::int64_t delay = 3;
  for (const std::int64_t n : {1, 31, 32, 33, 1000, 48007}) {
    auto x = random_values(n, 17, 1.0f);
    x[static_cast<std::size_t>(n / 2)] = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> written = random_values(n, 18, 1.0f);
    const std::vector<std::uint32_t> written_mask(
        static_cast<std::size_t>(lowbit::mask_words(n)), 0x5a5a5a5au);
    for (const std::int64_t done : {std::int64_t{0}, std::int64_t{2}, delay, std::int64_t{8}}) {
      SCOPED_TRACE(::testing::Message() << "n " << n << ", " << done << " steps done");
      std::vector<float> y = written;
      std::vector<std::uint32_t> mask = written_mask;
      lowbit::ref::quant_delay_identity(x.data(), y.data(), n, &done, delay, mask.data());
      DeviceBuffer<float> d_x(x), d_y(written);
      DeviceBuffer<std::uint32_t> d_mask(written_mask);
      DeviceBuffer<std::int64_t> d_done(std::vector<std::int64_t>{done});
      lowbit::cuda::quant_delay_identity(d_x.data(), d_y.data(), n, d_done.data(), delay,
                                         d_mask.data(), nullptr);
      EXPECT_TRUE(same_bits(y, d_y.download()));
      EXPECT_TRUE(same_bits(mask, d_mask.download()));
    }
  }
}

// The GPU gives the same NaN range as the reference for a poisoned channel.
TEST(GpuWeightRange, NanRangeMatchesReference) {
  LOWBIT_REQUIRE_GPU();
  const ChannelLayout layout = ChannelLayout::per_channel({3, 4, 10}, 1);
  auto w = random_values(layout.size(), 5, 1.0f);
  w[57] = std::numeric_limits<float>::quiet_NaN();
  DeviceBuffer<float> d_w(w);
  DeviceBuffer<float> d_work(lowbit::reduction_workspace_bytes(layout) / sizeof(float) + 1);
  for (bool symmetric : {false, true}) {
    const Range want = ref_range(w, layout, symmetric);
    DeviceBuffer<float> d_min(4), d_max(4);
    lowbit::cuda::weight_range(d_w.data(), layout, symmetric, d_min.data(), d_max.data(),
                               d_work.as_workspace(), nullptr);
    EXPECT_TRUE(same_bits(want.min, d_min.download())) << "symmetric " << symmetric;
    EXPECT_TRUE(same_bits(want.max, d_max.download())) << "symmetric " << symmetric;
  }
}

}  // namespace
