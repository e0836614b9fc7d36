// bf16 and fp16 tensors: the conversions of element.hpp against PyTorch's
// (tests/data/half_golden.json) and by exhaustive checks, lowbit::ref's
// bf16/fp16 ops against the float op on the widened tensor rounded once, and
// lowbit::cpu's against lowbit::ref at every instruction set level and
// thread count. (The CUDA ops: test_gpu_half.cpp.)
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "backends/cpu_quant.hpp"
#include "backends/cpu_reductions.hpp"
#include "cpu_isa_scope.hpp"
#include "golden.hpp"
#include "half_cases.hpp"
#include "lowbit/element.hpp"
#include "lowbit/ref.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

using test::element_bits;
using test::half_values;
using test::ranges_for;
using test::narrow;
using test::same_bits;
using test::same_elements;
using test::widen;
using Words = std::vector<std::uint32_t>;

float from_bits(std::uint32_t u) { return test::float_from_bits(u); }

static_assert(sizeof(bf16) == 2 && sizeof(fp16) == 2);
static_assert(std::is_trivially_copyable_v<bf16> && std::is_trivially_copyable_v<fp16>);

// ---------------------------------------------------------------------------
// Conversions

TEST(HalfConversion, NarrowingMatchesTorch) {
  const auto golden = test::load_golden("half_golden.json")["narrowing"];
  const auto& in = golden["float_bits"];
  const auto& bf = golden["bf16_bits"];
  const auto& hf = golden["fp16_bits"];
  ASSERT_GT(in.size(), 10000u);
  int bad = 0;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const float v = from_bits(in[i].get<std::uint32_t>());
    const std::uint16_t want_bf = bf[i].get<std::uint16_t>();
    const std::uint16_t want_hf = hf[i].get<std::uint16_t>();
    if (to_bf16(v).bits != want_bf && bad++ < 5)
      ADD_FAILURE() << "to_bf16(" << test::show(v) << ") = 0x" << std::hex << to_bf16(v).bits
                    << ", torch 0x" << want_bf;
    if (to_fp16(v).bits != want_hf && bad++ < 5)
      ADD_FAILURE() << "to_fp16(" << test::show(v) << ") = 0x" << std::hex << to_fp16(v).bits
                    << ", torch 0x" << want_hf;
  }
  EXPECT_EQ(bad, 0);
}

TEST(HalfConversion, WideningMatchesTorchForEveryPattern) {
  const auto golden = test::load_golden("half_golden.json")["widening"];
  const auto& bf = golden["bf16_to_float_bits"];
  const auto& hf = golden["fp16_to_float_bits"];
  ASSERT_EQ(bf.size(), 65536u);
  ASSERT_EQ(hf.size(), 65536u);
  int bad = 0;
  for (std::uint32_t h = 0; h < 65536u; ++h) {
    const auto b = static_cast<std::uint16_t>(h);
    if (float_bits(to_float(bf16{b})) != bf[h].get<std::uint32_t>() && bad++ < 5)
      ADD_FAILURE() << "bf16 0x" << std::hex << h;
    if (float_bits(to_float(fp16{b})) != hf[h].get<std::uint32_t>() && bad++ < 5)
      ADD_FAILURE() << "fp16 0x" << std::hex << h << ": 0x" << float_bits(to_float(fp16{b}))
                    << ", torch 0x" << hf[h].get<std::uint32_t>();
  }
  EXPECT_EQ(bad, 0);
}

