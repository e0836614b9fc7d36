// bias_relu_ema_fake_quant, the activation after a Conv2d/Linear in one op:
// it must equal, bit for bit (y, mask and the EmaRangeState bytes), the
// composition that defines it: bias_activation with ReLU into v, then
// ema_fake_quant of v, then mask &= (v > 0). The CPU reference is checked
// against that composition, and lowbit::cuda against the reference (the Gpu
// suites skip without a device). Its backward folds the mask into the bias
// gradient's pass, which must equal ste_backward and then the bias gradient.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "both_sides.hpp"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "lowbit/ref.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

using test::DeviceBuffer;
using test::random_values;
using test::same_bits;
using test::throws_mentioning;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

/// y and mask of one call.
struct Activation {
  std::vector<float> y;
  std::vector<std::uint32_t> mask;
};

/// The definition of the op: three reference ops and a mask AND, v stored.
Activation composed(const std::vector<float>& x, const float* bias, const ChannelLayout& layout,
                    EmaRangeState& state, const EmaConfig& config) {
  const std::int64_t n = layout.size();
  std::vector<float> v(x.size());
  ref::bias_activation(x.data(), bias, layout, true, v.data());
  Activation out{std::vector<float>(x.size()), std::vector<std::uint32_t>(mask_words(n))};
  ref::ema_fake_quant(v.data(), out.y.data(), n, &state, config, out.mask.data(),
                      MaskFormat::pass);
  for (std::int64_t i = 0; i < n; ++i)
    if (!(v[i] > 0.0f)) out.mask[i / 32] &= ~(1u << (i % 32));
  return out;
}

/// The fused reference op, with y and mask pre-filled so that unwritten
/// elements show.
Activation fused(const std::vector<float>& x, const float* bias, const ChannelLayout& layout,
                 EmaRangeState& state, const EmaConfig& config) {
  Activation out{std::vector<float>(x.size(), -7.0f),
                 std::vector<std::uint32_t>(mask_words(layout.size()), 0xA5A5A5A5u)};
  ref::bias_relu_ema_fake_quant(x.data(), bias, layout, out.y.data(), &state, config,
                                out.mask.data());
  return out;
}

bool mask_bit(const std::vector<std::uint32_t>& mask, std::size_t i) {
  return (mask[i / 32] >> (i % 32)) & 1u;
}

