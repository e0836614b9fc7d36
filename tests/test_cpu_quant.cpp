// lowbit::cpu elementwise quantizer ops against lowbit::ref, bit for bit:
// outputs, masks (every word written), clip counts and EMA states, over seeded
// layouts and values full of edge cases (NaN payloads, ±Inf, ±0, subnormals,
// range ends, rounding ties), in place, with 1, 2 and 3 threads at every
// instruction set level this CPU runs (cpu_isa.hpp); and the same
// errors as the reference.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backends/cpu_quant.hpp"
#include "cpu_isa_scope.hpp"
#include "lowbit/error.hpp"
#include "lowbit/ref.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

// Typed nulls: a bare nullptr would not choose between the float, bf16 and
// fp16 overloads.
const float* const kNullX = nullptr;
float* const kNullY = nullptr;

using test::same_bits;
using Floats = std::vector<float>;
using Words = std::vector<std::uint32_t>;
using std::int64_t;

// Fills outputs before a call, so a word or element an op forgets shows.
constexpr std::uint32_t kGarbageWord = 0xdeadbeefu;

float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

const Floats kSpecials = {
    from_bits(0x7fc00000u),  // the default quiet NaN
    from_bits(0xffc00000u),  // negative quiet NaN
    from_bits(0x7fc12345u),  // quiet NaN with a payload
    from_bits(0xff812345u),  // negative NaN with a payload
    from_bits(0x7fa00001u),  // signalling NaN
    INFINITY,
    -INFINITY,
    0.0f,
    -0.0f,
    from_bits(0x00000001u),  // smallest subnormal
    from_bits(0x80000001u),
    from_bits(0x007fffffu),  // largest subnormal
    from_bits(0x807fffffu),
    FLT_MIN,
    -FLT_MIN,
    FLT_MAX,
    -FLT_MAX,
};

bool is_nonfinite(float v) { return !(std::fabs(v) <= FLT_MAX); }

// n seeded values: normals of a random spread, `points` (range ends, grid
// levels and ties) and their neighbours, and every kind of special value
// (none that is not finite when `finite`).
Floats make_values(int64_t n, std::mt19937& rng, const Floats& points, bool finite = false) {
  const float spread = std::vector<float>{0.01f, 1.0f, 3.0f, 100.0f}[rng() % 4];
  std::normal_distribution<float> normal(0.0f, spread);
  Floats v(static_cast<std::size_t>(n));
  for (float& x : v) {
    const std::uint32_t r = rng() % 32;
    if (r < 3) {
      do x = kSpecials[rng() % kSpecials.size()];
      while (finite && is_nonfinite(x));
    } else if (r < 12 && !points.empty()) {
      x = points[rng() % points.size()];
      if (r == 10) x = std::nextafter(x, INFINITY);
      if (r == 11) x = std::nextafter(x, -INFINITY);
    } else {
      x = normal(rng);
    }
  }
  return v;
}

// Grid points of a nudged range: its ends, some levels and the ties between.
void add_grid_points(const RangeParams& p, float min, float max, Floats& points) {
  points.insert(points.end(), {min, max, p.nudged_min, p.nudged_max});
  if (p.scale == 0.0f) return;
  for (float k : {0.0f, 1.0f, 2.0f, 3.0f, 7.0f, 100.0f})
    for (float half : {0.0f, 0.5f}) {
      points.push_back(p.nudged_min + (k + half) * p.scale);
      points.push_back(p.nudged_max - (k + half) * p.scale);
    }
}

void add_affine_points(const AffineParams& p, Floats& points) {
  for (float q : {p.qmin, p.qmax, p.zero_point, p.qmin + 1.0f, p.qmax - 1.0f})
    for (float half : {-0.5f, 0.0f, 0.5f}) points.push_back((q + half - p.zero_point) * p.scale);
}

// A layout of at most ~max_n elements, one of the shapes the ops meet: per
// tensor, per tensor as rows, per channel with inner 1, a short inner (not a
// multiple of 32), a long inner, and weights (outer 1).
ChannelLayout random_layout(std::mt19937& rng, int64_t max_n) {
  const auto pick = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  ChannelLayout l;
  switch (rng() % 6) {
    case 0:
      return ChannelLayout::per_tensor(pick(1, max_n));
    case 1:
      l = {pick(1, 40), 1, pick(1, 300)};
      break;
    case 2:
      l = {pick(1, 500), pick(2, 300), 1};
      break;
    case 3:
      l = {pick(1, 200), pick(1, 40), pick(2, 50)};
      break;
    case 4:
      l = {pick(1, 8), pick(1, 12), pick(33, 3000)};
      break;
    default:
      l = {1, pick(1, 300), pick(1, 700)};
      break;
  }
  while (l.size() > max_n) {
    if (l.outer > 1)
      l.outer /= 2;
    else
      l.inner /= 2;
  }
  return l;
}

std::string describe(const ChannelLayout& l) {
  std::ostringstream s;
  s << "layout {" << l.outer << ", " << l.channels << ", " << l.inner << "}";
  return s.str();
}