// Every NaN, whatever its sign and payload, becomes the canonical quiet NaN.
TEST(HalfConversion, NanBecomesTheCanonicalQuietNan) {
  for (const std::uint32_t nan : {0x7fc00000u, 0xffc00000u, 0x7fc12345u, 0xff812345u, 0x7fa00001u,
                                  0x7f800001u, 0xffffffffu}) {
    EXPECT_EQ(to_bf16(from_bits(nan)).bits, 0x7fc0u) << std::hex << nan;
    EXPECT_EQ(to_fp16(from_bits(nan)).bits, 0x7e00u) << std::hex << nan;
  }
  EXPECT_EQ(to_fp16(65504.0f).bits, 0x7bffu);
  EXPECT_EQ(to_fp16(65519.996f).bits, 0x7bffu);
  EXPECT_EQ(to_fp16(65520.0f).bits, 0x7c00u);
  EXPECT_EQ(to_fp16(-65520.0f).bits, 0xfc00u);
  EXPECT_EQ(to_fp16(std::ldexp(1.0f, -24)).bits, 0x0001u);
  EXPECT_EQ(to_fp16(std::ldexp(1.0f, -25)).bits, 0x0000u);   // tie to even: 0
  EXPECT_EQ(to_fp16(-std::ldexp(3.0f, -25)).bits, 0x8002u);  // tie to even: 2
  EXPECT_EQ(to_bf16(FLT_MAX).bits, 0x7f80u);                 // rounds up to Inf
  EXPECT_EQ(to_bf16(from_bits(0x7f7f7fffu)).bits, 0x7f7fu);  // just below the tie
  EXPECT_EQ(to_bf16(from_bits(0x7f7f8000u)).bits, 0x7f80u);  // the tie: to even, Inf
  EXPECT_EQ(to_bf16(0.3f).bits, 0x3e9au);
}

// Each finite pattern survives a round trip; the midpoint of two neighbours
// rounds to the even one, and one float ulp either side to the nearer one.
template <class T>
void check_round_trips_and_ties() {
  int bad = 0;
  for (std::uint32_t h = 0; h < 65536u; ++h) {
    const T a{static_cast<std::uint16_t>(h)};
    const float fa = to_float(a);
    if (std::isnan(fa)) continue;
    if (from_float<T>(fa).bits != a.bits && bad++ < 5) ADD_FAILURE() << "round trip " << h;
    const std::uint16_t magnitude = a.bits & 0x7fffu;
    const std::uint16_t inf = std::is_same_v<T, bf16> ? 0x7f80u : 0x7c00u;
    if (magnitude + 1 >= inf) continue;                 // the overflow boundary: by hand above
    const T b{static_cast<std::uint16_t>(a.bits + 1)};  // the next one away from zero
    const float mid = fa + (to_float(b) - fa) / 2.0f;   // exact: one more bit than T has
    const T even = (a.bits & 1u) == 0u ? a : b;
    const float toward_a = std::nextafter(mid, fa), toward_b = std::nextafter(mid, 2.0f * mid);
    if (from_float<T>(mid).bits != even.bits && bad++ < 5) ADD_FAILURE() << "tie after " << h;
    if (from_float<T>(toward_a).bits != a.bits && bad++ < 5) ADD_FAILURE() << "below " << h;
    if (from_float<T>(toward_b).bits != b.bits && bad++ < 5) ADD_FAILURE() << "above " << h;
  }
  EXPECT_EQ(bad, 0);
}

TEST(HalfConversion, Bf16RoundTripsAndTiesToEven) { check_round_trips_and_ties<bf16>(); }
TEST(HalfConversion, Fp16RoundTripsAndTiesToEven) { check_round_trips_and_ties<fp16>(); }

// ---------------------------------------------------------------------------
// lowbit::ref: the float op on the widened tensor, rounded once

template <class T>
class HalfRef : public ::testing::Test {};
using ElementTypes = ::testing::Types<bf16, fp16>;
TYPED_TEST_SUITE(HalfRef, ElementTypes);

const ChannelLayout kLayouts[] = {ChannelLayout::per_tensor(1000), ChannelLayout{3, 5, 37},
                                  ChannelLayout{7, 11, 1}, ChannelLayout::per_tensor(33)};

