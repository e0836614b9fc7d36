// The sign of every zero the ops produce, decided on purpose and the same on
// both sides (docs/numerics.md, "Signed zeros"):
//  - a quantized zero is +0 in every family (TensorFlow's floor(...)·scale,
//    PyTorch's integer arithmetic), whatever the sign of the input;
//  - an identity passes its input's zero through unchanged;
//  - a blocked gradient is dy·0, as TensorFlow's and PyTorch's dy·mask: -0
//    for a negative dy, NaN for a non-finite one;
//  - sums start from +0, so a sum with nothing in it is +0;
//  - range bounds of zero are +0.
// Each op runs on the CPU reference and, as SignedZero/Gpu, on the device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "both_sides.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

using test::bits_of;

constexpr std::uint32_t kPlusZero = 0x00000000u;
constexpr std::uint32_t kMinusZero = 0x80000000u;

/// The bit pattern of each element, for readable failures.
std::vector<std::uint32_t> bits(const std::vector<float>& v) {
  std::vector<std::uint32_t> out;
  for (float f : v) out.push_back(bits_of(f));
  return out;
}

std::vector<std::uint32_t> repeat(std::uint32_t b, std::size_t n) {
  return std::vector<std::uint32_t>(n, b);
}

template <class Api>
class SignedZero : public test::BothSides<Api> {};
TYPED_TEST_SUITE(SignedZero, test::Sides, test::SideNames);

// Inputs that quantize to the zero level of [-1, 1] at 8 bits (step 2/255),
// of both signs, subnormals included.
const std::vector<float> kToZeroLevel = {-0.0f, 0.0f, -0.003f, 0.003f, -1e-40f, 1e-40f};

TYPED_TEST(SignedZero, RangeForwardGivesPlusZero) {
  TypeParam api;
  const std::size_t n = kToZeroLevel.size();
  for (const ChannelLayout layout : {ChannelLayout::per_tensor(6), ChannelLayout{1, 6, 1}}) {
    for (const float bound : {1.0f, 0.0f}) {  // [-1, 1], then the zero-width [0, 0]
      const std::vector<float> lo(static_cast<std::size_t>(layout.channels), -bound);
      const std::vector<float> hi(static_cast<std::size_t>(layout.channels), bound);
      auto x = api.upload(kToZeroLevel);
      auto y = api.upload(std::vector<float>(n, 1.0f));
      auto dmin = api.upload(lo);
      auto dmax = api.upload(hi);
      api.fake_quant_range(x.data(), y.data(), layout, dmin.data(), dmax.data(),
                           RangeQuant{8, false}, nullptr, MaskFormat::pass);
      EXPECT_EQ(bits(api.download(y)), repeat(kPlusZero, n))
          << "channels " << layout.channels << ", range ±" << bound;
    }
  }
}

TYPED_TEST(SignedZero, AffineAndLsqForwardGivePlusZero) {
  TypeParam api;
  const float s = 0.25f;
  // x/s in (-0.5, 0]: round_half_even gives -0, PyTorch's integers give 0.
  const std::vector<float> x_host = {-0.0f, 0.0f, -0.1f, -0.125f, 0.1f, -1e-40f};
  const std::size_t n = x_host.size();
  for (const AffineQuant grid : {AffineQuant::unsigned_bits(4), AffineQuant::signed_bits(4)}) {
    auto x = api.upload(x_host);
    auto y = api.upload(std::vector<float>(n, 1.0f));
    auto scale = api.upload(std::vector<float>{s});
    auto zero_point = api.upload(std::vector<std::int32_t>{0});
    api.fake_quant_affine(x.data(), y.data(), ChannelLayout::per_tensor(6), scale.data(),
                          zero_point.data(), grid, nullptr, nullptr);
    EXPECT_EQ(bits(api.download(y)), repeat(kPlusZero, n)) << "affine, qmin " << grid.qmin;
    auto y_lsq = api.upload(std::vector<float>(n, 1.0f));
    api.lsq_forward(x.data(), y_lsq.data(), ChannelLayout::per_tensor(6), scale.data(), grid,
                    nullptr);
    EXPECT_EQ(bits(api.download(y_lsq)), repeat(kPlusZero, n)) << "lsq, qmin " << grid.qmin;
  }
}