// A range for a channel: ordinary, zero-width, all positive, all negative,
// with subnormal bounds, or very narrow.
void random_range(std::mt19937& rng, float& min, float& max) {
  std::uniform_real_distribution<float> u(-4.0f, 4.0f);
  switch (rng() % 8) {
    case 0:
      min = max = 0.0f;
      break;
    case 1:
      min = max = u(rng);
      break;
    case 2:
      min = std::fabs(u(rng)) + 0.5f;
      max = min + 3.0f;
      break;
    case 3:
      max = -std::fabs(u(rng)) - 0.5f;
      min = max - 2.0f;
      break;
    case 4:
      min = from_bits(0x80000010u);
      max = 1.0f;
      break;
    case 5:
      min = 1.0f;
      max = std::nextafter(1.0f, 2.0f);
      break;
    default:
      min = u(rng);
      max = min + std::fabs(u(rng)) + 1e-3f;
      break;
  }
}

::testing::AssertionResult same_state(const EmaRangeState& want, const EmaRangeState& got) {
  if (std::memcmp(&want, &got, sizeof want) == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "state differs: min " << want.min << " vs " << got.min << ", max " << want.max << " vs "
         << got.max << ", decay_pow " << want.decay_pow << " vs " << got.decay_pow << ", steps "
         << want.steps << " vs " << got.steps << ", updates " << want.updates << " vs "
         << got.updates << ", skipped " << want.skipped << " vs " << got.skipped;
}

::testing::AssertionResult same_counts(const ClipCount& want, const ClipCount& got) {
  if (want.quantized == got.quantized && want.clipped == got.clipped)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "clip counts differ: " << want.quantized << "/" << want.clipped << " vs "
         << got.quantized << "/" << got.clipped;
}

// ---- Range mode ----

struct RangeCase {
  ChannelLayout layout;
  Floats x, min, max;
  RangeQuant quant;
  MaskFormat format;
  bool with_mask, in_place;
};

RangeCase random_range_case(std::mt19937& rng, int64_t max_n) {
  RangeCase c;
  c.layout = random_layout(rng, max_n);
  c.quant = {static_cast<int>(kMinBits + rng() % (kMaxBits - kMinBits + 1)), rng() % 2 == 0};
  c.format = rng() % 2 == 0 ? MaskFormat::pass : MaskFormat::sides;
  c.with_mask = rng() % 5 != 0;
  c.in_place = rng() % 3 == 0;
  Floats points;
  for (int64_t ch = 0; ch < c.layout.channels; ++ch) {
    float lo, hi;
    random_range(rng, lo, hi);
    c.min.push_back(lo);
    c.max.push_back(hi);
    if (ch < 16)
      add_grid_points(nudge_range(lo, hi, c.quant.qmin(), c.quant.qmax()), lo, hi, points);
  }
  c.x = make_values(c.layout.size(), rng, points);
  return c;
}

void expect_range_matches(const RangeCase& c, const std::string& what) {
  const int64_t n = c.layout.size();
  Floats want_y(c.x.size(), from_bits(kGarbageWord));
  Words want_mask(mask_words(n, c.format), 0x12345678u);
  ref::fake_quant_range(c.x.data(), want_y.data(), c.layout, c.min.data(), c.max.data(), c.quant,
                        c.with_mask ? want_mask.data() : nullptr, c.format);
  for (const test::CpuRun& run : test::cpu_runs()) {
    const test::CpuRunScope scope(run);
    Floats y = c.in_place ? c.x : Floats(c.x.size(), from_bits(kGarbageWord));
    Words mask(want_mask.size(), kGarbageWord);
    if (!c.with_mask) mask = want_mask;
    cpu::fake_quant_range(c.in_place ? y.data() : c.x.data(), y.data(), c.layout, c.min.data(),
                          c.max.data(), c.quant, c.with_mask ? mask.data() : nullptr, c.format);
    EXPECT_TRUE(same_bits(want_y, y)) << what << ", " << run;
    EXPECT_TRUE(same_bits(want_mask, mask)) << what << ", " << run;
  }
}

TEST(CpuQuantRange, RandomLayoutsAndValuesMatchTheReference) {
  std::mt19937 rng(2024);
  for (int trial = 0; trial < 40; ++trial) {
    const RangeCase c = random_range_case(rng, trial % 4 == 0 ? 200000 : 40000);
    std::ostringstream what;
    what << "trial " << trial << ", " << describe(c.layout) << ", bits " << c.quant.bits
         << (c.quant.narrow_range ? " narrow" : "")
         << (c.format == MaskFormat::sides ? ", sides" : ", pass")
         << (c.in_place ? ", in place" : "") << (c.with_mask ? "" : ", no mask");
    expect_range_matches(c, what.str());
  }
}

// Every width with and without narrow range, both formats, per tensor (one
// division per element) and per channel (a multiplication).
TEST(CpuQuantRange, EveryWidthMatchesTheReference) {
  std::mt19937 rng(7);
  for (int bits = kMinBits; bits <= kMaxBits; ++bits)
    for (bool narrow : {false, true})
      for (const ChannelLayout layout :
           {ChannelLayout::per_tensor(70001), ChannelLayout{3, 5, 4099}}) {
        RangeCase c;
        c.layout = layout;
        c.quant = {bits, narrow};
        c.format = bits % 2 == 0 ? MaskFormat::pass : MaskFormat::sides;
        c.with_mask = true;
        c.in_place = narrow;
        Floats points;
        for (int64_t ch = 0; ch < layout.channels; ++ch) {
          const float lo = -1.5f + 0.25f * static_cast<float>(ch),
                      hi = 2.0f + static_cast<float>(ch);
          c.min.push_back(lo);
          c.max.push_back(hi);
          add_grid_points(nudge_range(lo, hi, c.quant.qmin(), c.quant.qmax()), lo, hi, points);
        }
        c.x = make_values(layout.size(), rng, points);
        expect_range_matches(
            c, "bits " + std::to_string(bits) + (narrow ? " narrow, " : ", ") + describe(layout));
      }
}

// ---- Affine mode ----

TEST(CpuQuantAffine, RandomLayoutsWidthsAndClipCountsMatchTheReference) {
  std::mt19937 rng(99);
  for (int trial = 0; trial < 45; ++trial) {
    const ChannelLayout layout = random_layout(rng, trial % 4 == 0 ? 200000 : 40000);
    const int bits = kMinBits + trial % (kMaxBits - kMinBits + 1);
    const AffineQuant quant =
        rng() % 2 == 0 ? AffineQuant::unsigned_bits(bits) : AffineQuant::signed_bits(bits);
    Floats scale;
    std::vector<std::int32_t> zero_point;
    Floats points;
    for (int64_t ch = 0; ch < layout.channels; ++ch) {
      const float s = std::vector<float>{1e-3f, 0.1f, 0.37f, 1.0f, 3.0f, from_bits(0x00400000u),
                                         1e-30f}[rng() % 7];
      const std::int32_t z =
          quant.qmin + static_cast<std::int32_t>(
                           rng() % static_cast<std::uint32_t>(quant.qmax - quant.qmin + 1));
      scale.push_back(s);
      zero_point.push_back(z);
      if (ch < 16) add_affine_points(make_affine(s, z, quant.qmin, quant.qmax), points);
    }
    const Floats x = make_values(layout.size(), rng, points);
    const bool with_mask = rng() % 4 != 0, with_count = rng() % 4 != 0, in_place = rng() % 3 == 0;
    const std::string what = "trial " + std::to_string(trial) + ", " + describe(layout);

    Floats want_y(x.size());
    Words want_mask(mask_words(layout.size()));
    ClipCount want_count{5, 3};
    ref::fake_quant_affine(x.data(), want_y.data(), layout, scale.data(), zero_point.data(), quant,
                           with_mask ? want_mask.data() : nullptr,
                           with_count ? &want_count : nullptr);
    for (const test::CpuRun& run : test::cpu_runs()) {
      const test::CpuRunScope scope(run);
      Floats y = in_place ? x : Floats(x.size(), from_bits(kGarbageWord));
      Words mask(want_mask.size(), kGarbageWord);
      if (!with_mask) mask = want_mask;
      ClipCount count{5, 3};
      cpu::fake_quant_affine(in_place ? y.data() : x.data(), y.data(), layout, scale.data(),
                             zero_point.data(), quant, with_mask ? mask.data() : nullptr,
                             with_count ? &count : nullptr);
      EXPECT_TRUE(same_bits(want_y, y)) << what << ", " << run;
      EXPECT_TRUE(same_bits(want_mask, mask)) << what << ", " << run;
      EXPECT_TRUE(same_counts(want_count, count)) << what << ", " << run;
    }
    if (with_count) {
      EXPECT_EQ(want_count.quantized, 5u + static_cast<unsigned long long>(x.size()));
    }
  }
}

// ---- LSQ ----

TEST(CpuQuantLsq, ForwardAndClipCountsMatchTheReference) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 30; ++trial) {
    const ChannelLayout layout = random_layout(rng, trial % 3 == 0 ? 200000 : 30000);
    const int bits = kMinBits + trial % (kMaxBits - kMinBits + 1);
    const LsqQuant quant =
        trial % 2 == 0 ? LsqQuant::signed_bits(bits) : LsqQuant::unsigned_bits(bits);
    Floats scale, points;
    for (int64_t ch = 0; ch < layout.channels; ++ch) {
      // Trained scales, including ones the floor replaces (0, negative, NaN).
      const float s =
          std::vector<float>{0.05f, 0.3f, 1.0f, 0.0f, -1.0f, NAN, 1e-9f, 2.5f}[rng() % 8];
      scale.push_back(s);
      if (ch < 16) {
        const LsqParams p = make_lsq(s, quant.qmin, quant.qmax);
        for (float q : {p.qmin, p.qmax, 0.0f, 1.0f})
          for (float half : {-0.5f, 0.0f, 0.5f}) points.push_back((q + half) * p.scale);
      }
    }
    const Floats x = make_values(layout.size(), rng, points);
    const bool in_place = trial % 3 == 1, with_count = trial % 5 != 0;
    Floats want_y(x.size());
    ClipCount want_count{};
    ref::lsq_forward(x.data(), want_y.data(), layout, scale.data(), quant,
                     with_count ? &want_count : nullptr);
    for (const test::CpuRun& run : test::cpu_runs()) {
      const test::CpuRunScope scope(run);
      Floats y = in_place ? x : Floats(x.size(), from_bits(kGarbageWord));
      ClipCount count{};
      cpu::lsq_forward(in_place ? y.data() : x.data(), y.data(), layout, scale.data(), quant,
                       with_count ? &count : nullptr);
      EXPECT_TRUE(same_bits(want_y, y)) << describe(layout) << ", " << run;
      EXPECT_TRUE(same_counts(want_count, count)) << describe(layout) << ", " << run;
    }
  }
}