TYPED_TEST(HalfRef, FakeQuantRangeIsTheFloatOpRoundedOnce) {
  using T = TypeParam;
  std::uint32_t seed = 1;
  for (const ChannelLayout& layout : kLayouts) {
    const std::int64_t n = layout.size();
    const std::vector<T> x = half_values<T>(n, seed++);
    const std::vector<float> xf = widen(x);
    std::vector<float> lo, hi;
    ranges_for(layout.channels, lo, hi);
    for (int bits : {2, 4, 8, 16}) {
      for (bool narrow_range : {false, true}) {
        for (MaskFormat format : {MaskFormat::pass, MaskFormat::sides}) {
          SCOPED_TRACE(::testing::Message() << "channels " << layout.channels << " bits " << bits
                                            << " narrow " << narrow_range);
          const RangeQuant quant{bits, narrow_range};
          std::vector<float> yf(n);
          Words want_mask(mask_words(n, format)), mask(want_mask.size());
          ref::fake_quant_range(xf.data(), yf.data(), layout, lo.data(), hi.data(), quant,
                                want_mask.data(), format);
          std::vector<T> y(n);
          ref::fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), quant,
                                mask.data(), format);
          ASSERT_TRUE(same_elements("y", x, narrow<T>(yf), y));
          ASSERT_TRUE(same_bits(want_mask, mask));
          std::vector<T> in_place = x;  // x and y may alias
          ref::fake_quant_range(in_place.data(), in_place.data(), layout, lo.data(), hi.data(),
                                quant, nullptr, format);
          ASSERT_TRUE(same_elements("in place", x, y, in_place));
        }
      }
    }
  }
}

TYPED_TEST(HalfRef, FakeQuantAffineIsTheFloatOpRoundedOnce) {
  using T = TypeParam;
  std::uint32_t seed = 100;
  for (const ChannelLayout& layout : kLayouts) {
    const std::int64_t n = layout.size();
    const std::vector<T> x = half_values<T>(n, seed++);
    const std::vector<float> xf = widen(x);
    for (int bits : {2, 4, 8, 16}) {
      const AffineQuant quant =
          bits % 8 ? AffineQuant::signed_bits(bits) : AffineQuant::unsigned_bits(bits);
      std::vector<float> scale(layout.channels);
      std::vector<std::int32_t> zero_point(layout.channels);
      for (std::int64_t c = 0; c < layout.channels; ++c) {
        scale[c] = c % 2 ? 0.25f : 0.1f * static_cast<float>(c + 1);  // 0.25: ties at 1/8
        zero_point[c] = quant.qmin + static_cast<std::int32_t>(c % (quant.qmax - quant.qmin));
      }
      SCOPED_TRACE(::testing::Message() << "channels " << layout.channels << " bits " << bits);
      std::vector<float> yf(n);
      Words want_mask(mask_words(n)), mask(want_mask.size());
      ClipCount want_counts, counts;
      ref::fake_quant_affine(xf.data(), yf.data(), layout, scale.data(), zero_point.data(), quant,
                             want_mask.data(), &want_counts);
      std::vector<T> y(n);
      ref::fake_quant_affine(x.data(), y.data(), layout, scale.data(), zero_point.data(), quant,
                             mask.data(), &counts);
      ASSERT_TRUE(same_elements("y", x, narrow<T>(yf), y));
      ASSERT_TRUE(same_bits(want_mask, mask));
      EXPECT_EQ(counts.quantized, want_counts.quantized);
      EXPECT_EQ(counts.clipped, want_counts.clipped);
    }
  }
}

// One result by hand: bf16(0.3) = 0.30078125 is level 3 of scale 0.1, and
// 3·0.1f = 0.3f rounds back to bf16 0x3e9a.
TEST(HalfRefByHand, AffineBf16) {
  const float scale = 0.1f;
  const std::int32_t zero_point = 0;
  const bf16 x[] = {to_bf16(0.3f), to_bf16(-100.0f), bf16{0x7fc5}, bf16{0x8000}};
  bf16 y[4];
  Words mask(1);
  ref::fake_quant_affine(x, y, ChannelLayout::per_tensor(4), &scale, &zero_point,
                         AffineQuant::signed_bits(8), mask.data());
  EXPECT_EQ(y[0].bits, 0x3e9au);
  EXPECT_EQ(y[1].bits, to_bf16(-128 * 0.1f).bits);  // clipped at qmin
  EXPECT_EQ(y[2].bits, 0x7fc0u);                    // NaN, canonical
  EXPECT_EQ(y[3].bits, 0x0000u);                    // a zero output is +0
  EXPECT_EQ(mask[0], 0b1001u);
}

