// Inputs and parameters (DESIGN.md §5): every bad argument gives a clear
// lowbit::Error from the host API, before anything is written; empty tensors
// are a no-op; ChannelLayout::per_channel views shapes as [outer, C, inner].
//
// The lowbit::cuda functions validate on the host before touching the device,
// so their checks run here without a GPU: host pointers stand in for device
// pointers, and every call below is rejected before any pointer is used. Their
// messages are checked too, so that a CUDA error (also a lowbit::Error) cannot
// pass for the argument error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "lowbit/ref.hpp"
#include "lowbit/types.hpp"
#include "test_util.hpp"

namespace {

// Typed nulls: a bare nullptr would not choose between the float, bf16 and
// fp16 overloads.
const float* const kNullX = nullptr;
float* const kNullY = nullptr;

using lowbit::AffineQuant;
using lowbit::ChannelLayout;
using lowbit::EmaConfig;
using lowbit::EmaMode;
using lowbit::EmaRangeState;
using lowbit::LsqQuant;
using lowbit::MaskFormat;
using lowbit::RangeQuant;
using lowbit::Workspace;
namespace ref = lowbit::ref;
namespace gpu = lowbit::cuda;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kSentinel = -12345.0f;
constexpr std::uint32_t kMaskSentinel = 0xDEADBEEFu;
constexpr std::uint8_t kByteSentinel = 0xA5;
constexpr std::int64_t kN = 8;

/// Runs f and checks that it throws lowbit::Error whose what() contains needle.
template <class F>
::testing::AssertionResult throws_error(F&& f, const std::string& needle) {
  try {
    f();
  } catch (const lowbit::Error& e) {
    if (std::string(e.what()).find(needle) != std::string::npos)
      return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "message \"" << e.what() << "\" does not mention \"" << needle << "\"";
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-lowbit exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

// Variadic so that braced initialisers with commas can appear in the call.
#define EXPECT_LOWBIT_ERROR(needle, ...) EXPECT_TRUE(throws_error([&] { __VA_ARGS__; }, needle))

/// Valid host buffers for a per-tensor tensor of kN elements; outputs are
/// pre-filled with sentinels so that tests can see whether anything was written.
struct Buffers {
  ChannelLayout layout = ChannelLayout::per_tensor(kN);
  std::vector<float> x{-1.5f, -0.5f, 0.0f, 0.25f, 0.5f, 1.0f, 2.0f, 3.0f};
  std::vector<float> dy = std::vector<float>(kN, 1.0f);
  std::vector<float> y = std::vector<float>(kN, kSentinel);
  std::vector<float> dx = std::vector<float>(kN, kSentinel);
  std::vector<float> min{-1.0f}, max{1.0f}, scale{0.25f};
  std::vector<float> out_min{kSentinel}, out_max{kSentinel}, out_scale{kSentinel};
  std::vector<std::int32_t> zero_point{0};
  std::vector<std::uint32_t> mask =
      std::vector<std::uint32_t>(lowbit::mask_words(kN, MaskFormat::sides), kMaskSentinel);
  std::vector<std::uint8_t> codes = std::vector<std::uint8_t>(kN, 1);
  std::vector<std::uint8_t> packed = std::vector<std::uint8_t>(kN, kByteSentinel);
  std::vector<float> scratch;
  Workspace workspace = lowbit::test::host_workspace(scratch, layout);
  EmaRangeState state{};

  bool outputs_untouched() const {
    for (float v : y) if (v != kSentinel) return false;
    for (float v : dx) if (v != kSentinel) return false;
    for (std::uint32_t w : mask) if (w != kMaskSentinel) return false;
    return out_min[0] == kSentinel && out_max[0] == kSentinel && out_scale[0] == kSentinel;
  }
};

bool same_state(const EmaRangeState& a, const EmaRangeState& b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

// ---------------------------------------------------------------------------
// Quantizer parameters

// Bits outside 2..16 are rejected by every range-mode entry point, before any
// output or EMA state is written; 2 and 16 are accepted.
TEST(Arguments, BitsOutsideTwoToSixteen) {
  for (int bits : {1, 17, 0, -3}) {
    SCOPED_TRACE(::testing::Message() << "bits " << bits);
    Buffers b;
    for (bool narrow : {false, true}) {
      EXPECT_LOWBIT_ERROR("bits", ref::fake_quant_range(b.x.data(), b.y.data(), b.layout,
                                                        b.min.data(), b.max.data(),
                                                        RangeQuant{bits, narrow}, b.mask.data()));
    }
    EmaConfig config;
    config.quant.bits = bits;
    ref::ema_state_init(&b.state);
    const EmaRangeState before = b.state;
    EXPECT_LOWBIT_ERROR("bits", ref::ema_fake_quant(b.x.data(), b.y.data(), kN, &b.state, config,
                                                    b.mask.data()));
    EXPECT_TRUE(same_state(before, b.state));
    EXPECT_LOWBIT_ERROR("bits", ref::fake_quant_weights(b.x.data(), b.y.data(), b.layout,
                                                        RangeQuant{bits, true}, true,
                                                        b.out_min.data(), b.out_max.data(),
                                                        b.mask.data(), b.workspace));
    EXPECT_TRUE(b.outputs_untouched());
  }
  for (int bits : {2, 16}) {
    Buffers b;
    EXPECT_NO_THROW(ref::fake_quant_range(b.x.data(), b.y.data(), b.layout, b.min.data(),
                                          b.max.data(), RangeQuant{bits, true}, nullptr))
        << "bits " << bits;
  }
}

// A range with min > max is rejected and the message names the channel.
TEST(Arguments, RangeMinAboveMax) {
  Buffers b;
  const std::vector<float> lo{1.0f}, hi{-1.0f};
  EXPECT_LOWBIT_ERROR("min > max", ref::fake_quant_range(b.x.data(), b.y.data(), b.layout,
                                                         lo.data(), hi.data(), RangeQuant{},
                                                         nullptr));
  const ChannelLayout two = ChannelLayout::per_channel({2, 4}, 0);
  const std::vector<float> lo2{-1.0f, 0.5f}, hi2{1.0f, 0.25f};
  EXPECT_LOWBIT_ERROR("channel 1", ref::fake_quant_range(b.x.data(), b.y.data(), two, lo2.data(),
                                                         hi2.data(), RangeQuant{}, nullptr));
  EXPECT_TRUE(b.outputs_untouched());
  // min == max is the valid zero-width range: y = 0.
  const std::vector<float> flat{0.5f};
  ref::fake_quant_range(b.x.data(), b.y.data(), b.layout, flat.data(), flat.data(), RangeQuant{},
                        nullptr);
  EXPECT_EQ(b.y, std::vector<float>(kN, 0.0f));
}

// NaN or ±Inf as a range bound is rejected.
TEST(Arguments, RangeNotFinite) {
  const std::vector<std::pair<float, float>> ranges{
      {kNaN, 1.0f}, {-1.0f, kNaN}, {kNaN, kNaN}, {-kInf, 1.0f},
      {-1.0f, kInf}, {-kInf, kInf}, {kInf, kInf}};
  for (const auto& [lo, hi] : ranges) {
    SCOPED_TRACE(::testing::Message() << "[" << lo << ", " << hi << "]");
    Buffers b;
    EXPECT_LOWBIT_ERROR("not finite", ref::fake_quant_range(b.x.data(), b.y.data(), b.layout,
                                                            &lo, &hi, RangeQuant{}, nullptr));
    EXPECT_TRUE(b.outputs_untouched());
  }
}

// Affine: a zero point outside [qmin, qmax] is rejected; the ends are valid.
TEST(Arguments, AffineZeroPointOutsideGrid) {
  Buffers b;
  const struct {
    AffineQuant quant;
    std::int32_t bad_low, bad_high;
  } cases[] = {{AffineQuant::unsigned_bits(8), -1, 256}, {AffineQuant::signed_bits(4), -9, 8}};
  for (const auto& c : cases) {
    for (std::int32_t zp : {c.bad_low, c.bad_high}) {
      EXPECT_LOWBIT_ERROR("zero point", ref::fake_quant_affine(b.x.data(), b.y.data(), b.layout,
                                                               b.scale.data(), &zp, c.quant,
                                                               b.mask.data()))
          << "zero point " << zp;
    }
    for (std::int32_t zp : {c.quant.qmin, c.quant.qmax}) {
      EXPECT_NO_THROW(ref::fake_quant_affine(b.x.data(), b.dx.data(), b.layout, b.scale.data(),
                                             &zp, c.quant, nullptr));
    }
  }
  EXPECT_TRUE(b.y == std::vector<float>(kN, kSentinel));
}

// Affine: a scale <= 0, NaN or infinite is rejected.
TEST(Arguments, AffineScaleNotPositive) {
  for (float s : {0.0f, -0.0f, -0.5f, -1e-30f, kNaN, kInf}) {
    SCOPED_TRACE(::testing::Message() << "scale " << s);
    Buffers b;
    EXPECT_LOWBIT_ERROR("scale", ref::fake_quant_affine(b.x.data(), b.y.data(), b.layout, &s,
                                                        b.zero_point.data(), AffineQuant{},
                                                        b.mask.data()));
    EXPECT_TRUE(b.outputs_untouched());
  }
}

// Affine grids must span 2..16 bits with qmin < qmax; valid extremes pass.
TEST(Arguments, AffineGridSpan) {
  Buffers b;
  for (AffineQuant quant : {AffineQuant{0, 1}, AffineQuant{-1, 0}, AffineQuant{0, 65536},
                            AffineQuant{-32769, 32767}, AffineQuant{0, 1 << 20}}) {
    std::int32_t zp = quant.qmin;
    EXPECT_LOWBIT_ERROR("2..16 bits",
                        ref::fake_quant_affine(b.x.data(), b.y.data(), b.layout, b.scale.data(),
                                               &zp, quant, nullptr))
        << "[" << quant.qmin << ", " << quant.qmax << "]";
  }
  for (AffineQuant quant : {AffineQuant{5, 5}, AffineQuant{7, 3}, AffineQuant{0, -255}}) {
    std::int32_t zp = quant.qmin;
    EXPECT_LOWBIT_ERROR("qmin", ref::fake_quant_affine(b.x.data(), b.y.data(), b.layout,
                                                       b.scale.data(), &zp, quant, nullptr))
        << "[" << quant.qmin << ", " << quant.qmax << "]";
  }
  EXPECT_TRUE(b.outputs_untouched());
  for (AffineQuant quant : {AffineQuant{0, 2}, AffineQuant{0, 65535}, AffineQuant{-32768, 32767},
                            AffineQuant::signed_bits(2), AffineQuant::unsigned_bits(16)}) {
    std::int32_t zp = quant.qmin;
    EXPECT_NO_THROW(ref::fake_quant_affine(b.x.data(), b.y.data(), b.layout, b.scale.data(), &zp,
                                           quant, nullptr))
        << "[" << quant.qmin << ", " << quant.qmax << "]";
  }
}

// LSQ grids must contain 0 and a positive level.
TEST(Arguments, LsqGridWithoutZero) {
  for (LsqQuant quant : {LsqQuant{1, 15}, LsqQuant{2, 10}, LsqQuant{-8, -1}, LsqQuant{-8, 0}}) {
    SCOPED_TRACE(::testing::Message() << "[" << quant.qmin << ", " << quant.qmax << "]");
    Buffers b;
    EXPECT_LOWBIT_ERROR("contain 0", ref::lsq_forward(b.x.data(), b.y.data(), b.layout,
                                                      b.scale.data(), quant));
    EXPECT_LOWBIT_ERROR("contain 0",
                        ref::lsq_backward(b.dy.data(), b.x.data(), b.layout, b.scale.data(), quant,
                                          b.dx.data(), b.out_scale.data(), b.workspace));
    EXPECT_LOWBIT_ERROR("contain 0", ref::lsq_init_scale(b.x.data(), b.layout, quant,
                                                         b.out_scale.data(), b.workspace));
    EXPECT_TRUE(b.outputs_untouched());
  }
}

// EMA decay must lie in [0, 1); quant_delay and freeze_step must not be negative.
TEST(Arguments, EmaConfig) {
  for (float decay : {-0.1f, 1.0f, 1.5f, kNaN, kInf}) {
    Buffers b;
    EmaConfig config;
    config.decay = decay;
    EXPECT_LOWBIT_ERROR("decay", ref::ema_fake_quant(b.x.data(), b.y.data(), kN, &b.state, config,
                                                     b.mask.data()))
        << "decay " << decay;
    EXPECT_TRUE(same_state(EmaRangeState{}, b.state));
    EXPECT_TRUE(b.outputs_untouched());
  }
  Buffers b;
  EmaConfig delayed;
  delayed.quant_delay = -1;
  EXPECT_LOWBIT_ERROR("quant_delay",
                      ref::ema_fake_quant(b.x.data(), b.y.data(), kN, &b.state, delayed, nullptr));
  EmaConfig frozen;
  frozen.freeze_step = -1;
  EXPECT_LOWBIT_ERROR("freeze_step",
                      ref::ema_fake_quant(b.x.data(), b.y.data(), kN, &b.state, frozen, nullptr));
  EXPECT_TRUE(same_state(EmaRangeState{}, b.state));
  for (float decay : {0.0f, 0.999f}) {
    EmaConfig config;
    config.decay = decay;
    EXPECT_NO_THROW(ref::ema_fake_quant(b.x.data(), b.y.data(), kN, &b.state, config, nullptr));
  }
}

// Codes pack at 2, 4 or 8 bits only.
TEST(Arguments, PackBits) {
  for (int bits : {0, 1, 3, 5, 6, 7, 16, -2}) {
    SCOPED_TRACE(::testing::Message() << "bits " << bits);
    Buffers b;
    EXPECT_LOWBIT_ERROR("2, 4 or 8", ref::pack_codes(b.codes.data(), kN, bits, b.packed.data()));
    EXPECT_LOWBIT_ERROR("2, 4 or 8",
                        ref::unpack_codes(b.packed.data(), kN, bits, b.codes.data()));
    EXPECT_EQ(b.packed, std::vector<std::uint8_t>(kN, kByteSentinel));
  }
}

// ---------------------------------------------------------------------------
// Layouts, pointers, lengths, workspaces

// ChannelLayout::per_channel rejects an axis outside the rank and a negative
// dimension, naming the problem.
TEST(Arguments, ChannelAxisAndDimensions) {
  const std::vector<std::int64_t> shape{2, 3, 4, 5};
  const int rank = static_cast<int>(shape.size());
  for (int axis : {-1, rank, rank + 5}) {
    EXPECT_LOWBIT_ERROR("axis", ChannelLayout::per_channel(shape, axis)) << "axis " << axis;
  }
  EXPECT_LOWBIT_ERROR("axis", ChannelLayout::per_channel({}, 0));
  EXPECT_LOWBIT_ERROR("negative", ChannelLayout::per_channel({2, -3, 4}, 0));
  EXPECT_LOWBIT_ERROR("negative", ChannelLayout::per_channel({2, 3, -1}, 1));
  EXPECT_LOWBIT_ERROR("negative", ChannelLayout::per_channel({-2}, 0));
}

// A layout with a negative extent is rejected by the ops and by
// reduction_workspace_bytes.
TEST(Arguments, NegativeLayout) {
  Buffers b;
  for (ChannelLayout bad : {ChannelLayout{-1, 1, 8}, ChannelLayout{1, -1, -8},
                            ChannelLayout{1, 1, -8}}) {
    EXPECT_LOWBIT_ERROR("negative", ref::fake_quant_range(b.x.data(), b.y.data(), bad,
                                                          b.min.data(), b.max.data(),
                                                          RangeQuant{}, nullptr));
    EXPECT_LOWBIT_ERROR("negative", lowbit::reduction_workspace_bytes(bad));
  }
  EXPECT_TRUE(b.outputs_untouched());
}

// A null pointer with n > 0 names the pointer; a null mask means "no mask".
TEST(Arguments, NullPointers) {
  Buffers b;
  const auto& L = b.layout;
  const RangeQuant rq{};
  const AffineQuant aq{};
  const LsqQuant lq = LsqQuant::signed_bits(4);
  const auto sides = MaskFormat::sides;
  EXPECT_LOWBIT_ERROR("x is null", ref::fake_quant_range(nullptr, b.y.data(), L, b.min.data(),
                                                         b.max.data(), rq, nullptr));
  EXPECT_LOWBIT_ERROR("y is null", ref::fake_quant_range(b.x.data(), nullptr, L, b.min.data(),
                                                         b.max.data(), rq, nullptr));
  EXPECT_LOWBIT_ERROR("min is null", ref::fake_quant_range(b.x.data(), b.y.data(), L, nullptr,
                                                           b.max.data(), rq, nullptr));
  EXPECT_LOWBIT_ERROR("max is null", ref::fake_quant_range(b.x.data(), b.y.data(), L,
                                                           b.min.data(), nullptr, rq, nullptr));
  EXPECT_LOWBIT_ERROR("scale is null", ref::fake_quant_affine(b.x.data(), b.y.data(), L, nullptr,
                                                              b.zero_point.data(), aq, nullptr));
  EXPECT_LOWBIT_ERROR("zero_point is null", ref::fake_quant_affine(b.x.data(), b.y.data(), L,
                                                                   b.scale.data(), nullptr, aq,
                                                                   nullptr));
  EXPECT_LOWBIT_ERROR("dy is null", ref::ste_backward(nullptr, b.mask.data(), sides, kN,
                                                      b.dx.data()));
  EXPECT_LOWBIT_ERROR("mask is null", ref::ste_backward(b.dy.data(), nullptr, sides, kN,
                                                        b.dx.data()));
  EXPECT_LOWBIT_ERROR("dx is null", ref::ste_backward(b.dy.data(), b.mask.data(), sides, kN,
                                                      nullptr));
  EXPECT_LOWBIT_ERROR("sides_mask is null",
                      ref::ste_backward_range(b.dy.data(), nullptr, L, b.dx.data(),
                                              b.out_min.data(), b.out_max.data(), b.workspace));
  EXPECT_LOWBIT_ERROR("d_min is null",
                      ref::ste_backward_range(b.dy.data(), b.mask.data(), L, b.dx.data(), nullptr,
                                              b.out_max.data(), b.workspace));
  EXPECT_LOWBIT_ERROR("d_max is null",
                      ref::ste_backward_range(b.dy.data(), b.mask.data(), L, b.dx.data(),
                                              b.out_min.data(), nullptr, b.workspace));
  EXPECT_LOWBIT_ERROR("state is null", ref::ema_fake_quant(b.x.data(), b.y.data(), kN, nullptr,
                                                           EmaConfig{}, nullptr));
  EXPECT_LOWBIT_ERROR("x is null", ref::ema_fake_quant(nullptr, b.y.data(), kN, &b.state,
                                                       EmaConfig{}, nullptr));
  EXPECT_LOWBIT_ERROR("w is null", ref::weight_range(nullptr, L, true, b.out_min.data(),
                                                     b.out_max.data(), b.workspace));
  EXPECT_LOWBIT_ERROR("min is null", ref::weight_range(b.x.data(), L, true, nullptr,
                                                       b.out_max.data(), b.workspace));
  EXPECT_LOWBIT_ERROR("max is null", ref::fake_quant_weights(b.x.data(), b.y.data(), L, rq, true,
                                                             b.out_min.data(), nullptr, nullptr,
                                                             b.workspace));
  EXPECT_LOWBIT_ERROR("scale is null", ref::lsq_forward(b.x.data(), b.y.data(), L, nullptr, lq));
  EXPECT_LOWBIT_ERROR("d_scale is null",
                      ref::lsq_backward(b.dy.data(), b.x.data(), L, b.scale.data(), lq,
                                        b.dx.data(), nullptr, b.workspace));
  EXPECT_LOWBIT_ERROR("dx is null", ref::lsq_backward(b.dy.data(), b.x.data(), L, b.scale.data(),
                                                      lq, nullptr, b.out_scale.data(),
                                                      b.workspace));
  EXPECT_LOWBIT_ERROR("scale is null",
                      ref::lsq_init_scale(b.x.data(), L, lq, nullptr, b.workspace));
  EXPECT_LOWBIT_ERROR("codes is null", ref::pack_codes(nullptr, kN, 4, b.packed.data()));
  EXPECT_LOWBIT_ERROR("packed is null", ref::unpack_codes(nullptr, kN, 4, b.codes.data()));
  EXPECT_TRUE(b.outputs_untouched());
  EXPECT_EQ(b.state.steps, 0);

  // mask == nullptr is "no mask", not an error.
  EXPECT_NO_THROW(ref::fake_quant_range(b.x.data(), b.y.data(), L, b.min.data(), b.max.data(),
                                        rq, nullptr, MaskFormat::sides));
  EXPECT_NO_THROW(ref::fake_quant_affine(b.x.data(), b.y.data(), L, b.scale.data(),
                                         b.zero_point.data(), aq, nullptr));
  EXPECT_NO_THROW(ref::fake_quant_weights(b.x.data(), b.y.data(), L, RangeQuant{4, true}, true,
                                          b.out_min.data(), b.out_max.data(), nullptr,
                                          b.workspace));
}

// A negative element count is rejected.
TEST(Arguments, NegativeLength) {
  Buffers b;
  EXPECT_LOWBIT_ERROR("negative", ref::ste_backward(b.dy.data(), b.mask.data(), MaskFormat::pass,
                                                    -1, b.dx.data()));
  EXPECT_LOWBIT_ERROR("negative", ref::ema_fake_quant(b.x.data(), b.y.data(), -1, &b.state,
                                                      EmaConfig{}, nullptr));
  EXPECT_LOWBIT_ERROR("negative", ref::pack_codes(b.codes.data(), -1, 4, b.packed.data()));
  EXPECT_LOWBIT_ERROR("negative", ref::unpack_codes(b.packed.data(), -1, 4, b.codes.data()));
  EXPECT_TRUE(b.outputs_untouched());
  EXPECT_TRUE(same_state(EmaRangeState{}, b.state));
}

// Every reducing op rejects a workspace smaller than
// reduction_workspace_bytes, or a null one; exactly that size is enough.
TEST(Arguments, WorkspaceTooSmall) {
  for (const ChannelLayout& layout :
       {ChannelLayout::per_tensor(kN), ChannelLayout::per_channel({2, 4}, 0),
        ChannelLayout::per_tensor(5000)}) {
    SCOPED_TRACE(::testing::Message() << "[" << layout.outer << ", " << layout.channels << ", "
                                      << layout.inner << "]");
    const std::int64_t n = layout.size();
    const auto channels = static_cast<std::size_t>(layout.channels);
    const std::size_t needed = lowbit::reduction_workspace_bytes(layout);
    ASSERT_GT(needed, 0u);
    std::vector<float> x = lowbit::test::random_values(n, 3, 1.0f);
    std::vector<float> y(x.size()), dx(x.size()), dy(x.size(), 1.0f);
    std::vector<float> lo(channels), hi(channels), scale(channels, 0.5f), grad(channels);
    std::vector<std::uint32_t> sides(
        static_cast<std::size_t>(lowbit::mask_words(n, MaskFormat::sides)), 0u);
    std::vector<unsigned char> storage(needed);
    const LsqQuant lq = LsqQuant::signed_bits(4);

    for (Workspace ws : {Workspace{storage.data(), needed - 1}, Workspace{storage.data(), 0},
                         Workspace{nullptr, needed}}) {
      SCOPED_TRACE(::testing::Message() << "workspace of " << ws.bytes << " bytes");
      EXPECT_LOWBIT_ERROR("workspace", ref::ste_backward_range(dy.data(), sides.data(), layout,
                                                               dx.data(), lo.data(), hi.data(), ws));
      EXPECT_LOWBIT_ERROR("workspace",
                          ref::weight_range(x.data(), layout, false, lo.data(), hi.data(), ws));
      EXPECT_LOWBIT_ERROR("workspace",
                          ref::fake_quant_weights(x.data(), y.data(), layout, RangeQuant{}, true,
                                                  lo.data(), hi.data(), nullptr, ws));
      EXPECT_LOWBIT_ERROR("workspace", ref::lsq_backward(dy.data(), x.data(), layout,
                                                         scale.data(), lq, dx.data(), grad.data(),
                                                         ws));
      EXPECT_LOWBIT_ERROR("workspace",
                          ref::lsq_init_scale(x.data(), layout, lq, grad.data(), ws));
    }
    const Workspace exact{storage.data(), needed};
    EXPECT_NO_THROW(ref::ste_backward_range(dy.data(), sides.data(), layout, dx.data(), lo.data(),
                                            hi.data(), exact));
    EXPECT_NO_THROW(ref::weight_range(x.data(), layout, false, lo.data(), hi.data(), exact));
    EXPECT_NO_THROW(ref::lsq_backward(dy.data(), x.data(), layout, scale.data(), lq, dx.data(),
                                      grad.data(), exact));
    EXPECT_NO_THROW(ref::lsq_init_scale(x.data(), layout, lq, grad.data(), exact));
  }
}

// ---------------------------------------------------------------------------
// ChannelLayout::per_channel

// [outer, channels, inner] for the layouts the library quantizes.
TEST(ChannelLayoutTest, PerChannelShapes) {
  struct Case {
    const char* name;
    std::vector<std::int64_t> shape;
    int axis;
    std::int64_t outer, channels, inner;
  };
  const Case cases[] = {
      {"conv weights [K,C,R,S] axis 0", {16, 6, 5, 5}, 0, 1, 16, 150},
      {"NCHW activations axis 1", {32, 6, 28, 28}, 1, 32, 6, 784},
      {"FC weights [out,in] axis 0", {120, 84}, 0, 1, 120, 84},
      {"FC weights [out,in] axis 1", {120, 84}, 1, 120, 84, 1},
      {"NCHW last axis", {32, 6, 28, 27}, 3, 32 * 6 * 28, 27, 1},
      {"1-D tensor", {10}, 0, 1, 10, 1},
      {"size-1 dimensions", {1, 7, 1}, 1, 1, 7, 1},
  };
  for (const auto& c : cases) {
    const ChannelLayout layout = ChannelLayout::per_channel(c.shape, c.axis);
    EXPECT_EQ(layout.outer, c.outer) << c.name;
    EXPECT_EQ(layout.channels, c.channels) << c.name;
    EXPECT_EQ(layout.inner, c.inner) << c.name;
    std::int64_t n = 1;
    for (std::int64_t d : c.shape) n *= d;
    EXPECT_EQ(layout.size(), n) << c.name;
  }
  const ChannelLayout whole = ChannelLayout::per_tensor(42);
  EXPECT_EQ(whole.outer, 1);
  EXPECT_EQ(whole.channels, 1);
  EXPECT_EQ(whole.inner, 42);
}

// A zero dimension anywhere gives an empty layout that keeps the other extents.
TEST(ChannelLayoutTest, ZeroDimensions) {
  const ChannelLayout batch0 = ChannelLayout::per_channel({0, 3, 4, 4}, 1);
  EXPECT_EQ(batch0.outer, 0);
  EXPECT_EQ(batch0.channels, 3);
  EXPECT_EQ(batch0.inner, 16);
  EXPECT_EQ(batch0.size(), 0);
  const ChannelLayout inner0 = ChannelLayout::per_channel({8, 0, 5, 5}, 0);
  EXPECT_EQ(inner0.channels, 8);
  EXPECT_EQ(inner0.inner, 0);
  EXPECT_EQ(inner0.size(), 0);
  const ChannelLayout channels0 = ChannelLayout::per_channel({4, 0, 2}, 1);
  EXPECT_EQ(channels0.outer, 4);
  EXPECT_EQ(channels0.channels, 0);
  EXPECT_EQ(channels0.inner, 2);
  EXPECT_EQ(channels0.size(), 0);
}

// ---------------------------------------------------------------------------
// Empty tensors

std::vector<ChannelLayout> empty_layouts() {
  return {ChannelLayout::per_tensor(0), ChannelLayout::per_channel({0, 3, 4, 4}, 1),
          ChannelLayout::per_channel({8, 0, 5, 5}, 0), ChannelLayout::per_channel({4, 0, 2}, 1)};
}

// n = 0 with null pointers everywhere is accepted.
TEST(EmptyTensors, AcceptNullPointers) {
  const ChannelLayout empty = ChannelLayout::per_tensor(0);
  const Workspace none{};
  EmaRangeState state{};
  EXPECT_NO_THROW(ref::fake_quant_range(kNullX, kNullY, empty, nullptr, nullptr, RangeQuant{},
                                        nullptr));
  EXPECT_NO_THROW(ref::fake_quant_affine(kNullX, kNullY, empty, nullptr, nullptr, AffineQuant{},
                                         nullptr));
  EXPECT_NO_THROW(ref::ste_backward(kNullX, nullptr, MaskFormat::pass, 0, kNullY));
  EXPECT_NO_THROW(ref::ema_fake_quant(kNullX, kNullY, 0, &state, EmaConfig{}, nullptr));
  EXPECT_NO_THROW(ref::weight_range(nullptr, empty, true, nullptr, nullptr, none));
  EXPECT_NO_THROW(ref::fake_quant_weights(nullptr, nullptr, empty, RangeQuant{}, true, nullptr,
                                          nullptr, nullptr, none));
  EXPECT_NO_THROW(ref::lsq_forward(nullptr, nullptr, empty, nullptr, LsqQuant{}));
  EXPECT_NO_THROW(ref::lsq_backward(nullptr, nullptr, empty, nullptr, LsqQuant{}, nullptr,
                                    nullptr, none));
  EXPECT_NO_THROW(ref::lsq_init_scale(nullptr, empty, LsqQuant{}, nullptr, none));
  EXPECT_NO_THROW(ref::pack_codes(nullptr, 0, 4, nullptr));
  EXPECT_NO_THROW(ref::unpack_codes(nullptr, 0, 2, nullptr));
}

// Empty tensors (n = 0, or a zero dimension) write nothing: outputs and masks
// pre-filled with sentinels stay as they were.
TEST(EmptyTensors, TouchNothing) {
  for (const ChannelLayout& layout : empty_layouts()) {
    SCOPED_TRACE(::testing::Message() << "[" << layout.outer << ", " << layout.channels << ", "
                                      << layout.inner << "]");
    const auto channels = static_cast<std::size_t>(std::max<std::int64_t>(layout.channels, 1));
    const std::vector<float> x(4, 1.0f), dy(4, 1.0f), lo(channels, -1.0f), hi(channels, 1.0f);
    const std::vector<float> scale(channels, 0.5f);
    const std::vector<std::int32_t> zero_point(channels, 0);
    std::vector<float> y(4, kSentinel), out_lo(channels, kSentinel), out_hi(channels, kSentinel);
    std::vector<std::uint32_t> mask(4, kMaskSentinel);
    std::vector<float> scratch;
    const Workspace ws = lowbit::test::host_workspace(scratch, layout);
    const auto untouched = [&] {
      return y == std::vector<float>(4, kSentinel) &&
             out_lo == std::vector<float>(channels, kSentinel) &&
             out_hi == std::vector<float>(channels, kSentinel) &&
             mask == std::vector<std::uint32_t>(4, kMaskSentinel);
    };

    ref::fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), RangeQuant{},
                          mask.data(), MaskFormat::sides);
    EXPECT_TRUE(untouched()) << "fake_quant_range";
    ref::fake_quant_affine(x.data(), y.data(), layout, scale.data(), zero_point.data(),
                           AffineQuant{}, mask.data());
    EXPECT_TRUE(untouched()) << "fake_quant_affine";
    ref::weight_range(x.data(), layout, false, out_lo.data(), out_hi.data(), ws);
    EXPECT_TRUE(untouched()) << "weight_range";
    ref::fake_quant_weights(x.data(), y.data(), layout, RangeQuant{4, true}, true, out_lo.data(),
                            out_hi.data(), mask.data(), ws);
    EXPECT_TRUE(untouched()) << "fake_quant_weights";
    ref::lsq_forward(x.data(), y.data(), layout, scale.data(), LsqQuant::signed_bits(4));
    EXPECT_TRUE(untouched()) << "lsq_forward";
    ref::lsq_backward(dy.data(), x.data(), layout, scale.data(), LsqQuant::signed_bits(4),
                      y.data(), out_lo.data(), ws);
    EXPECT_TRUE(untouched()) << "lsq_backward";
    ref::lsq_init_scale(x.data(), layout, LsqQuant::signed_bits(4), out_lo.data(), ws);
    EXPECT_TRUE(untouched()) << "lsq_init_scale";
    ref::ste_backward(dy.data(), mask.data(), MaskFormat::pass, layout.size(), y.data());
    EXPECT_TRUE(untouched()) << "ste_backward";
  }
}

// The range gradients of an empty tensor are defined as zero (one per
// channel), while dx is left alone.
TEST(EmptyTensors, SteBackwardRangeWritesNothing) {
  for (const ChannelLayout& layout : empty_layouts()) {
    SCOPED_TRACE(::testing::Message() << "[" << layout.outer << ", " << layout.channels << ", "
                                      << layout.inner << "]");
    const auto channels = static_cast<std::size_t>(layout.channels);
    const std::vector<float> dy(4, 1.0f);
    const std::vector<std::uint32_t> mask(2, ~0u);
    std::vector<float> dx(4, kSentinel), d_min(channels + 1, kSentinel),
        d_max(channels + 1, kSentinel), scratch;
    ref::ste_backward_range(dy.data(), mask.data(), layout, dx.data(), d_min.data(), d_max.data(),
                            lowbit::test::host_workspace(scratch, layout));
    EXPECT_EQ(dx, std::vector<float>(4, kSentinel));
    EXPECT_EQ(d_min, std::vector<float>(channels + 1, kSentinel));
    EXPECT_EQ(d_max, std::vector<float>(channels + 1, kSentinel));
  }
}

// An empty batch leaves the EMA state exactly as it was (no step is counted)
// and writes no output or mask.
TEST(EmptyTensors, EmaStateUnchanged) {
  EmaRangeState state;
  ref::ema_state_init(&state);
  const std::vector<float> batch{-2.0f, 3.0f, 0.5f};
  std::vector<float> out(3);
  ref::ema_fake_quant(batch.data(), out.data(), 3, &state, EmaConfig{}, nullptr);
  const EmaRangeState before = state;
  std::vector<float> y(4, kSentinel);
  std::vector<std::uint32_t> mask(4, kMaskSentinel);
  for (EmaMode mode : {EmaMode::exact, EmaMode::lagged}) {
    EmaConfig config;
    config.mode = mode;
    ref::ema_fake_quant(batch.data(), y.data(), 0, &state, config, mask.data(), MaskFormat::sides);
  }
  EXPECT_TRUE(same_state(before, state));
  EXPECT_EQ(y, std::vector<float>(4, kSentinel));
  EXPECT_EQ(mask, std::vector<std::uint32_t>(4, kMaskSentinel));
}

// Packing zero codes writes no byte.
TEST(EmptyTensors, PackWritesNothing) {
  const std::vector<std::uint8_t> codes(4, 3);
  std::vector<std::uint8_t> packed(4, kByteSentinel), unpacked(4, kByteSentinel);
  for (int bits : {2, 4, 8}) {
    ref::pack_codes(codes.data(), 0, bits, packed.data());
    ref::unpack_codes(codes.data(), 0, bits, unpacked.data());
  }
  EXPECT_EQ(packed, std::vector<std::uint8_t>(4, kByteSentinel));
  EXPECT_EQ(unpacked, std::vector<std::uint8_t>(4, kByteSentinel));
}

// ---------------------------------------------------------------------------
// lowbit::cuda: the same host-side checks (no GPU needed)

// Bits outside 2..16 on the CUDA range-mode entry points.
TEST(CudaArguments, BitsOutsideTwoToSixteen) {
  Buffers b;
  for (int bits : {1, 17, 0, -3}) {
    SCOPED_TRACE(::testing::Message() << "bits " << bits);
    EXPECT_LOWBIT_ERROR("bits", gpu::fake_quant_range(b.x.data(), b.y.data(), b.layout,
                                                      b.min.data(), b.max.data(),
                                                      RangeQuant{bits, false}, b.mask.data(),
                                                      MaskFormat::pass, nullptr));
    EmaConfig config;
    config.quant.bits = bits;
    EXPECT_LOWBIT_ERROR(
        "bits", gpu::ema_fake_quant(b.x.data(), b.y.data(), kN, &b.state, config, b.mask.data(),
                                    MaskFormat::pass, nullptr, nullptr));
    EXPECT_LOWBIT_ERROR("bits", gpu::fake_quant_weights(b.x.data(), b.y.data(), b.layout,
                                                        RangeQuant{bits, true}, true,
                                                        b.out_min.data(), b.out_max.data(),
                                                        b.mask.data(), b.workspace, nullptr));
  }
}

// Affine grids spanning fewer than 2 or more than 16 bits, or qmin >= qmax.
TEST(CudaArguments, AffineGridSpan) {
  Buffers b;
  for (AffineQuant quant : {AffineQuant{0, 1}, AffineQuant{0, 65536}}) {
    EXPECT_LOWBIT_ERROR(
        "2..16 bits",
        gpu::fake_quant_affine(b.x.data(), b.y.data(), b.layout, b.scale.data(),
                               b.zero_point.data(), quant, b.mask.data(), nullptr, nullptr))
        << "[" << quant.qmin << ", " << quant.qmax << "]";
  }
  for (AffineQuant quant : {AffineQuant{5, 5}, AffineQuant{7, 3}}) {
    EXPECT_LOWBIT_ERROR(
        "qmin", gpu::fake_quant_affine(b.x.data(), b.y.data(), b.layout, b.scale.data(),
                                       b.zero_point.data(), quant, b.mask.data(), nullptr, nullptr))
        << "[" << quant.qmin << ", " << quant.qmax << "]";
  }
}

// LSQ grids without 0, EMA configs out of range and bad pack widths.
TEST(CudaArguments, QuantizerParameters) {
  Buffers b;
  const LsqQuant no_zero{1, 15};
  EXPECT_LOWBIT_ERROR("contain 0", gpu::lsq_forward(b.x.data(), b.y.data(), b.layout,
                                                    b.scale.data(), no_zero, nullptr, nullptr));
  EXPECT_LOWBIT_ERROR("contain 0",
                      gpu::lsq_backward(b.dy.data(), b.x.data(), b.layout, b.scale.data(),
                                        no_zero, b.dx.data(), b.out_scale.data(), b.workspace,
                                        nullptr));
  EXPECT_LOWBIT_ERROR("contain 0", gpu::lsq_init_scale(b.x.data(), b.layout, no_zero,
                                                       b.out_scale.data(), b.workspace, nullptr));
  for (float decay : {-0.1f, 1.0f, kNaN}) {
    EmaConfig config;
    config.decay = decay;
    EXPECT_LOWBIT_ERROR("decay", gpu::ema_fake_quant(b.x.data(), b.y.data(), kN, &b.state, config,
                                                     nullptr, MaskFormat::pass, nullptr, nullptr))
        << "decay " << decay;
  }
  EmaConfig delayed;
  delayed.quant_delay = -5;
  EXPECT_LOWBIT_ERROR("quant_delay",
                      gpu::ema_fake_quant(b.x.data(), b.y.data(), kN, &b.state, delayed, nullptr,
                                          MaskFormat::pass, nullptr, nullptr));
  for (int bits : {1, 3, 16}) {
    EXPECT_LOWBIT_ERROR("2, 4 or 8", gpu::pack_codes(b.codes.data(), kN, bits, b.packed.data(),
                                                     nullptr));
    EXPECT_LOWBIT_ERROR("2, 4 or 8", gpu::unpack_codes(b.packed.data(), kN, bits, b.codes.data(),
                                                       nullptr));
  }
}

// Bad layouts and null pointers with n > 0.
TEST(CudaArguments, LayoutsAndNullPointers) {
  Buffers b;
  const auto& L = b.layout;
  const RangeQuant rq{};
  const AffineQuant aq{};
  const LsqQuant lq = LsqQuant::signed_bits(4);
  const ChannelLayout bad{1, -2, 4};
  EXPECT_LOWBIT_ERROR("negative", gpu::fake_quant_range(b.x.data(), b.y.data(), bad, b.min.data(),
                                                        b.max.data(), rq, nullptr,
                                                        MaskFormat::pass, nullptr));
  EXPECT_LOWBIT_ERROR("negative", gpu::lsq_forward(b.x.data(), b.y.data(), bad, b.scale.data(), lq,
                                                   nullptr, nullptr));
  EXPECT_LOWBIT_ERROR("x is null", gpu::fake_quant_range(nullptr, b.y.data(), L, b.min.data(),
                                                         b.max.data(), rq, nullptr,
                                                         MaskFormat::pass, nullptr));
  EXPECT_LOWBIT_ERROR("min is null", gpu::fake_quant_range(b.x.data(), b.y.data(), L, nullptr,
                                                           b.max.data(), rq, nullptr,
                                                           MaskFormat::pass, nullptr));
  EXPECT_LOWBIT_ERROR("zero_point is null",
                      gpu::fake_quant_affine(b.x.data(), b.y.data(), L, b.scale.data(), nullptr, aq,
                                             nullptr, nullptr, nullptr));
  EXPECT_LOWBIT_ERROR("mask is null", gpu::ste_backward(b.dy.data(), nullptr, MaskFormat::pass,
                                                        kN, b.dx.data(), nullptr));
  EXPECT_LOWBIT_ERROR("d_max is null",
                      gpu::ste_backward_range(b.dy.data(), b.mask.data(), L, b.dx.data(),
                                              b.out_min.data(), nullptr, b.workspace, nullptr));
  EXPECT_LOWBIT_ERROR("state is null",
                      gpu::ema_fake_quant(b.x.data(), b.y.data(), kN, nullptr, EmaConfig{}, nullptr,
                                          MaskFormat::pass, nullptr, nullptr));
  EXPECT_LOWBIT_ERROR("state is null", gpu::ema_state_init(nullptr, nullptr));
  EXPECT_LOWBIT_ERROR("w is null", gpu::weight_range(nullptr, L, true, b.out_min.data(),
                                                     b.out_max.data(), b.workspace, nullptr));
  EXPECT_LOWBIT_ERROR("scale is null",
                      gpu::lsq_forward(b.x.data(), b.y.data(), L, nullptr, lq, nullptr, nullptr));
  EXPECT_LOWBIT_ERROR("d_scale is null",
                      gpu::lsq_backward(b.dy.data(), b.x.data(), L, b.scale.data(), lq,
                                        b.dx.data(), nullptr, b.workspace, nullptr));
  EXPECT_LOWBIT_ERROR("scale is null",
                      gpu::lsq_init_scale(b.x.data(), L, lq, nullptr, b.workspace, nullptr));
  EXPECT_LOWBIT_ERROR("codes is null", gpu::pack_codes(nullptr, kN, 4, b.packed.data(), nullptr));
  EXPECT_LOWBIT_ERROR("negative", gpu::ste_backward(b.dy.data(), b.mask.data(), MaskFormat::pass,
                                                    -1, b.dx.data(), nullptr));
}

// Workspaces smaller than reduction_workspace_bytes, or null.
TEST(CudaArguments, WorkspaceTooSmall) {
  Buffers b;
  const auto& L = b.layout;
  const LsqQuant lq = LsqQuant::signed_bits(4);
  for (Workspace ws : {Workspace{b.workspace.data, lowbit::reduction_workspace_bytes(L) - 1},
                       Workspace{nullptr, b.workspace.bytes}}) {
    SCOPED_TRACE(::testing::Message() << "workspace of " << ws.bytes << " bytes");
    EXPECT_LOWBIT_ERROR("workspace",
                        gpu::ste_backward_range(b.dy.data(), b.mask.data(), L, b.dx.data(),
                                                b.out_min.data(), b.out_max.data(), ws, nullptr));
    EXPECT_LOWBIT_ERROR("workspace", gpu::weight_range(b.x.data(), L, true, b.out_min.data(),
                                                       b.out_max.data(), ws, nullptr));
    EXPECT_LOWBIT_ERROR("workspace",
                        gpu::fake_quant_weights(b.x.data(), b.y.data(), L, RangeQuant{4, true},
                                                true, b.out_min.data(), b.out_max.data(), nullptr,
                                                ws, nullptr));
    EXPECT_LOWBIT_ERROR("workspace", gpu::lsq_backward(b.dy.data(), b.x.data(), L, b.scale.data(),
                                                       lq, b.dx.data(), b.out_scale.data(), ws,
                                                       nullptr));
    EXPECT_LOWBIT_ERROR("workspace",
                        gpu::lsq_init_scale(b.x.data(), L, lq, b.out_scale.data(), ws, nullptr));
  }
}

// Empty tensors return before any CUDA call (so this passes without a GPU).
TEST(CudaArguments, EmptyTensorsLaunchNothing) {
  for (const ChannelLayout& layout : empty_layouts()) {
    SCOPED_TRACE(::testing::Message() << "[" << layout.outer << ", " << layout.channels << ", "
                                      << layout.inner << "]");
    const Workspace none{};
    EXPECT_NO_THROW(gpu::fake_quant_range(kNullX, kNullY, layout, nullptr, nullptr,
                                          RangeQuant{}, nullptr, MaskFormat::sides, nullptr));
    EXPECT_NO_THROW(gpu::fake_quant_affine(kNullX, kNullY, layout, nullptr, nullptr,
                                           AffineQuant{}, nullptr, nullptr, nullptr));
    EXPECT_NO_THROW(gpu::weight_range(nullptr, layout, true, nullptr, nullptr, none, nullptr));
    EXPECT_NO_THROW(gpu::fake_quant_weights(nullptr, nullptr, layout, RangeQuant{}, true, nullptr,
                                            nullptr, nullptr, none, nullptr));
    EXPECT_NO_THROW(
        gpu::lsq_forward(nullptr, nullptr, layout, nullptr, LsqQuant{}, nullptr, nullptr));
    EXPECT_NO_THROW(gpu::lsq_backward(nullptr, nullptr, layout, nullptr, LsqQuant{}, nullptr,
                                      nullptr, none, nullptr));
    EXPECT_NO_THROW(gpu::lsq_init_scale(nullptr, layout, LsqQuant{}, nullptr, none, nullptr));
  }
  EmaRangeState state{};
  EXPECT_NO_THROW(gpu::ema_fake_quant(kNullX, kNullY, 0, &state, EmaConfig{}, nullptr,
                                      MaskFormat::pass, nullptr, nullptr));
  EXPECT_TRUE(same_state(EmaRangeState{}, state));
  EXPECT_NO_THROW(gpu::ste_backward(kNullX, nullptr, MaskFormat::pass, 0, kNullY, nullptr));
  EXPECT_NO_THROW(gpu::ste_backward_range(kNullX, nullptr, ChannelLayout::per_channel({4, 0, 2}, 1),
                                          nullptr, nullptr, nullptr, Workspace{}, nullptr));
  EXPECT_NO_THROW(gpu::pack_codes(nullptr, 0, 4, nullptr, nullptr));
  EXPECT_NO_THROW(gpu::unpack_codes(nullptr, 0, 2, nullptr, nullptr));
}

}  // namespace