// ---- EMA observer + fake quant ----

// A batch of n values of one kind: ordinary, all negative, all positive, all
// zeros of both signs, with a NaN or an infinity somewhere (a skipped batch),
// or huge.
Floats ema_batch(int64_t n, std::mt19937& rng, int kind) {
  Floats x = make_values(n, rng, {0.0f, -0.0f, 1.0f, -1.0f}, /*finite=*/true);
  const auto somewhere = [&]() -> float& { return x[rng() % x.size()]; };
  switch (kind) {
    case 1:
      for (float& v : x) v = -std::fabs(v) - 0.25f;
      break;
    case 2:
      for (float& v : x) v = std::fabs(v) + 0.25f;
      break;
    case 3:
      for (float& v : x) v = rng() % 2 == 0 ? 0.0f : -0.0f;
      break;
    case 4:
      somewhere() = from_bits(0x7fc12345u);
      break;
    case 5:
      somewhere() = rng() % 2 == 0 ? INFINITY : -INFINITY;
      break;
    case 6:
      for (float& v : x) v *= 1e30f;
      break;
    default:
      break;
  }
  return x;
}

struct EmaCase {
  EmaConfig config;
  MaskFormat format = MaskFormat::pass;
  bool with_mask = true, with_count = true, in_place = false;
};