TYPED_TEST(HalfRef, SteBackwardIsTheFloatOpRoundedOnce) {
  using T = TypeParam;
  std::uint32_t seed = 200;
  for (const ChannelLayout& layout : kLayouts) {
    const std::int64_t n = layout.size();
    const std::vector<T> x = half_values<T>(n, seed++);
    const std::vector<T> dy = half_values<T>(n, seed++, 1.0f);
    const std::vector<float> dyf = widen(dy);
    std::vector<float> lo, hi;
    ranges_for(layout.channels, lo, hi);
    std::vector<T> y(n);
    Words sides(mask_words(n, MaskFormat::sides)), pass(mask_words(n));
    ref::fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), {4, false},
                          sides.data(), MaskFormat::sides);
    ref::fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), {4, false}, pass.data(),
                          MaskFormat::pass);
    for (const Words* mask : {&pass, &sides}) {
      const MaskFormat format = mask == &pass ? MaskFormat::pass : MaskFormat::sides;
      std::vector<float> dxf(n);
      std::vector<T> dx(n);
      ref::ste_backward(dyf.data(), mask->data(), format, n, dxf.data());
      ref::ste_backward(dy.data(), mask->data(), format, n, dx.data());
      ASSERT_TRUE(same_elements("dx", dy, narrow<T>(dxf), dx));
    }
    std::vector<float> storage, dxf(n), want_min(layout.channels), want_max(layout.channels);
    ref::ste_backward_range(dyf.data(), sides.data(), layout, dxf.data(), want_min.data(),
                            want_max.data(), test::host_workspace(storage, layout));
    std::vector<T> dx(n);
    std::vector<float> d_min(layout.channels), d_max(layout.channels);
    ref::ste_backward_range(dy.data(), sides.data(), layout, dx.data(), d_min.data(), d_max.data(),
                            test::host_workspace(storage, layout));
    ASSERT_TRUE(same_elements("dx", dy, narrow<T>(dxf), dx));
    ASSERT_TRUE(same_bits(want_min, d_min));
    ASSERT_TRUE(same_bits(want_max, d_max));
  }
}

/// Steps of an EMA op over batches of T: quant_delay, a NaN batch, a freeze.
template <class T>
std::vector<std::vector<T>> ema_batches() {
  std::vector<std::vector<T>> batches;
  for (int step = 0; step < 8; ++step) {
    auto x = half_values<T>(200 + 97 * step, 300 + step, 0.5f + step);
    if (step != 3)  // batch 3 keeps its NaN and is skipped; the others clip
      for (T& v : x)
        if (!(std::fabs(to_float(v)) <= 16.0f)) v = from_float<T>(0.5f);
    batches.push_back(x);
  }
  return batches;
}

EmaConfig ema_config(EmaMode mode, int bits) {
  EmaConfig config;
  config.quant = {bits, false};
  config.mode = mode;
  config.quant_delay = 2;
  config.freeze_step = 6;
  config.decay = 0.9f;
  return config;
}

TYPED_TEST(HalfRef, EmaFakeQuantIsTheFloatOpRoundedOnce) {
  using T = TypeParam;
  for (EmaMode mode : {EmaMode::exact, EmaMode::lagged}) {
    for (MaskFormat format : {MaskFormat::pass, MaskFormat::sides}) {
      const EmaConfig config = ema_config(mode, format == MaskFormat::pass ? 4 : 8);
      EmaRangeState want_state, state;
      ref::ema_state_init(&want_state);
      ref::ema_state_init(&state);
      ClipCount want_counts, counts;
      for (const std::vector<T>& x : ema_batches<T>()) {
        const std::int64_t n = static_cast<std::int64_t>(x.size());
        const std::vector<float> xf = widen(x);
        std::vector<float> yf(n);
        Words want_mask(mask_words(n, format)), mask(want_mask.size());
        ref::ema_fake_quant(xf.data(), yf.data(), n, &want_state, config, want_mask.data(), format,
                            &want_counts);
        std::vector<T> y(n);
        ref::ema_fake_quant(x.data(), y.data(), n, &state, config, mask.data(), format, &counts);
        SCOPED_TRACE(::testing::Message() << "step " << state.steps);
        ASSERT_TRUE(same_elements("y", x, narrow<T>(yf), y));
        ASSERT_TRUE(same_bits(want_mask, mask));
        ASSERT_EQ(std::memcmp(&want_state, &state, sizeof state), 0);
      }
      EXPECT_EQ(state.skipped, 1u);
      EXPECT_GT(counts.clipped, 0u);
      EXPECT_EQ(counts.quantized, want_counts.quantized);
      EXPECT_EQ(counts.clipped, want_counts.clipped);
    }
  }
}