::testing::AssertionResult same_state(const EmaRangeState& expected, const EmaRangeState& got) {
  if (std::memcmp(&expected, &got, sizeof expected) == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "state differs: min " << got.min << " vs " << expected.min << ", max " << got.max
         << " vs " << expected.max << ", steps " << got.steps << " vs " << expected.steps
         << ", updates " << got.updates << " vs " << expected.updates << ", skipped "
         << got.skipped << " vs " << expected.skipped;
}

std::string describe(const ChannelLayout& layout) {
  return "{" + std::to_string(layout.outer) + ", " + std::to_string(layout.channels) + ", " +
         std::to_string(layout.inner) + "}";
}

EmaConfig test_config(EmaMode mode, int bits) {
  EmaConfig config;
  config.quant = {bits, false};
  config.mode = mode;
  config.decay = 0.9f;
  config.quant_delay = 2;
  return config;
}

/// Conv-like {B, K, H·W}, linear-like {B, O, 1}, one channel, odd sizes.
const std::vector<ChannelLayout> kLayouts = {{3, 5, 49}, {17, 11, 1}, {2, 1, 333}, {1, 7, 5}};

// ---------------------------------------------------------------------------
// CPU reference

// Several steps in both modes: identity phase (quant_delay 2), quantizing
// steps with growing inputs (so the EMA range clips), and a NaN batch that is
// skipped and counted.
TEST(FusedActivation, EqualsCompositionOverSteps) {
  for (EmaMode mode : {EmaMode::exact, EmaMode::lagged}) {
    for (const ChannelLayout& layout : kLayouts) {
      SCOPED_TRACE(::testing::Message() << "mode " << static_cast<int>(mode) << " layout "
                                        << describe(layout));
      const std::int64_t n = layout.size();
      const auto bias = random_values(layout.channels, 11, 1.0f);
      const EmaConfig config = test_config(mode, 4);
      EmaRangeState want_state, got_state;
      ref::ema_state_init(&want_state);
      ref::ema_state_init(&got_state);
      std::int64_t relu_only_zeros = 0, ste_only_zeros = 0, quantized = 0;
      for (int step = 0; step < 7; ++step) {
        SCOPED_TRACE(::testing::Message() << "step " << step);
        auto x = random_values(n, 100 + step, 0.5f + 0.75f * step);
        if (step == 4) x[n / 2] = kNaN;
        const Activation want = composed(x, bias.data(), layout, want_state, config);
        const Activation got = fused(x, bias.data(), layout, got_state, config);
        ASSERT_TRUE(same_bits(want.y, got.y));
        ASSERT_TRUE(same_bits(want.mask, got.mask));
        ASSERT_TRUE(same_state(want_state, got_state));
        for (std::int64_t i = 0; i < n; ++i) {
          const float v = relu(x[i] + bias[test::channel_of(layout, i)]);
          if (step < config.quant_delay) {
            // Identity phase: y = v, and the mask is the ReLU's alone.
            ASSERT_EQ(test::bits_of(got.y[i]), test::bits_of(v)) << i;
            ASSERT_EQ(mask_bit(got.mask, i), v > 0.0f) << i;
          }
          if (test::bits_of(got.y[i]) != test::bits_of(v)) ++quantized;
          if (!(v > 0.0f)) ++relu_only_zeros;
          if (v > 0.0f && !mask_bit(got.mask, i)) ++ste_only_zeros;
        }
        if (step == 4) {
          EXPECT_TRUE(std::isnan(got.y[n / 2]));
          EXPECT_FALSE(mask_bit(got.mask, n / 2));
        }
      }
      EXPECT_EQ(got_state.skipped, 1u);
      EXPECT_EQ(got_state.steps, 7);
      EXPECT_EQ(got_state.updates, 6);
      // Both backward steps mattered, and the op did quantize.
      EXPECT_GT(relu_only_zeros, 0);
      EXPECT_GT(ste_only_zeros, 0);
      EXPECT_GT(quantized, 0);
    }
  }
}

// No bias: v = relu(x), on a conv layout (the channels then play no part).
TEST(FusedActivation, NullBiasIsReluOnly) {
  for (EmaMode mode : {EmaMode::exact, EmaMode::lagged}) {
    const ChannelLayout layout{4, 3, 25};
    const EmaConfig config = test_config(mode, 8);
    EmaRangeState want_state, got_state;
    ref::ema_state_init(&want_state);
    ref::ema_state_init(&got_state);
    for (int step = 0; step < 4; ++step) {
      const auto x = random_values(layout.size(), 200 + step);
      const Activation want = composed(x, nullptr, layout, want_state, config);
      const Activation got = fused(x, nullptr, layout, got_state, config);
      ASSERT_TRUE(same_bits(want.y, got.y)) << "step " << step;
      ASSERT_TRUE(same_bits(want.mask, got.mask)) << "step " << step;
      ASSERT_TRUE(same_state(want_state, got_state)) << "step " << step;
    }
  }
}

// A null mask changes nothing else; y may be x itself.
TEST(FusedActivation, NullMaskAndInPlace) {
  for (EmaMode mode : {EmaMode::exact, EmaMode::lagged}) {
    const ChannelLayout layout{6, 4, 9};
    const auto bias = random_values(layout.channels, 12, 1.0f);
    const EmaConfig config = test_config(mode, 2);
    EmaRangeState want_state, no_mask_state, in_place_state;
    ref::ema_state_init(&want_state);
    ref::ema_state_init(&no_mask_state);
    ref::ema_state_init(&in_place_state);
    for (int step = 0; step < 5; ++step) {
      SCOPED_TRACE(::testing::Message() << "mode " << static_cast<int>(mode) << " step " << step);
      const auto x = random_values(layout.size(), 300 + step, 1.0f + step);
      const Activation want = fused(x, bias.data(), layout, want_state, config);

      std::vector<float> y(x.size());
      ref::bias_relu_ema_fake_quant(x.data(), bias.data(), layout, y.data(), &no_mask_state,
                                    config, nullptr);
      ASSERT_TRUE(same_bits(want.y, y));
      ASSERT_TRUE(same_state(want_state, no_mask_state));

      std::vector<float> inout = x;
      std::vector<std::uint32_t> mask(want.mask.size());
      ref::bias_relu_ema_fake_quant(inout.data(), bias.data(), layout, inout.data(),
                                    &in_place_state, config, mask.data());
      ASSERT_TRUE(same_bits(want.y, inout));
      ASSERT_TRUE(same_bits(want.mask, mask));
      ASSERT_TRUE(same_state(want_state, in_place_state));
    }
  }
}

// The combined mask is the whole backward: ste_backward(dy, mask) equals the
// ReLU backward of the STE backward, and the per-channel sums of that dx are
// the bias gradient.
TEST(FusedActivation, CombinedMaskGivesInputAndBiasGradients) {
  for (EmaMode mode : {EmaMode::exact, EmaMode::lagged}) {
    for (const ChannelLayout& layout : kLayouts) {
      SCOPED_TRACE(::testing::Message() << "mode " << static_cast<int>(mode) << " layout "
                                        << describe(layout));
      const std::int64_t n = layout.size();
      const auto bias = random_values(layout.channels, 13, 1.0f);
      EmaConfig config = test_config(mode, 4);
      config.quant_delay = 1;
      EmaRangeState state;
      ref::ema_state_init(&state);
      std::vector<float> storage;
      const Workspace workspace = test::host_workspace(storage, layout);
      for (int step = 0; step < 4; ++step) {
        SCOPED_TRACE(::testing::Message() << "step " << step);
        const auto x = random_values(n, 400 + step, 0.5f + step);
        const auto dy = random_values(n, 500 + step, 1.0f);
        std::vector<float> v(n), y(n), dv(n), want_dx(n), want_db(layout.channels);
        std::vector<std::uint32_t> ste_mask(mask_words(n)), mask(mask_words(n));
        ref::bias_activation(x.data(), bias.data(), layout, true, v.data());
        EmaRangeState composed_state = state;
        ref::ema_fake_quant(v.data(), y.data(), n, &composed_state, config, ste_mask.data(),
                            MaskFormat::pass);
        ref::ste_backward(dy.data(), ste_mask.data(), MaskFormat::pass, n, dv.data());
        ref::bias_activation_backward(dv.data(), v.data(), layout, true, nullptr, want_dx.data(),
                                      want_db.data(), workspace);

        ref::bias_relu_ema_fake_quant(x.data(), bias.data(), layout, y.data(), &state, config,
                                      mask.data());
        std::vector<float> dx(n), dx_again(n), db(layout.channels);
        ref::ste_backward(dy.data(), mask.data(), MaskFormat::pass, n, dx.data());
        ASSERT_TRUE(same_bits(want_dx, dx));
        // Per-channel sum of dx (the identity activation's backward).
        ref::bias_activation_backward(dx.data(), y.data(), layout, false, nullptr,
                                      dx_again.data(), db.data(), workspace);
        ASSERT_TRUE(same_bits(want_db, db));
        // Both in one pass, as WeightedLayer does: the mask folded in.
        ref::bias_activation_backward(dy.data(), nullptr, layout, false, mask.data(),
                                      dx_again.data(), db.data(), workspace);
        ASSERT_TRUE(same_bits(want_dx, dx_again));
        ASSERT_TRUE(same_bits(want_db, db));
      }
    }
  }
}

// In the identity phase y = relu(x + b); a hand-checked case.
TEST(FusedActivation, IdentityPhaseByHand) {
  const ChannelLayout layout{1, 2, 3};
  const std::vector<float> x = {-1.0f, 0.25f, 2.0f, -0.5f, 0.5f, kNaN};
  const std::vector<float> bias = {0.5f, -0.5f};
  EmaConfig config;
  config.quant_delay = 1;
  EmaRangeState state;
  ref::ema_state_init(&state);
  std::vector<float> y(6);
  std::vector<std::uint32_t> mask(1);
  ref::bias_relu_ema_fake_quant(x.data(), bias.data(), layout, y.data(), &state, config,
                                mask.data());
  EXPECT_TRUE(same_bits({0.0f, 0.75f, 2.5f, 0.0f, 0.0f, kNaN}, y));
  EXPECT_EQ(mask[0], 0b000110u);
  EXPECT_EQ(state.skipped, 1u);  // the NaN makes the batch non-finite
  EXPECT_EQ(state.steps, 1);
}

TEST(FusedActivation, EmptyTensorDoesNothing) {
  EmaRangeState state;
  ref::ema_state_init(&state);
  const EmaRangeState before = state;
  for (const ChannelLayout& layout : {ChannelLayout{0, 3, 5}, ChannelLayout{4, 3, 0},
                                      ChannelLayout{4, 0, 5}}) {
    ref::bias_relu_ema_fake_quant(nullptr, nullptr, layout, nullptr, &state, EmaConfig{},
                                  nullptr);
    EXPECT_TRUE(same_state(before, state));
    // The CUDA op returns before touching any pointer.
    cuda::bias_relu_ema_fake_quant(nullptr, nullptr, layout, nullptr, &state, EmaConfig{}, nullptr,
                                   nullptr, nullptr);
    EXPECT_TRUE(same_state(before, state));
  }
}


// Both namespaces reject the same arguments before writing anything (the
// CUDA checks run on the host, so host pointers stand in here).
TEST(FusedActivation, ArgumentErrors) {
  const ChannelLayout layout{2, 3, 4};
  const std::vector<float> x(24, 1.0f), bias(3, 0.5f);
  std::vector<float> y(24, -3.0f);
  std::vector<std::uint32_t> mask(1, 0xDEADBEEFu);
  EmaRangeState state;
  ref::ema_state_init(&state);
  const EmaRangeState before = state;
  EmaConfig bad_bits, bad_decay, bad_delay, bad_freeze;
  bad_bits.quant.bits = 17;
  bad_decay.decay = 1.0f;
  bad_delay.quant_delay = -1;
  bad_freeze.freeze_step = -1;
  struct Case {
    const float* x;
    ChannelLayout layout;
    float* y;
    EmaRangeState* state;
    EmaConfig config;
    const char* needle;
  };
  const std::vector<Case> cases = {
      {nullptr, layout, y.data(), &state, EmaConfig{}, "x is null"},
      {x.data(), layout, nullptr, &state, EmaConfig{}, "y is null"},
      {x.data(), layout, y.data(), nullptr, EmaConfig{}, "state is null"},
      {x.data(), ChannelLayout{2, -3, 4}, y.data(), &state, EmaConfig{}, "negative size"},
      {x.data(), layout, y.data(), &state, bad_bits, "bits must be in 2..16"},
      {x.data(), layout, y.data(), &state, bad_decay, "decay"},
      {x.data(), layout, y.data(), &state, bad_delay, "quant_delay"},
      {x.data(), layout, y.data(), &state, bad_freeze, "freeze_step"},
  };
  for (const Case& c : cases) {
    EXPECT_TRUE(throws_mentioning(
        [&] {
          ref::bias_relu_ema_fake_quant(c.x, bias.data(), c.layout, c.y, c.state, c.config,
                                        mask.data());
        },
        c.needle));
    EXPECT_TRUE(throws_mentioning(
        [&] {
          cuda::bias_relu_ema_fake_quant(c.x, bias.data(), c.layout, c.y, c.state, c.config,
                                         mask.data(), nullptr, nullptr);
        },
        c.needle));
  }
  EXPECT_EQ(y, std::vector<float>(24, -3.0f));
  EXPECT_EQ(mask[0], 0xDEADBEEFu);
  EXPECT_TRUE(same_state(before, state));
}

// ---------------------------------------------------------------------------
// The backward, with the mask folded into the bias gradient, on both sides

template <class Api>
class FusedActivationBackward : public test::BothSides<Api> {};
TYPED_TEST_SUITE(FusedActivationBackward, test::Sides, test::SideNames);

// WeightedLayer's backward: bias_activation_backward with the pass mask is,
// bit for bit, ste_backward(dy, mask) and then bias_activation_backward
// without it: dx (also in place, and without d_bias) and d_bias, with and
// without the ReLU's test on y, for dy with -0, ±Inf and NaN (blocked: dy·0).
TYPED_TEST(FusedActivationBackward, PassMaskEqualsSteBackwardThenBiasGradient) {
  TypeParam api;
  const std::vector<ChannelLayout> layouts = {{3, 5, 49},   {17, 11, 1},  {2049, 3, 1},
                                              {45, 7, 100}, {3, 2, 2049}, {1, 1, 1000}};
  std::uint32_t seed = 600;
  for (const ChannelLayout& layout : layouts) {
    const std::int64_t n = layout.size();
    auto dy = random_values(n, seed++, 1.0f);
    const std::size_t k = dy.size() / 5;
    dy[k] = -0.0f;
    dy[2 * k + 1] = std::numeric_limits<float>::infinity();
    dy[3 * k + 2] = -std::numeric_limits<float>::infinity();
    dy[4 * k + 3] = kNaN;
    const auto y = random_values(n, seed++);
    std::mt19937 rng(seed++);
    std::vector<std::uint32_t> mask(mask_words(n));
    for (std::uint32_t& word : mask) word = static_cast<std::uint32_t>(rng());
    const auto d_dy = api.upload(dy);
    const auto d_y = api.upload(y);
    const auto d_mask = api.upload(mask);
    auto ws = test::workspace_buffer(api, layout);
    for (bool relu : {false, true}) {
      SCOPED_TRACE(::testing::Message() << TypeParam::kName << " layout " << describe(layout)
                                        << " relu " << relu);
      auto want_dx = api.upload(std::vector<float>(n));
      auto want_db = api.upload(std::vector<float>(layout.channels));
      api.ste_backward(d_dy.data(), d_mask.data(), MaskFormat::pass, n, want_dx.data());
      api.bias_activation_backward(want_dx.data(), d_y.data(), layout, relu, nullptr,
                                   want_dx.data(), want_db.data(), test::as_workspace(ws));

      auto dx = api.upload(std::vector<float>(n, -7.0f));
      auto db = api.upload(std::vector<float>(layout.channels, -7.0f));
      api.bias_activation_backward(d_dy.data(), d_y.data(), layout, relu, d_mask.data(),
                                   dx.data(), db.data(), test::as_workspace(ws));
      ASSERT_TRUE(same_bits(api.download(want_dx), api.download(dx)));
      ASSERT_TRUE(same_bits(api.download(want_db), api.download(db)));

      auto in_place = api.upload(dy);
      api.bias_activation_backward(in_place.data(), d_y.data(), layout, relu, d_mask.data(),
                                   in_place.data(), db.data(), test::as_workspace(ws));
      ASSERT_TRUE(same_bits(api.download(want_dx), api.download(in_place)));
      ASSERT_TRUE(same_bits(api.download(want_db), api.download(db)));

      auto no_bias = api.upload(std::vector<float>(n, -7.0f));
      api.bias_activation_backward(d_dy.data(), d_y.data(), layout, relu, d_mask.data(),
                                   no_bias.data(), static_cast<float*>(nullptr), Workspace{});
      ASSERT_TRUE(same_bits(api.download(want_dx), api.download(no_bias)));
    }
  }
}

// ---------------------------------------------------------------------------
// CUDA against the reference

/// NaN has one bit pattern on the host and may have another on the device
/// (x + bias of a NaN gives the device's canonical NaN); every other value
/// must match bit for bit.
std::vector<float> canonical_nans(std::vector<float> values) {
  for (float& v : values)
    if (v != v) v = kNaN;
  return values;
}

/// Device memory at a float offset, so pointers are misaligned.
struct OffsetBuffer {
  DeviceBuffer<float> storage;
  float* data;
  OffsetBuffer(const std::vector<float>& host, int offset) : storage(host.size() + 4) {
    std::vector<float> padded(host.size() + 4, -9.0f);
    std::copy(host.begin(), host.end(), padded.begin() + offset);
    storage.upload(padded);
    data = storage.data() + offset;
  }
  std::vector<float> download(std::size_t n) const {
    std::vector<float> host(n);
    if (n > 0)
      LOWBIT_CUDA_TRY(cudaMemcpy(host.data(), data, n * sizeof(float), cudaMemcpyDeviceToHost));
    return host;
  }
};

/// Seeded conv-like and linear-like layouts of odd sizes, one channel, a
/// LeNet conv1 output and a large per-tensor one.
std::vector<ChannelLayout> gpu_layouts(std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<ChannelLayout> layouts;
  for (int i = 0; i < 4; ++i) {
    const std::int64_t batch = 1 + rng() % 70;
    const std::int64_t side = 1 + rng() % 28;
    layouts.push_back({batch, 1 + static_cast<std::int64_t>(rng() % 16), side * side});
    layouts.push_back({batch, 1 + static_cast<std::int64_t>(rng() % 130), 1});
  }
  layouts.push_back({5, 1, 777});
  layouts.push_back({64, 6, 28 * 28});
  layouts.push_back({1, 1, (1 << 20) + 3});
  return layouts;
}

/// Runs `steps` calls on both sides from fresh states and compares y, the
/// mask, the state bytes and the clip counts after each; x (and y, unless in place) at
/// misaligned offsets, a NaN in step 2.
void expect_gpu_equals_reference(const ChannelLayout& layout, bool with_bias, bool in_place,
                                 bool with_mask, const EmaConfig& config, std::uint32_t seed,
                                 int steps) {
  const std::int64_t n = layout.size();
  const auto bias = random_values(layout.channels, seed, 1.0f);
  DeviceBuffer<float> dbias(bias);
  const float* host_bias = with_bias ? bias.data() : nullptr;
  const float* device_bias = with_bias ? dbias.data() : nullptr;
  EmaRangeState state;
  ref::ema_state_init(&state);
  DeviceBuffer<EmaRangeState> dstate(1);
  cuda::ema_state_init(dstate.data(), nullptr);
  ClipCount counts;
  DeviceBuffer<ClipCount> dcounts(std::vector<ClipCount>(1));
  for (int step = 0; step < steps; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    auto x = random_values(n, seed + 1 + step, 0.5f + 0.75f * step);
    if (step == 2) x[static_cast<std::size_t>(n) / 3] = kNaN;
    std::vector<float> y(n);
    std::vector<std::uint32_t> mask(mask_words(n));
    ref::bias_relu_ema_fake_quant(x.data(), host_bias, layout, y.data(), &state, config,
                                  with_mask ? mask.data() : nullptr, &counts);

    OffsetBuffer dx(x, (step + 1) % 4);
    OffsetBuffer dy(std::vector<float>(n, -5.0f), step % 4);
    float* out = in_place ? dx.data : dy.data;
    DeviceBuffer<std::uint32_t> dmask(mask.size());
    if (!mask.empty())
      LOWBIT_CUDA_TRY(cudaMemset(dmask.data(), 0xA5, mask.size() * sizeof(std::uint32_t)));
    cuda::bias_relu_ema_fake_quant(dx.data, device_bias, layout, out, dstate.data(), config,
                                   with_mask ? dmask.data() : nullptr, dcounts.data(), nullptr);
    const auto got = in_place ? dx.download(n) : dy.download(n);
    ASSERT_TRUE(same_bits(canonical_nans(y), canonical_nans(got)));
    if (with_mask) {
      ASSERT_TRUE(same_bits(mask, dmask.download()));
    }
    ASSERT_TRUE(same_state(state, dstate.download()[0]));
    const ClipCount got_counts = dcounts.download()[0];
    ASSERT_EQ(got_counts.quantized, counts.quantized);
    ASSERT_EQ(got_counts.clipped, counts.clipped);
  }
}

TEST(GpuFusedActivation, MatchesReferenceOnRandomLayouts) {
  LOWBIT_REQUIRE_GPU();
  std::uint32_t seed = 1000;
  for (EmaMode mode : {EmaMode::exact, EmaMode::lagged}) {
    for (const ChannelLayout& layout : gpu_layouts(static_cast<std::uint32_t>(mode) + 7)) {
      for (bool with_bias : {true, false}) {
        SCOPED_TRACE(::testing::Message() << "mode " << static_cast<int>(mode) << " layout "
                                          << describe(layout) << " bias " << with_bias);
        expect_gpu_equals_reference(layout, with_bias, false, true,
                                    test_config(mode, 2 + static_cast<int>(seed % 15)), seed, 5);
        seed += 10;
      }
    }
  }
}

TEST(GpuFusedActivation, InPlaceAndWithoutMask) {
  LOWBIT_REQUIRE_GPU();
  for (EmaMode mode : {EmaMode::exact, EmaMode::lagged}) {
    SCOPED_TRACE(::testing::Message() << "mode " << static_cast<int>(mode));
    const ChannelLayout layout{33, 16, 10 * 10};
    expect_gpu_equals_reference(layout, true, true, true, test_config(mode, 4), 2000, 4);
    expect_gpu_equals_reference(layout, true, false, false, test_config(mode, 8), 3000, 4);
  }
}

// The freeze step and a longer run (EMA decay 0.999, TensorFlow's default).
TEST(GpuFusedActivation, FrozenRangeAndDefaultDecay) {
  LOWBIT_REQUIRE_GPU();
  for (EmaMode mode : {EmaMode::exact, EmaMode::lagged}) {
    SCOPED_TRACE(::testing::Message() << "mode " << static_cast<int>(mode));
    EmaConfig config;
    config.mode = mode;
    config.quant = {3, true};
    config.quant_delay = 1;
    config.freeze_step = 6;
    expect_gpu_equals_reference({128, 120, 1}, true, false, true, config, 4000, 9);
  }
}

}  // namespace
}  // namespace lowbit