std::string describe(const EmaCase& c) {
  std::ostringstream s;
  s << (c.config.mode == EmaMode::exact ? "exact" : "lagged") << ", bits " << c.config.quant.bits
    << (c.config.quant.narrow_range ? " narrow" : "") << ", decay " << c.config.decay
    << ", quant_delay " << c.config.quant_delay << ", freeze_step " << c.config.freeze_step
    << (c.format == MaskFormat::sides ? ", sides" : ", pass") << (c.in_place ? ", in place" : "")
    << (c.with_mask ? "" : ", no mask") << (c.with_count ? "" : ", no count");
  return s.str();
}

EmaCase random_ema_case(std::mt19937& rng) {
  EmaCase c;
  c.config.quant = {static_cast<int>(kMinBits + rng() % (kMaxBits - kMinBits + 1)), rng() % 2 == 0};
  c.config.decay = std::vector<float>{0.0f, 0.5f, 0.9f, 0.999f}[rng() % 4];
  c.config.mode = rng() % 2 == 0 ? EmaMode::exact : EmaMode::lagged;
  c.config.quant_delay = std::vector<int64_t>{0, 0, 2, 5}[rng() % 4];
  c.config.freeze_step = rng() % 3 == 0 ? 4 : kNeverFreeze;
  c.format = rng() % 2 == 0 ? MaskFormat::pass : MaskFormat::sides;
  c.with_mask = rng() % 5 != 0;
  c.with_count = rng() % 4 != 0;
  c.in_place = rng() % 3 == 0;
  return c;
}

// Runs a sequence of batches through both namespaces from the same initial
// state, comparing y, mask, clip counts and the state after every step.
void expect_ema_sequence_matches(const EmaCase& c, std::mt19937& rng, const test::CpuRun& run) {
  const test::CpuRunScope scope(run);
  EmaRangeState want_state, state;
  ref::ema_state_init(&want_state);
  ref::ema_state_init(&state);
  ClipCount want_count{}, count{};
  for (int step = 0; step < 8; ++step) {
    const int64_t n = std::vector<int64_t>{1, 31, 1000, 16385, 65536, 100003}[rng() % 6];
    const Floats x = ema_batch(n, rng, static_cast<int>(rng() % 8));
    const std::string what = describe(c) + ", step " + std::to_string(step) + ", n " +
                             std::to_string(n) + ", " + run.name();
    Floats want_y(x.size());
    Words want_mask(mask_words(n, c.format));
    ref::ema_fake_quant(x.data(), want_y.data(), n, &want_state, c.config,
                        c.with_mask ? want_mask.data() : nullptr, c.format,
                        c.with_count ? &want_count : nullptr);
    Floats y = c.in_place ? x : Floats(x.size(), from_bits(kGarbageWord));
    Words mask(want_mask.size(), kGarbageWord);
    if (!c.with_mask) mask = want_mask;
    cpu::ema_fake_quant(c.in_place ? y.data() : x.data(), y.data(), n, &state, c.config,
                        c.with_mask ? mask.data() : nullptr, c.format,
                        c.with_count ? &count : nullptr);
    ASSERT_TRUE(same_state(want_state, state)) << what;
    EXPECT_TRUE(same_bits(want_y, y)) << what;
    EXPECT_TRUE(same_bits(want_mask, mask)) << what;
    EXPECT_TRUE(same_counts(want_count, count)) << what;
  }
}