TYPED_TEST(SignedZero, BlockedGradientsAreDyTimesZero) {
  TypeParam api;
  const float inf = std::numeric_limits<float>::infinity();
  // All outside [-1, 1] except the first: dx = dy, dy·0 = -0, +0, NaN, NaN.
  const std::vector<float> x_host = {0.5f, 5.0f, -5.0f, 7.0f, -7.0f};
  const std::vector<float> dy_host = {-3.0f, -2.0f, 4.0f, inf, std::nanf("")};
  const ChannelLayout layout = ChannelLayout::per_tensor(5);
  auto x = api.upload(x_host);
  auto dy = api.upload(dy_host);
  auto y = api.upload(std::vector<float>(5));
  auto lo = api.upload(std::vector<float>{-1.0f});
  auto hi = api.upload(std::vector<float>{1.0f});
  for (const MaskFormat format : {MaskFormat::pass, MaskFormat::sides}) {
    auto mask = api.upload(std::vector<std::uint32_t>(mask_words(5, format)));
    auto dx = api.upload(std::vector<float>(5, 1.0f));
    api.fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), RangeQuant{8, false},
                         mask.data(), format);
    if (format == MaskFormat::pass) {
      api.ste_backward(dy.data(), mask.data(), format, 5, dx.data());
    } else {
      auto d_min = api.upload(std::vector<float>(1));
      auto d_max = api.upload(std::vector<float>(1));
      auto ws = test::workspace_buffer(api, layout);
      api.ste_backward_range(dy.data(), mask.data(), layout, dx.data(), d_min.data(),
                             d_max.data(), test::as_workspace(ws));
      // Each sum meets a non-finite dy·0 or dy: NaN, as TensorFlow's Σ dy·below.
      EXPECT_TRUE(std::isnan(api.download(d_min)[0]));
      EXPECT_TRUE(std::isnan(api.download(d_max)[0]));
    }
    const auto got = api.download(dx);
    EXPECT_EQ(bits_of(got[0]), bits_of(-3.0f));
    EXPECT_EQ(bits_of(got[1]), kMinusZero);
    EXPECT_EQ(bits_of(got[2]), kPlusZero);
    EXPECT_TRUE(std::isnan(got[3]) && std::isnan(got[4]));
  }
  // LSQ's blocked dx (x/s outside the grid) and the ReLU's follow the same rule.
  auto lsq_dx = api.upload(std::vector<float>(5, 1.0f));
  auto d_scale = api.upload(std::vector<float>(1));
  auto scale = api.upload(std::vector<float>{0.25f});
  auto ws = test::workspace_buffer(api, layout);
  api.lsq_backward(dy.data(), x.data(), layout, scale.data(), AffineQuant::signed_bits(4),
                   lsq_dx.data(), d_scale.data(), test::as_workspace(ws));
  const auto lsq = api.download(lsq_dx);
  EXPECT_EQ(bits_of(lsq[0]), bits_of(-3.0f));
  EXPECT_EQ(bits_of(lsq[1]), kMinusZero);
  EXPECT_EQ(bits_of(lsq[2]), kPlusZero);
  auto relu_out = api.upload(std::vector<float>{1.0f, -0.0f, 0.0f, -1.0f, 0.0f});
  auto relu_dx = api.upload(std::vector<float>(5, 1.0f));
  api.bias_activation_backward(dy.data(), relu_out.data(), layout, true, nullptr, relu_dx.data(),
                               static_cast<float*>(nullptr), Workspace{});
  const auto relu = api.download(relu_dx);
  EXPECT_EQ(bits_of(relu[0]), bits_of(-3.0f));
  EXPECT_EQ(bits_of(relu[1]), kMinusZero);
  EXPECT_EQ(bits_of(relu[2]), kPlusZero);
  EXPECT_TRUE(std::isnan(relu[3]) && std::isnan(relu[4]));
}

TYPED_TEST(SignedZero, EmptyRangeGradientSumsArePlusZero) {
  TypeParam api;
  // Everything inside the range, every dy negative: blocked terms are -0, but
  // the sums start at +0.
  const ChannelLayout layout{3, 2, 40};
  const std::size_t n = static_cast<std::size_t>(layout.size());
  auto x = api.upload(std::vector<float>(n, 0.25f));
  auto dy = api.upload(std::vector<float>(n, -1.5f));
  auto y = api.upload(std::vector<float>(n));
  auto lo = api.upload(std::vector<float>{-1.0f, -2.0f});
  auto hi = api.upload(std::vector<float>{1.0f, 2.0f});
  auto mask = api.upload(std::vector<std::uint32_t>(mask_words(n, MaskFormat::sides)));
  auto dx = api.upload(std::vector<float>(n));
  auto d_min = api.upload(std::vector<float>(2, 1.0f));
  auto d_max = api.upload(std::vector<float>(2, 1.0f));
  auto ws = test::workspace_buffer(api, layout);
  api.fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), RangeQuant{4, false},
                       mask.data(), MaskFormat::sides);
  api.ste_backward_range(dy.data(), mask.data(), layout, dx.data(), d_min.data(), d_max.data(),
                         test::as_workspace(ws));
  EXPECT_EQ(bits(api.download(d_min)), repeat(kPlusZero, 2));
  EXPECT_EQ(bits(api.download(d_max)), repeat(kPlusZero, 2));
}

