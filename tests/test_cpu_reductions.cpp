// lowbit::cpu per-channel reductions against lowbit::ref, bit for bit (raw
// bits, signed zeros and NaN payloads included, but for the payload of a NaN
// sum: see Outputs) with 1, 2 and 3 threads at every instruction set level
// this CPU runs (cpu_isa.hpp), on layouts that take every branch of
// reduce_items, with special values in the data; and the same errors as ref.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu_reductions.hpp"
#include "cpu_isa_scope.hpp"
#include "lowbit/error.hpp"
#include "lowbit/ref.hpp"
#include "reduction_order.hpp"
#include "test_util.hpp"

namespace lowbit {

// Layouts in gtest's messages (found by argument-dependent lookup).
static void PrintTo(const ChannelLayout& l, std::ostream* os) {
  *os << "{" << l.outer << ", " << l.channels << ", " << l.inner << "}";
}

namespace {

// A typed null: a bare nullptr would not choose between the float, bf16 and
// fp16 overloads.
const float* const kNullX = nullptr;

using test::random_values;
using test::same_bits;
using Floats = std::vector<float>;
using Words = std::vector<std::uint32_t>;

constexpr float kInf = std::numeric_limits<float>::infinity();

float from_bits(std::uint32_t u) {
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

/// Values that a wrong order, a dropped element or a wrong select would show:
/// mixed magnitudes, and (with `specials`) NaN of both signs and two payloads,
/// ±Inf, ±0, subnormals and ±FLT_MAX, rare enough that most items stay finite.
Floats awkward_values(std::int64_t n, std::uint32_t seed, bool specials) {
  Floats v = random_values(n, seed);
  std::mt19937 rng(seed * 2654435761u + 1);
  for (std::size_t i = 0; i < v.size(); ++i)
    if (rng() % 5 == 0) v[i] *= 1e6f;
  if (!specials) return v;
  const float special[] = {from_bits(0x7fc00000u),
                           from_bits(0xffc00000u),
                           from_bits(0x7fc01234u),
                           kInf,
                           -kInf,
                           0.0f,
                           -0.0f,
                           1e-40f,
                           -3e-42f,
                           FLT_MAX,
                           -FLT_MAX};
  for (std::size_t i = 0; i < v.size(); ++i)
    if (rng() % 3000 == 0) v[i] = special[rng() % std::size(special)];
  return v;
}

Words random_words(std::int64_t count, std::uint32_t seed) {
  std::mt19937 rng(seed);
  Words w(static_cast<std::size_t>(count));
  for (auto& x : w) x = rng();
  return w;
}

/// Every branch of reduce_items: inner == 1 (items of 2048 rows, the last
/// short; one or more blocks of 32 channels, the last partial or not), small
/// inner with many rows per item, rows of one item, rows cut into pieces (the
/// last short, or one element), a channel with more than 256 items, and a
/// per-tensor big n.
const std::vector<ChannelLayout>& fixed_layouts() {
  static const std::vector<ChannelLayout> layouts = {
      {1, 1, 1},      {1, 1, 31},    {1, 1, 33},    {5, 7, 1},    {300, 17, 1},
      {4100, 17, 1},  {2049, 3, 1},  {1000, 2, 3},  {50, 5, 7},   {300, 3, 100},
      {9, 6, 784},    {3, 2, 1023},  {3, 2, 2047},  {3, 2, 2048}, {2, 3, 2049},
      {3, 2, 5000},   {1, 16, 150},  {1, 1, 4096},  {1, 6, 25},   {150, 1, 2049},
      {1, 1, 300000}, {64, 16, 100}, {256, 120, 1}, {300, 64, 1}, {4100, 33, 1}};
  return layouts;
}

/// Seeded layouts over the same branches, channels 1..17.
std::vector<ChannelLayout> random_layouts(std::uint32_t seed, int count) {
  std::mt19937 rng(seed);
  const auto pick = [&](std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
  };
  std::vector<ChannelLayout> layouts;
  for (int i = 0; i < count; ++i) {
    const std::int64_t channels = pick(1, 17);
    switch (i % 4) {
      case 0:
        layouts.push_back({pick(1, 5000), channels, 1});
        break;
      case 1:
        layouts.push_back({pick(1, 300), channels, pick(2, 300)});
        break;
      case 2:
        layouts.push_back({pick(1, 40), channels, pick(301, 2047)});
        break;
      default:
        layouts.push_back({pick(1, 3), channels, pick(2048, 7000)});
    }
  }
  return layouts;
}

std::vector<ChannelLayout> all_layouts() {
  std::vector<ChannelLayout> layouts = fixed_layouts();
  for (const ChannelLayout& l : random_layouts(2024, 16)) layouts.push_back(l);
  return layouts;
}

std::string describe(const ChannelLayout& l) { return ::testing::PrintToString(l); }

/// A zeroed workspace of the size the op needs.
struct Scratch {
  Floats storage;
  Workspace get(const ChannelLayout& layout) { return test::host_workspace(storage, layout); }
};

std::size_t channels_of(const ChannelLayout& l) { return static_cast<std::size_t>(l.channels); }

/// Outputs of one call. `exact` ones must have ref's bits. So must the sums in
/// `reduced`, except that a NaN may carry another payload: where two NaNs
/// meet in a + b, x86 keeps the first operand's, and GCC orders the operands
/// of each addition in ref's compiled tree as it likes (the GPU gives its
/// canonical NaN), and so may those of another instruction set level. Across
/// thread counts at one level lowbit::cpu must agree to the bit.
struct Outputs {
  std::vector<Floats> exact;
  std::vector<Floats> reduced;
};

/// NaN where `want` has NaN becomes want's NaN, if got has NaN there too.
Floats with_nans_of(const Floats& want, Floats got) {
  for (std::size_t i = 0; i < std::min(want.size(), got.size()); ++i)
    if (std::isnan(want[i]) && std::isnan(got[i])) got[i] = want[i];
  return got;
}

::testing::AssertionResult same_outputs(const Outputs& want, const Outputs& got,
                                        bool any_nan_in_sums) {
  if (want.exact.size() != got.exact.size() || want.reduced.size() != got.reduced.size())
    return ::testing::AssertionFailure() << "output counts differ";
  for (std::size_t k = 0; k < want.exact.size(); ++k)
    if (auto result = same_bits(want.exact[k], got.exact[k]); !result)
      return result << " (output " << k << ")";
  for (std::size_t k = 0; k < want.reduced.size(); ++k) {
    const Floats& sums = got.reduced[k];
    if (auto result = same_bits(want.reduced[k],
                                any_nan_in_sums ? with_nans_of(want.reduced[k], sums) : sums);
        !result)
      return result << " (sum " << k << ")";
  }
  return ::testing::AssertionSuccess();
}

/// run(ref) once, run(cpu) each of test::cpu_runs()'s ways: cpu must equal
/// ref (see Outputs) every way, and give the same bits with 1, 2 and 3
/// threads at each level.
void expect_cpu_matches_ref(const std::function<Outputs(bool cpu)>& run) {
  const Outputs want = run(false);
  Outputs one_thread;
  for (const test::CpuRun& way : test::cpu_runs()) {
    const test::CpuRunScope scope(way);
    const Outputs got = run(true);
    EXPECT_TRUE(same_outputs(want, got, true)) << way;
    if (way.threads == 1)  // the first at its level
      one_thread = got;
    else
      EXPECT_TRUE(same_outputs(one_thread, got, false)) << way << " vs 1 thread";
  }
}

// ---------------------------------------------------------------------------

TEST(CpuReductions, WeightRangeMatchesRef) {
  for (const ChannelLayout& layout : all_layouts())
    for (const bool specials : {false, true})
      for (const bool symmetric : {false, true}) {
        SCOPED_TRACE(describe(layout) + (specials ? " specials" : "") +
                     (symmetric ? " symmetric" : ""));
        const Floats w = awkward_values(layout.size(), 11, specials);
        expect_cpu_matches_ref([&](bool cpu) {
          Floats min(channels_of(layout), -1.0f), max(channels_of(layout), -1.0f);
          Scratch scratch;
          (cpu ? cpu::weight_range : ref::weight_range)(w.data(), layout, symmetric, min.data(),
                                                        max.data(), scratch.get(layout));
          return Outputs{{min, max}, {}};
        });
      }
}

// Channels whose finite weights are all zeros of either sign, or that hold no
// finite weight: the bounds are +0 both.
TEST(CpuReductions, WeightRangeOfZerosAndNonFiniteChannels) {
  const ChannelLayout layout{40, 3, 60};
  Floats w(static_cast<std::size_t>(layout.size()));
  for (std::int64_t i = 0; i < layout.size(); ++i) {
    const std::int64_t c = test::channel_of(layout, i);
    w[static_cast<std::size_t>(i)] = c == 0   ? (i % 3 == 0 ? -0.0f : 0.0f)
                                     : c == 1 ? (i % 2 == 0 ? kInf : std::nanf(""))
                                              : static_cast<float>(i % 7) - 3.0f;
  }
  for (const bool symmetric : {false, true})
    expect_cpu_matches_ref([&](bool cpu) {
      Floats min(3, -1.0f), max(3, -1.0f);
      Scratch scratch;
      (cpu ? cpu::weight_range : ref::weight_range)(w.data(), layout, symmetric, min.data(),
                                                    max.data(), scratch.get(layout));
      return Outputs{{min, max}, {}};
    });
}

/// Mask words as floats of the same bits, for same_bits.
Floats bits_as_floats(const Words& words) {
  Floats f(words.size());
  std::memcpy(f.data(), words.data(), words.size() * sizeof(float));
  return f;
}

// Per channel (multiply) and per tensor (divide), rows that end inside a
// mask word, with and without a mask (filled with garbage first), and y = w.
TEST(CpuReductions, FakeQuantWeightsMatchesRef) {
  for (const ChannelLayout& layout :
       {ChannelLayout{1, 6, 25}, ChannelLayout{1, 16, 150}, ChannelLayout{1, 120, 400},
        ChannelLayout{3, 2, 5000}, ChannelLayout{7, 3, 33}, ChannelLayout{1, 1, 40000}})
    for (const bool symmetric : {false, true})
      for (const int bits : {2, 4, 8})
        for (const bool masked : {false, true}) {
          SCOPED_TRACE(describe(layout) + " bits " + std::to_string(bits) +
                       (symmetric ? " symmetric" : "") + (masked ? " mask" : ""));
          const Floats w = awkward_values(layout.size(), 12 + bits, true);
          const bool in_place = bits == 4;
          expect_cpu_matches_ref([&](bool cpu) {
            Floats y = in_place ? w : Floats(w.size(), -1.0f);
            Floats min(channels_of(layout)), max(channels_of(layout));
            Words mask(static_cast<std::size_t>(mask_words(layout.size())), 0xdeadbeefu);
            Scratch scratch;
            (cpu ? cpu::fake_quant_weights : ref::fake_quant_weights)(
                in_place ? y.data() : w.data(), y.data(), layout, {bits, symmetric}, symmetric,
                min.data(), max.data(), masked ? mask.data() : nullptr, scratch.get(layout));
            return Outputs{{y, min, max, bits_as_floats(mask)}, {}};
          });
        }
}

TEST(CpuReductions, SteBackwardRangeMatchesRef) {
  for (const ChannelLayout& layout : all_layouts())
    for (const bool specials : {false, true}) {
      SCOPED_TRACE(describe(layout) + (specials ? " specials" : ""));
      const Floats dy = awkward_values(layout.size(), 21, specials);
      const Words mask = random_words(mask_words(layout.size(), MaskFormat::sides), 22);
      expect_cpu_matches_ref([&](bool cpu) {
        Floats dx(dy.size(), -1.0f), d_min(channels_of(layout)), d_max(channels_of(layout));
        Scratch scratch;
        if (cpu)
          cpu::ste_backward_range(dy.data(), mask.data(), layout, dx.data(), d_min.data(),
                                  d_max.data(), scratch.get(layout));
        else
          ref::ste_backward_range(dy.data(), mask.data(), layout, dx.data(), d_min.data(),
                                  d_max.data(), scratch.get(layout));
        return Outputs{{dx}, {d_min, d_max}};
      });
    }
}

TEST(CpuReductions, BiasActivationBackwardMatchesRef) {
  for (const ChannelLayout& layout : all_layouts())
    for (const bool relu : {false, true})
      for (const bool masked : {false, true})
        for (const bool with_bias : {false, true}) {
          SCOPED_TRACE(describe(layout) + (relu ? " relu" : "") + (masked ? " mask" : "") +
                       (with_bias ? " d_bias" : ""));
          const bool specials = (layout.size() + relu + masked) % 2 == 0;
          const Floats dy = awkward_values(layout.size(), 31, specials);
          const Floats y = awkward_values(layout.size(), 32, true);
          const Words mask = random_words(mask_words(layout.size()), 33);
          expect_cpu_matches_ref([&](bool cpu) {
            Floats dx(dy.size(), -1.0f), d_bias(channels_of(layout), -1.0f);
            Scratch scratch;
            (cpu ? cpu::bias_activation_backward : ref::bias_activation_backward)(
                dy.data(), relu ? y.data() : nullptr, layout, relu, masked ? mask.data() : nullptr,
                dx.data(), with_bias ? d_bias.data() : nullptr,
                with_bias ? scratch.get(layout) : Workspace{});
            return Outputs{{dx}, {d_bias}};
          });
        }
}

// In place, as WeightedLayer calls it: dx is dy.
TEST(CpuReductions, BiasActivationBackwardInPlace) {
  for (const ChannelLayout& layout :
       {ChannelLayout{256, 6, 784}, ChannelLayout{256, 16, 100}, ChannelLayout{256, 120, 1},
        ChannelLayout{3, 2, 5000}, ChannelLayout{1, 1, 300000}})
    for (const bool with_bias : {false, true}) {
      SCOPED_TRACE(describe(layout) + (with_bias ? " d_bias" : ""));
      const Floats dy = awkward_values(layout.size(), 41, true);
      const Floats y = awkward_values(layout.size(), 42, true);
      const Words mask = random_words(mask_words(layout.size()), 43);
      const auto run = [&](bool cpu, bool in_place) {
        Floats g = dy, dx(dy.size()), d_bias(channels_of(layout), -1.0f);
        Scratch scratch;
        (cpu ? cpu::bias_activation_backward : ref::bias_activation_backward)(
            g.data(), y.data(), layout, true, mask.data(), in_place ? g.data() : dx.data(),
            with_bias ? d_bias.data() : nullptr, with_bias ? scratch.get(layout) : Workspace{});
        return Outputs{{in_place ? g : dx}, {d_bias}};
      };
      const Outputs want = run(false, false);
      for (const test::CpuRun& way : test::cpu_runs()) {
        const test::CpuRunScope scope(way);
        EXPECT_TRUE(same_outputs(want, run(true, true), true)) << way;
      }
    }
}

struct LsqCase {
  LsqQuant quant;
  std::string name;
};

std::vector<LsqCase> lsq_grids() {
  std::vector<LsqCase> grids;
  for (int bits = 2; bits <= 8; ++bits) {
    grids.push_back({LsqQuant::signed_bits(bits), "signed " + std::to_string(bits)});
    grids.push_back({LsqQuant::unsigned_bits(bits), "unsigned " + std::to_string(bits)});
  }
  return grids;
}

/// Per-channel scales around the data's spread, with ones that make_lsq
/// clamps (tiny, zero, negative, NaN) and an infinite one.
Floats lsq_scales(std::int64_t channels, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> log_scale(-5.0f, 0.5f);
  const float odd[] = {1e-12f, 0.0f, -0.5f, std::nanf(""), kInf};
  Floats s(static_cast<std::size_t>(channels));
  for (std::size_t c = 0; c < s.size(); ++c)
    s[c] = rng() % 4 == 0 ? odd[rng() % std::size(odd)] : std::exp2(log_scale(rng));
  return s;
}

TEST(CpuReductions, LsqBackwardMatchesRef) {
  const std::vector<LsqCase> grids = lsq_grids();
  std::size_t g = 0;
  for (const ChannelLayout& layout : all_layouts())
    for (const bool specials : {false, true}) {
      // A different grid for each case, every grid several times.
      const LsqCase& grid = grids[g++ % grids.size()];
      SCOPED_TRACE(describe(layout) + " " + grid.name + (specials ? " specials" : ""));
      const Floats dy = awkward_values(layout.size(), 51, specials);
      Floats x = awkward_values(layout.size(), 52, specials);
      const Floats scale = lsq_scales(layout.channels, 53 + static_cast<std::uint32_t>(g));
      // Put most x within a few grid lengths, and some exactly on grid points.
      for (std::int64_t i = 0; i < layout.size(); ++i) {
        const float s = scale[static_cast<std::size_t>(test::channel_of(layout, i))];
        float& v = x[static_cast<std::size_t>(i)];
        if (std::isfinite(s) && s > 1e-6f && std::isfinite(v))
          v = i % 5 == 0 ? std::round(v) * s : v * s * static_cast<float>(grid.quant.qmax) / 4.0f;
      }
      expect_cpu_matches_ref([&](bool cpu) {
        Floats dx(dy.size(), -1.0f), d_scale(channels_of(layout), -1.0f);
        Scratch scratch;
        (cpu ? cpu::lsq_backward : ref::lsq_backward)(dy.data(), x.data(), layout, scale.data(),
                                                      grid.quant, dx.data(), d_scale.data(),
                                                      scratch.get(layout));
        return Outputs{{dx}, {d_scale}};
      });
    }
}

TEST(CpuReductions, LsqInitScaleMatchesRef) {
  const std::vector<LsqCase> grids = lsq_grids();
  std::size_t g = 0;
  for (const ChannelLayout& layout : all_layouts())
    for (const bool specials : {false, true}) {
      const LsqCase& grid = grids[g++ % grids.size()];
      SCOPED_TRACE(describe(layout) + " " + grid.name + (specials ? " specials" : ""));
      Floats x = awkward_values(layout.size(), 61, specials);
      if (!specials && layout.size() > 5)  // an all-zero channel: the scale floor
        for (std::int64_t i = 0; i < layout.size(); ++i)
          if (test::channel_of(layout, i) == layout.channels - 1)
            x[static_cast<std::size_t>(i)] = i % 2 == 0 ? 0.0f : -0.0f;
      expect_cpu_matches_ref([&](bool cpu) {
        Floats scale(channels_of(layout), -1.0f);
        Scratch scratch;
        (cpu ? cpu::lsq_init_scale : ref::lsq_init_scale)(x.data(), layout, grid.quant,
                                                          scale.data(), scratch.get(layout));
        return Outputs{{scale}, {}};
      });
    }
}

// The comparisons above can fail: with these data a channel's sum in plain
// index order, or with its items cut another way, has other bits than ref's.
TEST(CpuReductions, DataAreOrderSensitive) {
  const Floats dy = awkward_values(300000, 31, false);
  const auto d_bias_of = [&](const ChannelLayout& layout) {
    Floats dx(dy.size()), d_bias(1);
    Scratch scratch;
    ref::bias_activation_backward(dy.data(), nullptr, layout, false, nullptr, dx.data(),
                                  d_bias.data(), scratch.get(layout));
    return d_bias;
  };
  const Floats want = d_bias_of({1, 1, 300000});
  float plain = 0.0f;
  for (const float v : dy) plain += v;
  EXPECT_FALSE(same_bits(want, Floats{plain}));
  EXPECT_FALSE(same_bits(want, d_bias_of({2, 1, 150000})));
}

// n == 0 writes nothing and needs no pointers (outer, channels or inner 0).
TEST(CpuReductions, EmptyTensorsWriteNothing) {
  for (const ChannelLayout& layout :
       {ChannelLayout{0, 3, 5}, ChannelLayout{4, 3, 0}, ChannelLayout{4, 0, 5}}) {
    SCOPED_TRACE(describe(layout));
    Floats out(3, 7.0f);
    const Workspace none{};
    cpu::weight_range(nullptr, layout, false, out.data(), out.data(), none);
    cpu::fake_quant_weights(nullptr, nullptr, layout, {8, false}, true, out.data(), out.data(),
                            nullptr, none);
    cpu::ste_backward_range(kNullX, nullptr, layout, nullptr, out.data(), out.data(), none);
    cpu::bias_activation_backward(nullptr, nullptr, layout, true, nullptr, nullptr, out.data(),
                                  none);
    cpu::lsq_backward(nullptr, nullptr, layout, out.data(), LsqQuant::signed_bits(4), nullptr,
                      out.data(), none);
    cpu::lsq_init_scale(nullptr, layout, LsqQuant::signed_bits(4), out.data(), none);
    EXPECT_TRUE(same_bits(Floats(3, 7.0f), out));
  }
}

/// Both calls throw lowbit::Error with the same message, or neither throws.
::testing::AssertionResult same_error(const std::function<void()>& ref_call,
                                      const std::function<void()>& cpu_call) {
  const auto message = [](const std::function<void()>& call) -> std::string {
    try {
      call();
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  const std::string want = message(ref_call), got = message(cpu_call);
  if (want == "(no error)") return ::testing::AssertionFailure() << "ref did not throw";
  if (want != got) return ::testing::AssertionFailure() << "ref: " << want << "\n cpu: " << got;
  return ::testing::AssertionSuccess();
}

TEST(CpuReductions, SameErrorsAsRef) {
  const ChannelLayout layout{2, 3, 50};
  Floats a(300), b(300), c(3);
  Words mask(64);
  Scratch scratch;
  const Workspace ws = scratch.get(layout);
  const Workspace small{ws.data, 4};
  const ChannelLayout negative{2, -3, 50};
  const LsqQuant bad_lsq{1, 7};  // no level 0
  float* p = a.data();
  float* q = c.data();
  const std::uint32_t* m = mask.data();

  EXPECT_TRUE(same_error([&] { ref::weight_range(nullptr, layout, false, q, q, ws); },
                         [&] { cpu::weight_range(nullptr, layout, false, q, q, ws); }));
  EXPECT_TRUE(same_error([&] { ref::weight_range(p, layout, false, q, q, small); },
                         [&] { cpu::weight_range(p, layout, false, q, q, small); }));
  EXPECT_TRUE(same_error([&] { ref::weight_range(p, negative, false, q, q, ws); },
                         [&] { cpu::weight_range(p, negative, false, q, q, ws); }));
  EXPECT_TRUE(same_error([&] { ref::weight_range(p, layout, false, q, nullptr, ws); },
                         [&] { cpu::weight_range(p, layout, false, q, nullptr, ws); }));
  EXPECT_TRUE(same_error(
      [&] {
        ref::fake_quant_weights(p, b.data(), layout, {1, false}, true, q, q, nullptr, ws);
      },
      [&] {
        cpu::fake_quant_weights(p, b.data(), layout, {1, false}, true, q, q, nullptr, ws);
      }));
  EXPECT_TRUE(same_error(
      [&] {
        ref::fake_quant_weights(p, nullptr, layout, {4, false}, true, q, q, nullptr, ws);
      },
      [&] {
        cpu::fake_quant_weights(p, nullptr, layout, {4, false}, true, q, q, nullptr, ws);
      }));
  EXPECT_TRUE(same_error(
      [&] {
        ref::fake_quant_weights(p, b.data(), layout, {4, false}, true, q, q, nullptr, small);
      },
      [&] {
        cpu::fake_quant_weights(p, b.data(), layout, {4, false}, true, q, q, nullptr, small);
      }));
  EXPECT_TRUE(same_error([&] { ref::ste_backward_range(p, nullptr, layout, b.data(), q, q, ws); },
                         [&] { cpu::ste_backward_range(p, nullptr, layout, b.data(), q, q, ws); }));
  EXPECT_TRUE(same_error([&] { ref::ste_backward_range(p, m, layout, b.data(), q, q, small); },
                         [&] { cpu::ste_backward_range(p, m, layout, b.data(), q, q, small); }));
  EXPECT_TRUE(same_error([&] { ref::ste_backward_range(p, m, layout, nullptr, q, q, ws); },
                         [&] { cpu::ste_backward_range(p, m, layout, nullptr, q, q, ws); }));
  EXPECT_TRUE(same_error(
      [&] { ref::bias_activation_backward(p, nullptr, layout, true, m, b.data(), q, ws); },
      [&] { cpu::bias_activation_backward(p, nullptr, layout, true, m, b.data(), q, ws); }));
  EXPECT_TRUE(same_error(
      [&] { ref::bias_activation_backward(p, p, layout, true, m, b.data(), q, small); },
      [&] { cpu::bias_activation_backward(p, p, layout, true, m, b.data(), q, small); }));
  EXPECT_TRUE(same_error(
      [&] { ref::bias_activation_backward(nullptr, p, layout, false, m, b.data(), q, ws); },
      [&] { cpu::bias_activation_backward(nullptr, p, layout, false, m, b.data(), q, ws); }));
  EXPECT_TRUE(same_error([&] { ref::lsq_backward(p, p, layout, q, bad_lsq, b.data(), q, ws); },
                         [&] { cpu::lsq_backward(p, p, layout, q, bad_lsq, b.data(), q, ws); }));
  EXPECT_TRUE(same_error(
      [&] { ref::lsq_backward(p, nullptr, layout, q, LsqQuant::signed_bits(4), b.data(), q, ws); },
      [&] {
        cpu::lsq_backward(p, nullptr, layout, q, LsqQuant::signed_bits(4), b.data(), q, ws);
      }));
  EXPECT_TRUE(same_error(
      [&] { ref::lsq_backward(p, p, layout, q, LsqQuant::signed_bits(4), b.data(), q, small); },
      [&] { cpu::lsq_backward(p, p, layout, q, LsqQuant::signed_bits(4), b.data(), q, small); }));
  EXPECT_TRUE(same_error([&] { ref::lsq_init_scale(p, layout, bad_lsq, q, ws); },
                         [&] { cpu::lsq_init_scale(p, layout, bad_lsq, q, ws); }));
  EXPECT_TRUE(
      same_error([&] { ref::lsq_init_scale(p, layout, LsqQuant::signed_bits(4), nullptr, ws); },
                 [&] { cpu::lsq_init_scale(p, layout, LsqQuant::signed_bits(4), nullptr, ws); }));
}

}  // namespace
}  // namespace lowbit