TEST(CpuQuantEma, SequencesMatchTheReferenceInStateAndOutput) {
  std::mt19937 rng(31);
  for (int trial = 0; trial < 24; ++trial) {
    const EmaCase c = random_ema_case(rng);
    for (const test::CpuRun& run : test::cpu_runs()) {
      std::mt19937 batches(1000 + trial);  // the same batches for every run
      expect_ema_sequence_matches(c, batches, run);
    }
  }
}

// The cases that decide the state: a first batch of zeros only, then one
// with a NaN (skipped), one with -Inf (skipped), an all-negative one, and
// steps past freeze_step; both modes, quant_delay over the first steps.
TEST(CpuQuantEma, SkippedFrozenAndDelayedStepsMatchTheReference) {
  const std::vector<Floats> batches = {
      Floats(70000, -0.0f),
      [] {
        Floats x(50000, 1.5f);
        x[49999] = NAN;
        return x;
      }(),
      [] {
        Floats x(40000, -2.0f);
        x[17] = -INFINITY;
        return x;
      }(),
      Floats(33000, -3.0f),
      [] {
        Floats x(90000);
        for (std::size_t i = 0; i < x.size(); ++i)
          x[i] = static_cast<float>(i % 97) * 0.125f - 4.0f;
        return x;
      }(),
      Floats(20000, 0.0f),
      Floats(65, 7.0f),
  };
  for (EmaMode mode : {EmaMode::exact, EmaMode::lagged})
    for (int64_t delay : {0, 3})
      for (const test::CpuRun& run : test::cpu_runs()) {
        const test::CpuRunScope scope(run);
        EmaConfig config;
        config.mode = mode;
        config.quant_delay = delay;
        config.freeze_step = 5;
        config.decay = 0.9f;
        config.quant = {4, false};
        EmaRangeState want_state{}, state{};
        ClipCount want_count{}, count{};
        for (std::size_t step = 0; step < batches.size(); ++step) {
          const Floats& x = batches[step];
          const int64_t n = static_cast<int64_t>(x.size());
          Floats want_y(x.size()), y(x.size());
          Words want_mask(mask_words(n, MaskFormat::sides)), mask(want_mask.size(), kGarbageWord);
          ref::ema_fake_quant(x.data(), want_y.data(), n, &want_state, config, want_mask.data(),
                              MaskFormat::sides, &want_count);
          cpu::ema_fake_quant(x.data(), y.data(), n, &state, config, mask.data(), MaskFormat::sides,
                              &count);
          const std::string what = std::string(mode == EmaMode::exact ? "exact" : "lagged") +
                                   ", delay " + std::to_string(delay) + ", step " +
                                   std::to_string(step) + ", " + run.name();
          ASSERT_TRUE(same_state(want_state, state)) << what;
          EXPECT_TRUE(same_bits(want_y, y)) << what;
          EXPECT_TRUE(same_bits(want_mask, mask)) << what;
          EXPECT_TRUE(same_counts(want_count, count)) << what;
        }
        // The sequence exercised what it means to: skips, a freeze, quantization.
        EXPECT_EQ(want_state.skipped, 2u);
        EXPECT_EQ(want_state.updates, 3);
        EXPECT_GT(want_count.clipped, 0u);
      }
}

// ---- Bias + ReLU + EMA fake quant ----

ChannelLayout random_activation_layout(std::mt19937& rng) {
  const auto pick = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  switch (rng() % 6) {
    case 0:
      return {pick(1, 300), pick(1, 300), 1};  // Linear
    case 1:
      return {pick(1, 64), pick(1, 32), std::vector<int64_t>{4, 9, 16, 49}[rng() % 4]};
    case 2:
      return {pick(1, 16), pick(1, 16), std::vector<int64_t>{100, 196, 784}[rng() % 3]};
    case 3:
      return ChannelLayout::per_tensor(pick(1, 150000));
    case 4:
      return {pick(1, 3), pick(20000, 70000),
              1};  // a [channels, inner] block too large to spread the bias
    default:
      return {pick(1, 9), pick(1, 5), pick(1, 127)};
  }
}