// ---------------------------------------------------------------------------
// lowbit::cpu equals lowbit::ref at every level and thread count

template <class T>
class HalfCpu : public ::testing::Test {};
TYPED_TEST_SUITE(HalfCpu, ElementTypes);

// Long enough to share out among 3 threads; rows that split mask words.
const ChannelLayout kCpuLayouts[] = {ChannelLayout::per_tensor(100003), ChannelLayout{5, 7, 999},
                                     ChannelLayout{301, 33, 1}, ChannelLayout::per_tensor(45)};

TYPED_TEST(HalfCpu, FakeQuantMatchesTheReference) {
  using T = TypeParam;
  std::uint32_t seed = 400;
  for (const ChannelLayout& layout : kCpuLayouts) {
    const std::int64_t n = layout.size();
    const std::vector<T> x = half_values<T>(n, seed++);
    std::vector<float> lo, hi, scale(layout.channels);
    ranges_for(layout.channels, lo, hi);
    std::vector<std::int32_t> zero_point(layout.channels);
    for (std::int64_t c = 0; c < layout.channels; ++c) {
      scale[c] = c % 2 ? 0.25f : 0.03f * static_cast<float>(c + 1);
      zero_point[c] = static_cast<std::int32_t>(c % 7) - 3;
    }
    const AffineQuant affine = AffineQuant::signed_bits(4);
    for (MaskFormat format : {MaskFormat::pass, MaskFormat::sides}) {
      std::vector<T> want(n), want_affine(n);
      Words want_mask(mask_words(n, format)), want_affine_mask(mask_words(n));
      ClipCount want_counts;
      ref::fake_quant_range(x.data(), want.data(), layout, lo.data(), hi.data(), {4, false},
                            want_mask.data(), format);
      ref::fake_quant_affine(x.data(), want_affine.data(), layout, scale.data(), zero_point.data(),
                             affine, want_affine_mask.data(), &want_counts);
      for (const test::CpuRun& run : test::cpu_runs()) {
        const test::CpuRunScope scope(run);
        SCOPED_TRACE(::testing::Message() << run << ", channels " << layout.channels);
        std::vector<T> y(n, T{0xdead});
        Words mask(want_mask.size(), 0xdeadbeefu);
        cpu::fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), {4, false},
                              mask.data(), format);
        ASSERT_TRUE(same_elements("range y", x, want, y));
        ASSERT_TRUE(same_bits(want_mask, mask));
        std::vector<T> in_place = x;
        cpu::fake_quant_range(in_place.data(), in_place.data(), layout, lo.data(), hi.data(),
                              {4, false}, nullptr, format);
        ASSERT_TRUE(same_elements("range in place", x, want, in_place));
        Words affine_mask(want_affine_mask.size(), 0xdeadbeefu);
        ClipCount counts;
        cpu::fake_quant_affine(x.data(), y.data(), layout, scale.data(), zero_point.data(), affine,
                               affine_mask.data(), &counts);
        ASSERT_TRUE(same_elements("affine y", x, want_affine, y));
        ASSERT_TRUE(same_bits(want_affine_mask, affine_mask));
        ASSERT_EQ(counts.quantized, want_counts.quantized);
        ASSERT_EQ(counts.clipped, want_counts.clipped);
      }
    }
  }
}