TYPED_TEST(SignedZero, EmaQuantizesToPlusZeroAndItsIdentityKeepsTheSign) {
  TypeParam api;
  const std::vector<float> x_host = {-0.0f, -0.001f, 0.0f, 1.0f, -1.0f};
  auto x = api.upload(x_host);
  auto y = api.upload(std::vector<float>(5));
  auto state = api.upload(std::vector<EmaRangeState>(1));
  EmaConfig config;
  config.quant = RangeQuant{8, false};
  config.quant_delay = 1;  // the first call is the identity
  api.ema_fake_quant(x.data(), y.data(), 5, state.data(), config, nullptr, MaskFormat::pass,
                     nullptr);
  EXPECT_EQ(bits(api.download(y)), bits(x_host));
  api.ema_fake_quant(x.data(), y.data(), 5, state.data(), config, nullptr, MaskFormat::pass,
                     nullptr);
  const auto quantized = api.download(y);
  EXPECT_EQ(bits_of(quantized[0]), kPlusZero);
  EXPECT_EQ(bits_of(quantized[1]), kPlusZero);
  EXPECT_EQ(bits_of(quantized[2]), kPlusZero);
  // The fused activation: relu(-0) and relu of negatives are +0, quantized +0.
  auto fused = api.upload(std::vector<float>(5, 1.0f));
  api.bias_relu_ema_fake_quant(x.data(), static_cast<const float*>(nullptr),
                               ChannelLayout::per_tensor(5), fused.data(), state.data(), config,
                               static_cast<std::uint32_t*>(nullptr), nullptr);
  const auto fused_y = api.download(fused);
  for (int i : {0, 1, 2, 4}) EXPECT_EQ(bits_of(fused_y[i]), kPlusZero) << i;
}

TYPED_TEST(SignedZero, WeightRangeBoundsOfZeroArePlusZero) {
  TypeParam api;
  // Channel 0 holds only zeros of both signs, channel 1 only -0.
  const ChannelLayout layout{1, 2, 4};
  const std::vector<float> w_host = {-0.0f, 0.0f, -0.0f, 0.0f, -0.0f, -0.0f, -0.0f, -0.0f};
  auto w = api.upload(w_host);
  for (const bool symmetric : {false, true}) {
    auto min = api.upload(std::vector<float>(2, 1.0f));
    auto max = api.upload(std::vector<float>(2, 1.0f));
    auto y = api.upload(std::vector<float>(8, 1.0f));
    auto ws = test::workspace_buffer(api, layout);
    api.fake_quant_weights(w.data(), y.data(), layout, RangeQuant{4, true}, symmetric, min.data(),
                           max.data(), static_cast<std::uint32_t*>(nullptr),
                           test::as_workspace(ws));
    EXPECT_EQ(bits(api.download(min)), repeat(kPlusZero, 2)) << "symmetric " << symmetric;
    EXPECT_EQ(bits(api.download(max)), repeat(kPlusZero, 2)) << "symmetric " << symmetric;
    EXPECT_EQ(bits(api.download(y)), repeat(kPlusZero, 8)) << "symmetric " << symmetric;
  }
}

TYPED_TEST(SignedZero, ReluGivesPlusZeroAndAdditionsFollowIeee) {
  TypeParam api;
  const std::vector<float> x_host = {-0.0f, -0.0f, 0.0f, -2.0f};
  auto x = api.upload(x_host);
  auto bias = api.upload(std::vector<float>{-0.0f});
  auto y = api.upload(std::vector<float>(4, 1.0f));
  api.bias_activation(x.data(), bias.data(), ChannelLayout::per_tensor(4), true, y.data());
  EXPECT_EQ(bits(api.download(y)), repeat(kPlusZero, 4));
  api.bias_activation(x.data(), bias.data(), ChannelLayout::per_tensor(4), false, y.data());
  EXPECT_EQ(bits(api.download(y)), (std::vector<std::uint32_t>{kMinusZero, kMinusZero, kPlusZero,
                                                                bits_of(-2.0f)}));
  auto b = api.upload(std::vector<float>{-0.0f, 0.0f, -0.0f, 2.0f});
  api.add(x.data(), b.data(), 4, y.data());
  EXPECT_EQ(bits(api.download(y)),
            (std::vector<std::uint32_t>{kMinusZero, kPlusZero, kPlusZero, kPlusZero}));
}

}  // namespace
}  // namespace lowbit