TEST(CpuQuantBiasReluEma, SequencesMatchTheReference) {
  std::mt19937 rng(77);
  for (int trial = 0; trial < 24; ++trial) {
    EmaCase c = random_ema_case(rng);
    c.format = MaskFormat::pass;
    const ChannelLayout layout = random_activation_layout(rng);
    const int64_t n = layout.size();
    const bool with_bias = trial % 4 != 3;
    Floats bias = make_values(layout.channels, rng, {0.0f, -0.0f, 1.0f}, /*finite=*/true);
    if (trial % 8 == 1) bias[0] = NAN;  // a bias can poison a channel too
    for (const test::CpuRun& run : test::cpu_runs()) {
      const test::CpuRunScope scope(run);
      std::mt19937 batches(500 + trial);
      EmaRangeState want_state{}, state{};
      ClipCount want_count{}, count{};
      for (int step = 0; step < 5; ++step) {
        const Floats x = ema_batch(n, batches, static_cast<int>(batches() % 8));
        const std::string what = describe(c) + ", " + describe(layout) +
                                 (with_bias ? "" : ", no bias") + ", step " + std::to_string(step) +
                                 ", " + run.name();
        Floats want_y(x.size());
        Words want_mask(mask_words(n));
        ref::bias_relu_ema_fake_quant(x.data(), with_bias ? bias.data() : nullptr, layout,
                                      want_y.data(), &want_state, c.config,
                                      c.with_mask ? want_mask.data() : nullptr,
                                      c.with_count ? &want_count : nullptr);
        Floats y = c.in_place ? x : Floats(x.size(), from_bits(kGarbageWord));
        Words mask(want_mask.size(), kGarbageWord);
        if (!c.with_mask) mask = want_mask;
        cpu::bias_relu_ema_fake_quant(
            c.in_place ? y.data() : x.data(), with_bias ? bias.data() : nullptr, layout, y.data(),
            &state, c.config, c.with_mask ? mask.data() : nullptr, c.with_count ? &count : nullptr);
        ASSERT_TRUE(same_state(want_state, state)) << what;
        EXPECT_TRUE(same_bits(want_y, y)) << what;
        EXPECT_TRUE(same_bits(want_mask, mask)) << what;
        EXPECT_TRUE(same_counts(want_count, count)) << what;
      }
    }
  }
}

// ---- Bias + activation, add ----

TEST(CpuQuantBiasActivation, MatchesTheReference) {
  std::mt19937 rng(13);
  for (int trial = 0; trial < 30; ++trial) {
    const ChannelLayout layout = random_activation_layout(rng);
    const bool relu = trial % 2 == 0, with_bias = trial % 5 != 4, in_place = trial % 3 == 0;
    Floats bias = make_values(layout.channels, rng, {0.0f, -0.0f});
    bias[0] = from_bits(0xff812345u);  // its NaN meets x's NaNs in channel 0
    const Floats x = make_values(layout.size(), rng, {0.0f, -0.0f});
    Floats want(x.size());
    ref::bias_activation(x.data(), with_bias ? bias.data() : nullptr, layout, relu, want.data());
    for (const test::CpuRun& run : test::cpu_runs()) {
      const test::CpuRunScope scope(run);
      Floats y = in_place ? x : Floats(x.size(), from_bits(kGarbageWord));
      cpu::bias_activation(in_place ? y.data() : x.data(), with_bias ? bias.data() : nullptr,
                           layout, relu, y.data());
      EXPECT_TRUE(same_bits(want, y)) << describe(layout) << (relu ? ", relu" : "")
                                      << (with_bias ? "" : ", no bias") << ", " << run;
    }
  }
}

TEST(CpuQuantAdd, MatchesTheReferenceInPlaceToo) {
  std::mt19937 rng(17);
  for (int64_t n : {int64_t{1}, int64_t{45}, int64_t{16384}, int64_t{16385}, int64_t{200003}}) {
    Floats a = make_values(n, rng, {0.0f, -0.0f}), b = make_values(n, rng, {0.0f, -0.0f});
    // Every pair of special values somewhere, NaN + NaN of other payloads too.
    for (std::size_t k = 0; k < a.size(); ++k) {
      a[k] = k < kSpecials.size() * kSpecials.size() ? kSpecials[k / kSpecials.size()] : a[k];
      b[k] = k < kSpecials.size() * kSpecials.size() ? kSpecials[k % kSpecials.size()] : b[k];
    }
    Floats want(a.size());
    ref::add(a.data(), b.data(), n, want.data());
    for (const test::CpuRun& run : test::cpu_runs()) {
      const test::CpuRunScope scope(run);
      Floats y(a.size(), from_bits(kGarbageWord)), in_a = a, in_b = b;
      cpu::add(a.data(), b.data(), n, y.data());
      cpu::add(in_a.data(), b.data(), n, in_a.data());
      cpu::add(a.data(), in_b.data(), n, in_b.data());
      EXPECT_TRUE(same_bits(want, y)) << n << ", " << run;
      EXPECT_TRUE(same_bits(want, in_a)) << n << ", " << run << ", y == a";
      EXPECT_TRUE(same_bits(want, in_b)) << n << ", " << run << ", y == b";
    }
  }
}

// ---- STE backward, quant_delay identity ----

TEST(CpuQuantSte, BackwardMatchesTheReferenceInBothFormats) {
  std::mt19937 rng(23);
  for (int64_t n : {int64_t{1}, int64_t{33}, int64_t{16385}, int64_t{100000}, int64_t{200001}})
    for (MaskFormat format : {MaskFormat::pass, MaskFormat::sides}) {
      const Floats dy = make_values(n, rng, {0.0f, -0.0f, -1.0f});
      Words mask(mask_words(n, format));
      for (auto& w : mask) w = rng();
      Floats want(dy.size());
      ref::ste_backward(dy.data(), mask.data(), format, n, want.data());
      for (const test::CpuRun& run : test::cpu_runs()) {
        const test::CpuRunScope scope(run);
        Floats dx(dy.size(), from_bits(kGarbageWord)), in_place = dy;
        cpu::ste_backward(dy.data(), mask.data(), format, n, dx.data());
        cpu::ste_backward(in_place.data(), mask.data(), format, n, in_place.data());
        EXPECT_TRUE(same_bits(want, dx)) << n << ", " << run;
        EXPECT_TRUE(same_bits(want, in_place)) << n << ", " << run << ", in place";
      }
    }
}