TYPED_TEST(HalfCpu, SteBackwardMatchesTheReference) {
  using T = TypeParam;
  std::uint32_t seed = 500;
  for (const ChannelLayout& layout : kCpuLayouts) {
    const std::int64_t n = layout.size();
    const std::vector<T> x = half_values<T>(n, seed++);
    const std::vector<T> dy = half_values<T>(n, seed++, 1.0f);
    std::vector<float> lo, hi;
    ranges_for(layout.channels, lo, hi);
    std::vector<T> y(n);
    Words sides(mask_words(n, MaskFormat::sides));
    ref::fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), {4, false},
                          sides.data(), MaskFormat::sides);
    std::vector<T> want_dx(n), want_range_dx(n);
    ref::ste_backward(dy.data(), sides.data(), MaskFormat::sides, n, want_dx.data());
    std::vector<float> storage, want_min(layout.channels), want_max(layout.channels);
    ref::ste_backward_range(dy.data(), sides.data(), layout, want_range_dx.data(), want_min.data(),
                            want_max.data(), test::host_workspace(storage, layout));
    for (const test::CpuRun& run : test::cpu_runs()) {
      const test::CpuRunScope scope(run);
      SCOPED_TRACE(::testing::Message() << run << ", channels " << layout.channels);
      std::vector<T> dx(n, T{0xdead});
      cpu::ste_backward(dy.data(), sides.data(), MaskFormat::sides, n, dx.data());
      ASSERT_TRUE(same_elements("dx", dy, want_dx, dx));
      std::vector<T> in_place = dy;
      cpu::ste_backward(in_place.data(), sides.data(), MaskFormat::sides, n, in_place.data());
      ASSERT_TRUE(same_elements("dx in place", dy, want_dx, in_place));
      std::vector<float> d_min(layout.channels, -1.0f), d_max(layout.channels, -1.0f);
      std::vector<float> cpu_storage;
      cpu::ste_backward_range(dy.data(), sides.data(), layout, dx.data(), d_min.data(),
                              d_max.data(), test::host_workspace(cpu_storage, layout));
      ASSERT_TRUE(same_elements("range dx", dy, want_range_dx, dx));
      // A NaN sum may carry another NaN's sign (cpu_reductions.hpp).
      ASSERT_TRUE(test::matches("d_min", {}, want_min, d_min));
      ASSERT_TRUE(test::matches("d_max", {}, want_max, d_max));
    }
  }
}

TYPED_TEST(HalfCpu, EmaFakeQuantMatchesTheReference) {
  using T = TypeParam;
  for (EmaMode mode : {EmaMode::exact, EmaMode::lagged}) {
    for (MaskFormat format : {MaskFormat::pass, MaskFormat::sides}) {
      const EmaConfig config = ema_config(mode, 4);
      for (const test::CpuRun& run : test::cpu_runs()) {
        const test::CpuRunScope scope(run);
        SCOPED_TRACE(::testing::Message() << run);
        EmaRangeState want_state, state;
        ref::ema_state_init(&want_state);
        ref::ema_state_init(&state);
        ClipCount want_counts, counts;
        for (const std::vector<T>& batch : ema_batches<T>()) {
          std::vector<T> x = batch;
          x.resize(x.size() * 37 + 5, from_float<T>(0.25f));  // several threads' worth
          const std::int64_t n = static_cast<std::int64_t>(x.size());
          std::vector<T> want(n), y(n, T{0xdead});
          Words want_mask(mask_words(n, format)), mask(want_mask.size(), 0xdeadbeefu);
          ref::ema_fake_quant(x.data(), want.data(), n, &want_state, config, want_mask.data(),
                              format, &want_counts);
          cpu::ema_fake_quant(x.data(), y.data(), n, &state, config, mask.data(), format, &counts);
          ASSERT_TRUE(same_elements("y", x, want, y));
          ASSERT_TRUE(same_bits(want_mask, mask));
          ASSERT_EQ(std::memcmp(&want_state, &state, sizeof state), 0);
        }
        EXPECT_EQ(counts.quantized, want_counts.quantized);
        EXPECT_EQ(counts.clipped, want_counts.clipped);
      }
    }
  }
}

}  // namespace
}  // namespace lowbit
