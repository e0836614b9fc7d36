// What the activation quantizers count as clipped, on hand-picked inputs, the
// same on both sides: elements beyond the grid ends as each family's gradient
// sees them (affine by the rounded level, range and LSQ by the value), never
// NaN, and nothing during an identity phase. Counts add up across calls.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "both_sides.hpp"

namespace lowbit {
namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

template <class Api>
class ClipCounts : public test::BothSides<Api> {};
TYPED_TEST_SUITE(ClipCounts, test::Sides, test::SideNames);

template <class Api, class Buffer>
ClipCount read(Api& api, const Buffer& counts) {
  return api.download(counts)[0];
}

TYPED_TEST(ClipCounts, AffineCountsLevelsBeyondTheGrid) {
  TypeParam api;
  // Unsigned 2 bits, scale 1, zero point 0: levels 0..3. -0.4 rounds to 0 and
  // 3.4 to 3 (inside); -1, 3.6 (level 4), 10 and +Inf lie beyond.
  const std::vector<float> x_host = {-1.0f, -0.4f, 0.0f, 3.0f, 3.4f, 3.6f, 10.0f, kNaN, kInf};
  const auto n = static_cast<std::int64_t>(x_host.size());
  auto x = api.upload(x_host);
  auto y = api.upload(std::vector<float>(x_host.size()));
  auto scale = api.upload(std::vector<float>{1.0f});
  auto zero_point = api.upload(std::vector<std::int32_t>{0});
  auto counts = api.upload(std::vector<ClipCount>(1));
  for (int call = 1; call <= 2; ++call) {
    api.fake_quant_affine(x.data(), y.data(), ChannelLayout::per_tensor(n), scale.data(),
                          zero_point.data(), AffineQuant::unsigned_bits(2), nullptr, counts.data());
    const ClipCount c = read(api, counts);
    EXPECT_EQ(c.quantized, 9u * call);
    EXPECT_EQ(c.clipped, 4u * call);
  }
}

TYPED_TEST(ClipCounts, LsqCountsValuesBeyondTheGrid) {
  TypeParam api;
  // Signed 2 bits, step 0.5: the grid is [-1, 0.5]. -1 and 0.5 are its ends;
  // -1.1 and 0.6 (which rounds onto the end) lie beyond, as does -Inf.
  const std::vector<float> x_host = {-1.1f, -1.0f, 0.0f, 0.5f, 0.6f, kNaN, -kInf};
  const auto n = static_cast<std::int64_t>(x_host.size());
  auto x = api.upload(x_host);
  auto y = api.upload(std::vector<float>(x_host.size()));
  auto scale = api.upload(std::vector<float>{0.5f});
  auto counts = api.upload(std::vector<ClipCount>(1));
  api.lsq_forward(x.data(), y.data(), ChannelLayout::per_tensor(n), scale.data(),
                  LsqQuant::signed_bits(2), counts.data());
  const ClipCount c = read(api, counts);
  EXPECT_EQ(c.quantized, 7u);
  EXPECT_EQ(c.clipped, 3u);
}

/// An exact-power-of-two decay, so that one EMA update gives the batch range
/// exactly: [0, 3] nudges to itself on the unsigned 2-bit grid.
EmaConfig lagged_two_bits() {
  EmaConfig config;
  config.quant = {2, false};
  config.decay = 0.5f;
  config.mode = EmaMode::lagged;
  return config;
}

TYPED_TEST(ClipCounts, EmaCountsNothingInItsIdentityPhase) {
  TypeParam api;
  auto state = api.upload(std::vector<EmaRangeState>{EmaRangeState{}});
  auto counts = api.upload(std::vector<ClipCount>(1));
  // Lagged mode's first call has no range yet: y = x, nothing quantized.
  auto first = api.upload(std::vector<float>{0.0f, 1.0f, 3.0f});
  auto y = api.upload(std::vector<float>(5));
  api.ema_fake_quant(first.data(), y.data(), 3, state.data(), lagged_two_bits(), nullptr,
                     MaskFormat::pass, counts.data());
  ClipCount c = read(api, counts);
  EXPECT_EQ(c.quantized, 0u);
  EXPECT_EQ(c.clipped, 0u);
  // The second quantizes with [0, 3]: -1 and 5 lie beyond it, 3 is its end.
  auto second = api.upload(std::vector<float>{-1.0f, 2.0f, 5.0f, 3.0f, kNaN});
  api.ema_fake_quant(second.data(), y.data(), 5, state.data(), lagged_two_bits(), nullptr,
                     MaskFormat::pass, counts.data());
  c = read(api, counts);
  EXPECT_EQ(c.quantized, 5u);
  EXPECT_EQ(c.clipped, 2u);
}

TYPED_TEST(ClipCounts, FusedActivationCountsTheReluOutput) {
  TypeParam api;
  auto state = api.upload(std::vector<EmaRangeState>{EmaRangeState{}});
  auto counts = api.upload(std::vector<ClipCount>(1));
  const ChannelLayout layout{1, 2, 2};  // two channels of two
  auto bias = api.upload(std::vector<float>{0.0f, 1.0f});
  auto y = api.upload(std::vector<float>(4));
  // v = relu(x + b) = {0, 3, 2, 0}: the range becomes [0, 3].
  auto first = api.upload(std::vector<float>{-2.0f, 3.0f, 1.0f, -1.0f});
  api.bias_relu_ema_fake_quant(first.data(), bias.data(), layout, y.data(), state.data(),
                               lagged_two_bits(), nullptr, counts.data());
  // v = {0, 7, 4, 1}: ReLU zeros are inside the range; 7 and 4 lie beyond.
  auto second = api.upload(std::vector<float>{-5.0f, 7.0f, 3.0f, 0.0f});
  api.bias_relu_ema_fake_quant(second.data(), bias.data(), layout, y.data(), state.data(),
                               lagged_two_bits(), nullptr, counts.data());
  const ClipCount c = read(api, counts);
  EXPECT_EQ(c.quantized, 4u);
  EXPECT_EQ(c.clipped, 2u);
}

}  // namespace
}  // namespace lowbit