TEST(CpuQuantQuantDelayIdentity, CopiesBeforeTheDelayAndLeavesAllAfter) {
  std::mt19937 rng(29);
  for (int64_t n : {int64_t{7}, int64_t{16385}, int64_t{120001}})
    for (int64_t step : {0, 2, 3, 9})
      for (bool with_mask : {true, false}) {
        const Floats x = make_values(n, rng, {0.0f});
        const Floats before = make_values(n, rng, {1.0f});  // what a quantizer wrote
        Floats want = before;
        Words want_mask(mask_words(n), 0x5555aaaau);
        ref::quant_delay_identity(x.data(), want.data(), n, &step, 3,
                                  with_mask ? want_mask.data() : nullptr);
        for (const test::CpuRun& run : test::cpu_runs()) {
          const test::CpuRunScope scope(run);
          Floats y = before;
          Words mask(want_mask.size(), 0x5555aaaau);
          if (step < 3 && with_mask) mask.assign(mask.size(), kGarbageWord);
          cpu::quant_delay_identity(x.data(), y.data(), n, &step, 3,
                                    with_mask ? mask.data() : nullptr);
          EXPECT_TRUE(same_bits(want, y)) << n << ", step " << step << ", " << run;
          if (with_mask) {
            EXPECT_TRUE(same_bits(want_mask, mask)) << n << ", step " << step << ", " << run;
          }
        }
      }
}

// ---- Empty tensors and errors ----

TEST(CpuQuantArguments, EmptyTensorsDoNothing) {
  EmaRangeState state{};
  state.steps = 4;
  const EmaRangeState before = state;
  ClipCount count{1, 2};
  const float lo = 0.0f, hi = 1.0f, s = 0.5f;
  const std::int32_t z = 0;
  std::uint32_t word = kGarbageWord;
  const ChannelLayout empty{3, 2, 0};
  cpu::fake_quant_range(kNullX, kNullY, empty, &lo, &hi, {8, false}, &word, MaskFormat::sides);
  cpu::fake_quant_affine(kNullX, kNullY, empty, &s, &z, {0, 255}, &word, &count);
  cpu::ema_fake_quant(kNullX, kNullY, 0, &state, EmaConfig{}, &word, MaskFormat::pass, &count);
  cpu::bias_relu_ema_fake_quant(nullptr, nullptr, empty, nullptr, &state, EmaConfig{}, &word,
                                &count);
  cpu::lsq_forward(nullptr, nullptr, empty, &s, {-8, 7}, &count);
  cpu::ste_backward(kNullX, nullptr, MaskFormat::pass, 0, kNullY);
  const std::int64_t step = 0;
  cpu::quant_delay_identity(nullptr, nullptr, 0, &step, 5, &word);
  cpu::bias_activation(nullptr, nullptr, empty, true, nullptr);
  cpu::add(nullptr, nullptr, 0, nullptr);
  EXPECT_TRUE(same_state(before, state));
  EXPECT_EQ(count.quantized, 1u);
  EXPECT_EQ(count.clipped, 2u);
  EXPECT_EQ(word, kGarbageWord);
}

// Both calls throw a lowbit::Error, with the same what() (message and place).
void expect_same_error(const std::function<void()>& reference, const std::function<void()>& fast,
                       const std::string& what) {
  std::string want, got;
  try {
    reference();
  } catch (const Error& e) {
    want = e.what();
  }
  EXPECT_THROW(fast(), Error) << what;
  try {
    fast();
  } catch (const Error& e) {
    got = e.what();
  }
  EXPECT_FALSE(want.empty()) << what << ": the reference did not throw";
  EXPECT_EQ(want, got) << what;
}

TEST(CpuQuantArguments, BadArgumentsThrowTheReferenceErrors) {
  Floats x(64, 0.5f), y(64);
  Words mask(4);
  const ChannelLayout layout{2, 2, 16};
  const Floats lo = {0.0f, -1.0f}, hi = {1.0f, 1.0f}, reversed = {2.0f, -1.0f},
               nan_range = {NAN, 1.0f}, scale = {0.5f, 0.25f}, bad_scale = {0.5f, 0.0f};
  const std::vector<std::int32_t> zp = {0, 3}, bad_zp = {0, 300};
  const EmaRangeState initial{};
  EmaRangeState state_a{}, state_b{};
  // The float overloads of ref:: and cpu::fake_quant_range.
  using RangeFn = void (*)(const float*, float*, const ChannelLayout&, const float*, const float*,
                           RangeQuant, std::uint32_t*, MaskFormat);
  const auto range = [&](RangeFn fq, RangeQuant q, const ChannelLayout& l, const float* mn,
                         const float* mx, const float* in) {
    return [=, &y, &mask] { fq(in, y.data(), l, mn, mx, q, mask.data(), MaskFormat::pass); };
  };
  const auto range_both = [&](RangeQuant q, const ChannelLayout& l, const float* mn,
                              const float* mx, const float* in, const std::string& what) {
    expect_same_error(range(ref::fake_quant_range, q, l, mn, mx, in),
                      range(cpu::fake_quant_range, q, l, mn, mx, in), what);
  };
  range_both({1, false}, layout, lo.data(), hi.data(), x.data(), "1 bit");
  range_both({17, false}, layout, lo.data(), hi.data(), x.data(), "17 bits");
  range_both({8, false}, {2, -2, 16}, lo.data(), hi.data(), x.data(), "negative layout");
  range_both({8, false}, layout, lo.data(), hi.data(), nullptr, "null x");
  range_both({8, false}, layout, nullptr, hi.data(), x.data(), "null min");
  range_both({8, false}, layout, reversed.data(), hi.data(), x.data(), "min > max");
  range_both({8, false}, layout, nan_range.data(), hi.data(), x.data(), "NaN bound");

  const auto affine_both = [&](AffineQuant q, const float* s, const std::int32_t* z,
                               const std::string& what) {
    expect_same_error([&] { ref::fake_quant_affine(x.data(), y.data(), layout, s, z, q, nullptr); },
                      [&] { cpu::fake_quant_affine(x.data(), y.data(), layout, s, z, q, nullptr); },
                      what);
  };
  affine_both({0, 255}, bad_scale.data(), zp.data(), "zero scale");
  affine_both({0, 255}, scale.data(), bad_zp.data(), "zero point outside the grid");
  affine_both({0, 1}, scale.data(), zp.data(), "a 1-bit grid");
  affine_both({0, 255}, scale.data(), nullptr, "null zero point");

  const auto ema_both = [&](const EmaConfig& config, EmaRangeState* sa, EmaRangeState* sb,
                            const float* in, const std::string& what) {
    expect_same_error([&] { ref::ema_fake_quant(in, y.data(), 64, sa, config, nullptr); },
                      [&] { cpu::ema_fake_quant(in, y.data(), 64, sb, config, nullptr); }, what);
    expect_same_error(
        [&] { ref::bias_relu_ema_fake_quant(in, nullptr, layout, y.data(), sa, config, nullptr); },
        [&] { cpu::bias_relu_ema_fake_quant(in, nullptr, layout, y.data(), sb, config, nullptr); },
        what + " (bias_relu)");
  };
  EmaConfig config;
  config.decay = 1.0f;
  ema_both(config, &state_a, &state_b, x.data(), "decay 1");
  config = EmaConfig{};
  config.quant_delay = -1;
  ema_both(config, &state_a, &state_b, x.data(), "negative quant_delay");
  config = EmaConfig{};
  config.freeze_step = -1;
  ema_both(config, &state_a, &state_b, x.data(), "negative freeze_step");
  config = EmaConfig{};
  config.quant.bits = 20;
  ema_both(config, &state_a, &state_b, x.data(), "20 bits");
  ema_both(EmaConfig{}, nullptr, nullptr, x.data(), "null state");
  ema_both(EmaConfig{}, &state_a, &state_b, nullptr, "null x");
  EXPECT_TRUE(same_state(initial, state_b));  // a rejected call leaves the state alone

  expect_same_error(
      [&] {
        ref::lsq_forward(x.data(), y.data(), layout, scale.data(), {1, 255});
      },
      [&] {
        cpu::lsq_forward(x.data(), y.data(), layout, scale.data(), {1, 255});
      },
      "LSQ grid without 0");
  expect_same_error([&] { ref::ste_backward(x.data(), nullptr, MaskFormat::pass, 64, y.data()); },
                    [&] { cpu::ste_backward(x.data(), nullptr, MaskFormat::pass, 64, y.data()); },
                    "STE without a mask");
  const std::int64_t step = 0;
  expect_same_error([&] { ref::quant_delay_identity(x.data(), y.data(), 64, nullptr, 5, nullptr); },
                    [&] { cpu::quant_delay_identity(x.data(), y.data(), 64, nullptr, 5, nullptr); },
                    "null step");
  expect_same_error([&] { ref::quant_delay_identity(x.data(), y.data(), 64, &step, -1, nullptr); },
                    [&] { cpu::quant_delay_identity(x.data(), y.data(), 64, &step, -1, nullptr); },
                    "negative quant_delay");
  expect_same_error([&] { ref::bias_activation(x.data(), nullptr, layout, true, nullptr); },
                    [&] { cpu::bias_activation(x.data(), nullptr, layout, true, nullptr); },
                    "bias_activation without y");
  expect_same_error([&] { ref::add(x.data(), nullptr, 64, y.data()); },
                    [&] { cpu::add(x.data(), nullptr, 64, y.data()); }, "add without b");
  expect_same_error([&] { ref::add(x.data(), x.data(), -1, y.data()); },
                    [&] { cpu::add(x.data(), x.data(), -1, y.data()); }, "negative n");
}

}  // namespace
}  // namespace lowbit
