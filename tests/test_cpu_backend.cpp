// The CPU backend. CpuOps*: the layer math of lowbit::cpu against direct
// double-precision loops, finite-difference gradients, thread-count
// determinism and argument checks. CpuBackend*: memory, capture/replay and
// dispatch through make_cpu_backend().
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "backends/cpu_gemm.hpp"
#include "backends/cpu_isa.hpp"
#include "backends/cpu_ops.hpp"
#include "cpu_isa_scope.hpp"
#include "integer_cases.hpp"
#include "lowbit/backend.hpp"
#include "lowbit/ref.hpp"
#include "test_util.hpp"

namespace lowbit {

// Shapes in gtest's messages (found by argument-dependent lookup).
static void PrintTo(const Conv2dShape& s, std::ostream* os) {
  *os << "{N=" << s.batch << " C=" << s.in_channels << " H=" << s.height << " W=" << s.width
      << " K=" << s.out_channels << " kernel=" << s.kernel << " stride=" << s.stride
      << " padding=" << s.padding << "}";
}

static void PrintTo(const Pool2dShape& s, std::ostream* os) {
  *os << "{N=" << s.batch << " C=" << s.channels << " H=" << s.height << " W=" << s.width
      << " kernel=" << s.kernel << " stride=" << s.stride << "}";
}

namespace {

using test::isa_name;
using test::IsaScope;
using test::random_values;
using test::runnable_isas;
using test::same_bits;
using Floats = std::vector<float>;
using Doubles = std::vector<double>;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::int64_t size_of(const Conv2dShape& s) { return s.batch * s.in_channels * s.height * s.width; }
std::int64_t out_size(const Conv2dShape& s) {
  return s.batch * s.out_channels * s.out_height() * s.out_width();
}
std::int64_t weight_size(const Conv2dShape& s) {
  return s.out_channels * s.in_channels * s.kernel * s.kernel;
}
std::int64_t size_of(const Pool2dShape& s) { return s.batch * s.channels * s.height * s.width; }
std::int64_t out_size(const Pool2dShape& s) {
  return s.batch * s.channels * s.out_height() * s.out_width();
}

Floats uniform(std::int64_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  Floats v(static_cast<std::size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

Doubles widen(const Floats& v) { return Doubles(v.begin(), v.end()); }

// Direct loops in double: y and Σ|terms| of each output (the scale of its
// rounding error).
struct Reference {
  Doubles y, magnitude;
};

Reference direct_conv(const Conv2dShape& s, const Doubles& x, const Doubles& w) {
  const std::int64_t oh = s.out_height(), ow = s.out_width(), k = s.kernel;
  Reference out{Doubles(out_size(s)), Doubles(out_size(s))};
  for (std::int64_t n = 0; n < s.batch; ++n)
    for (std::int64_t o = 0; o < s.out_channels; ++o)
      for (std::int64_t oy = 0; oy < oh; ++oy)
        for (std::int64_t ox = 0; ox < ow; ++ox) {
          double sum = 0.0, magnitude = 0.0;
          for (std::int64_t c = 0; c < s.in_channels; ++c)
            for (std::int64_t r = 0; r < k; ++r)
              for (std::int64_t q = 0; q < k; ++q) {
                const std::int64_t iy = oy * s.stride + r - s.padding;
                const std::int64_t ix = ox * s.stride + q - s.padding;
                if (iy < 0 || iy >= s.height || ix < 0 || ix >= s.width) continue;
                const double term = x[((n * s.in_channels + c) * s.height + iy) * s.width + ix] *
                                    w[((o * s.in_channels + c) * k + r) * k + q];
                sum += term;
                magnitude += std::abs(term);
              }
          const std::int64_t i = ((n * s.out_channels + o) * oh + oy) * ow + ox;
          out.y[i] = sum;
          out.magnitude[i] = magnitude;
        }
  return out;
}

Reference direct_linear(const LinearShape& s, const Doubles& x, const Doubles& w) {
  Reference out{Doubles(s.batch * s.out_features), Doubles(s.batch * s.out_features)};
  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t o = 0; o < s.out_features; ++o) {
      double sum = 0.0, magnitude = 0.0;
      for (std::int64_t i = 0; i < s.in_features; ++i) {
        const double term = x[b * s.in_features + i] * w[o * s.in_features + i];
        sum += term;
        magnitude += std::abs(term);
      }
      out.y[b * s.out_features + o] = sum;
      out.magnitude[b * s.out_features + o] = magnitude;
    }
  return out;
}

Doubles direct_pool(const Pool2dShape& s, const Doubles& x) {
  const std::int64_t oh = s.out_height(), ow = s.out_width();
  Doubles y(out_size(s));
  for (std::int64_t p = 0; p < s.batch * s.channels; ++p)
    for (std::int64_t oy = 0; oy < oh; ++oy)
      for (std::int64_t ox = 0; ox < ow; ++ox) {
        double best = -std::numeric_limits<double>::infinity();
        for (std::int64_t r = 0; r < s.kernel; ++r)
          for (std::int64_t q = 0; q < s.kernel; ++q)
            best =
                std::max(best, x[(p * s.height + oy * s.stride + r) * s.width + ox * s.stride + q]);
        y[(p * oh + oy) * ow + ox] = best;
      }
  return y;
}

// A float sum of `terms` products is within (terms + 1)·2^-24·Σ|terms| of the
// exact one; twice that leaves room without hiding an indexing error.
::testing::AssertionResult near_reference(const Reference& want, const Floats& got,
                                          std::int64_t terms) {
  const double bound = static_cast<double>(terms + 2) * std::ldexp(1.0, -23);
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double error = std::abs(static_cast<double>(got[i]) - want.y[i]);
    if (!(error <= bound * want.magnitude[i]))
      return ::testing::AssertionFailure()
             << "[" << i << "] expected " << want.y[i] << " got " << got[i] << " (error " << error
             << ", allowed " << bound * want.magnitude[i] << ")";
  }
  return ::testing::AssertionSuccess();
}

// Central differences of the double loss L(v) = Σ forward(v)·r for every
// element of v, against the float analytic gradient.
::testing::AssertionResult gradient_matches(const std::function<double(const Doubles&)>& loss,
                                            Doubles v, const Floats& analytic) {
  constexpr double h = 1e-3;
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double saved = v[i];
    v[i] = saved + h;
    const double up = loss(v);
    v[i] = saved - h;
    const double down = loss(v);
    v[i] = saved;
    const double numeric = (up - down) / (2 * h);
    if (!(std::abs(analytic[i] - numeric) <= 1e-4 * (1.0 + std::abs(numeric))))
      return ::testing::AssertionFailure()
             << "[" << i << "] analytic " << analytic[i] << " finite difference " << numeric;
  }
  return ::testing::AssertionSuccess();
}

double dot(const Doubles& a, const Floats& b) {
  double sum = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) sum += a[i] * b[i];
  return sum;
}

Conv2dShape random_conv_shape(std::mt19937& rng) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Conv2dShape s;
  s.batch = pick(1, 3);
  s.in_channels = pick(1, 4);
  s.out_channels = pick(1, 6);
  s.kernel = pick(1, 5);
  s.stride = pick(1, 3);
  s.padding = pick(0, 2);
  s.height = std::max<std::int64_t>(pick(1, 13), s.kernel - 2 * s.padding);
  s.width = std::max<std::int64_t>(pick(1, 13), s.kernel - 2 * s.padding);
  return s;
}

// ---- Convolution ----

TEST(CpuOpsConv2d, ForwardMatchesDirectLoopsOnRandomShapes) {
  std::mt19937 rng(2024);
  cpu::Scratch scratch;
  for (int trial = 0; trial < 60; ++trial) {
    const Conv2dShape s = random_conv_shape(rng);
    SCOPED_TRACE(::testing::Message() << "trial " << trial << ": " << ::testing::PrintToString(s));
    const Floats x = random_values(size_of(s), 100 + trial);
    const Floats w = random_values(weight_size(s), 200 + trial, 0.5f);
    Floats y(out_size(s), kNaN);
    cpu::conv2d_forward(s, x.data(), w.data(), y.data(), scratch);
    EXPECT_TRUE(
        near_reference(direct_conv(s, widen(x), widen(w)), y, s.in_channels * s.kernel * s.kernel));
  }
}

// The forward's stated order in scalar float arithmetic: +0, then the terms
// over (c, r, q) in row-major order, padding as 0·w. Bit for bit, in place
// (stride 1) and through im2col (other strides).
TEST(CpuOpsConv2d, ForwardSumsInTheStatedOrder) {
  std::mt19937 rng(99);
  cpu::Scratch scratch;
  for (int trial = 0; trial < 40; ++trial) {
    const Conv2dShape s = random_conv_shape(rng);
    SCOPED_TRACE(::testing::PrintToString(s));
    const Floats x = random_values(size_of(s), 500 + trial);
    const Floats w = random_values(weight_size(s), 600 + trial);
    Floats y(out_size(s)), want(out_size(s));
    cpu::conv2d_forward(s, x.data(), w.data(), y.data(), scratch);
    const std::int64_t oh = s.out_height(), ow = s.out_width(), k = s.kernel;
    for (std::int64_t n = 0; n < s.batch; ++n)
      for (std::int64_t o = 0; o < s.out_channels; ++o)
        for (std::int64_t oy = 0; oy < oh; ++oy)
          for (std::int64_t ox = 0; ox < ow; ++ox) {
            float sum = 0.0f;
            for (std::int64_t c = 0; c < s.in_channels; ++c)
              for (std::int64_t r = 0; r < k; ++r)
                for (std::int64_t q = 0; q < k; ++q) {
                  const std::int64_t iy = oy * s.stride + r - s.padding;
                  const std::int64_t ix = ox * s.stride + q - s.padding;
                  const bool inside = iy >= 0 && iy < s.height && ix >= 0 && ix < s.width;
                  const float v =
                      inside ? x[((n * s.in_channels + c) * s.height + iy) * s.width + ix] : 0.0f;
                  sum += v * w[((o * s.in_channels + c) * k + r) * k + q];
                }
            want[((n * s.out_channels + o) * oh + oy) * ow + ox] = sum;
          }
    EXPECT_TRUE(same_bits(want, y));
  }
}

TEST(CpuOpsConv2d, ForwardLeNetShapes) {
  cpu::Scratch scratch;
  for (const Conv2dShape& s :
       {Conv2dShape{5, 1, 28, 28, 6, 5, 1, 2}, Conv2dShape{5, 6, 14, 14, 16, 5, 1, 0}}) {
    const Floats x = random_values(size_of(s), 1);
    const Floats w = random_values(weight_size(s), 2, 0.2f);
    Floats y(out_size(s), kNaN);
    cpu::conv2d_forward(s, x.data(), w.data(), y.data(), scratch);
    EXPECT_TRUE(
        near_reference(direct_conv(s, widen(x), widen(w)), y, s.in_channels * s.kernel * s.kernel));
  }
}

class CpuOpsConv2dGradient : public ::testing::TestWithParam<Conv2dShape> {};

TEST_P(CpuOpsConv2dGradient, MatchesFiniteDifferences) {
  const Conv2dShape s = GetParam();
  const Floats x = uniform(size_of(s), 1), w = uniform(weight_size(s), 2);
  const Floats r = uniform(out_size(s), 3);
  cpu::Scratch scratch;
  Floats dx(size_of(s), kNaN), dw(weight_size(s), kNaN);
  cpu::conv2d_backward(s, x.data(), w.data(), r.data(), dx.data(), dw.data(), scratch);

  const Doubles x64 = widen(x), w64 = widen(w), r64 = widen(r);
  EXPECT_TRUE(gradient_matches([&](const Doubles& v) { return dot(direct_conv(s, v, w64).y, r); },
                               x64, dx));
  EXPECT_TRUE(gradient_matches([&](const Doubles& v) { return dot(direct_conv(s, x64, v).y, r); },
                               w64, dw));
}

// {batch, C, H, W, K, kernel, stride, padding}
INSTANTIATE_TEST_SUITE_P(
    Shapes, CpuOpsConv2dGradient,
    ::testing::Values(Conv2dShape{2, 3, 6, 6, 4, 3, 1, 0},   // no padding
                      Conv2dShape{2, 2, 7, 9, 3, 3, 1, 1},   // padding, odd sizes
                      Conv2dShape{3, 2, 7, 7, 2, 5, 1, 2},   // LeNet conv1's padding
                      Conv2dShape{2, 3, 9, 8, 3, 3, 2, 0},   // stride 2, last column unread
                      Conv2dShape{2, 2, 7, 7, 3, 3, 2, 1},   // stride 2 with padding
                      Conv2dShape{1, 2, 7, 5, 2, 2, 3, 0},   // gaps between windows
                      Conv2dShape{2, 3, 5, 4, 2, 1, 1, 0},   // 1x1: the input is the columns
                      Conv2dShape{1, 1, 2, 2, 2, 4, 1, 1}),  // kernel wider than the input
    [](const ::testing::TestParamInfo<Conv2dShape>& info) {
      const Conv2dShape& s = info.param;
      return "C" + std::to_string(s.in_channels) + "_" + std::to_string(s.height) + "x" +
             std::to_string(s.width) + "_k" + std::to_string(s.kernel) + "_s" +
             std::to_string(s.stride) + "_p" + std::to_string(s.padding);
    });

// dx == nullptr skips dx and leaves dw as it is; both outputs are overwritten,
// not accumulated (they start as NaN here).
TEST(CpuOpsConv2d, BackwardOverwritesAndSkipsNullDx) {
  const Conv2dShape s{3, 2, 8, 8, 3, 3, 1, 1};
  const Floats x = random_values(size_of(s), 5), w = random_values(weight_size(s), 6);
  const Floats dy = random_values(out_size(s), 7);
  cpu::Scratch scratch;
  Floats dx(size_of(s), kNaN), dw(weight_size(s), kNaN);
  cpu::conv2d_backward(s, x.data(), w.data(), dy.data(), dx.data(), dw.data(), scratch);
  EXPECT_TRUE(std::none_of(dx.begin(), dx.end(), [](float v) { return std::isnan(v); }));
  EXPECT_TRUE(std::none_of(dw.begin(), dw.end(), [](float v) { return std::isnan(v); }));

  Floats dw_again(weight_size(s), kNaN);
  cpu::conv2d_backward(s, x.data(), w.data(), dy.data(), nullptr, dw_again.data(), scratch);
  EXPECT_TRUE(same_bits(dw, dw_again));
}

// More images than weight-gradient partials: several images share one.
TEST(CpuOpsConv2d, WeightGradientOverALargeBatch) {
  const Conv2dShape s{70, 2, 6, 6, 3, 3, 1, 1};
  const Floats x = random_values(size_of(s), 8), w = random_values(weight_size(s), 9);
  const Floats dy = random_values(out_size(s), 10);
  cpu::Scratch scratch;
  Floats dw(weight_size(s));
  cpu::conv2d_backward(s, x.data(), w.data(), dy.data(), nullptr, dw.data(), scratch);
  // dw[k,c,r,q] = Σ_{n,oy,ox} dy[n,k,oy,ox]·x[n,c,oy+r-1,ox+q-1]
  Reference want{Doubles(dw.size()), Doubles(dw.size())};
  for (std::int64_t k = 0; k < 3; ++k)
    for (std::int64_t c = 0; c < 2; ++c)
      for (std::int64_t r = 0; r < 3; ++r)
        for (std::int64_t q = 0; q < 3; ++q) {
          const std::size_t i = static_cast<std::size_t>(((k * 2 + c) * 3 + r) * 3 + q);
          for (std::int64_t n = 0; n < s.batch; ++n)
            for (std::int64_t oy = 0; oy < 6; ++oy)
              for (std::int64_t ox = 0; ox < 6; ++ox) {
                const std::int64_t iy = oy + r - 1, ix = ox + q - 1;
                if (iy < 0 || iy >= 6 || ix < 0 || ix >= 6) continue;
                const double term = static_cast<double>(dy[((n * 3 + k) * 6 + oy) * 6 + ox]) *
                                    x[((n * 2 + c) * 6 + iy) * 6 + ix];
                want.y[i] += term;
                want.magnitude[i] += std::abs(term);
              }
        }
  EXPECT_TRUE(near_reference(want, dw, s.batch * 36));
}

TEST(CpuOpsConv2d, EmptyBatchZeroesTheWeightGradient) {
  const Conv2dShape s{0, 2, 5, 5, 3, 3, 1, 0};
  cpu::Scratch scratch;
  Floats dw(weight_size(s), kNaN);
  cpu::conv2d_forward(s, nullptr, nullptr, nullptr, scratch);
  cpu::conv2d_backward(s, nullptr, nullptr, nullptr, nullptr, dw.data(), scratch);
  EXPECT_TRUE(same_bits(Floats(dw.size(), 0.0f), dw));
}

TEST(CpuOpsConv2d, RejectsBadShapesAndNullPointers) {
  cpu::Scratch scratch;
  Floats buffer(4096);
  float* p = buffer.data();
  auto forward = [&](const Conv2dShape& s) { cpu::conv2d_forward(s, p, p, p, scratch); };
  EXPECT_THROW(forward({1, 1, 4, 4, 1, 3, 0, 0}), Error);   // stride 0
  EXPECT_THROW(forward({1, 1, 4, 4, 1, 3, 1, -1}), Error);  // negative padding
  EXPECT_THROW(forward({1, 1, 2, 4, 1, 5, 1, 1}), Error);   // kernel taller than the padded input
  EXPECT_THROW(forward({1, 0, 4, 4, 1, 3, 1, 0}), Error);   // no channels
  EXPECT_THROW(forward({-1, 1, 4, 4, 1, 3, 1, 0}), Error);  // negative batch
  const Conv2dShape ok{1, 1, 4, 4, 1, 3, 1, 0};
  EXPECT_NO_THROW(forward(ok));
  EXPECT_THROW(cpu::conv2d_forward(ok, nullptr, p, p, scratch), Error);
  EXPECT_THROW(cpu::conv2d_backward(ok, p, p, p, p, nullptr, scratch), Error);
  EXPECT_THROW(cpu::conv2d_backward(ok, p, nullptr, p, p, p, scratch), Error);
}

// ---- Fully connected ----

TEST(CpuOpsLinear, ForwardMatchesDirectLoopsOnRandomShapes) {
  std::mt19937 rng(7);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int trial = 0; trial < 30; ++trial) {
    const LinearShape s{pick(1, 40), pick(1, 70), pick(1, 30)};
    SCOPED_TRACE(::testing::Message() << "trial " << trial << ": [" << s.batch << ", "
                                      << s.in_features << "] -> " << s.out_features);
    const Floats x = random_values(s.batch * s.in_features, 300 + trial);
    const Floats w = random_values(s.out_features * s.in_features, 400 + trial, 0.5f);
    Floats y(s.batch * s.out_features, kNaN);
    cpu::linear_forward(s, x.data(), w.data(), y.data());
    EXPECT_TRUE(near_reference(direct_linear(s, widen(x), widen(w)), y, s.in_features));
  }
}

TEST(CpuOpsLinear, GradientsMatchFiniteDifferences) {
  for (const LinearShape& s :
       {LinearShape{3, 7, 5}, LinearShape{1, 1, 1}, LinearShape{6, 19, 10}}) {
    const Floats x = uniform(s.batch * s.in_features, 1);
    const Floats w = uniform(s.out_features * s.in_features, 2);
    const Floats r = uniform(s.batch * s.out_features, 3);
    Floats dx(x.size(), kNaN), dw(w.size(), kNaN);
    cpu::linear_backward(s, x.data(), w.data(), r.data(), dx.data(), dw.data());
    const Doubles x64 = widen(x), w64 = widen(w);
    EXPECT_TRUE(gradient_matches(
        [&](const Doubles& v) { return dot(direct_linear(s, v, w64).y, r); }, x64, dx));
    EXPECT_TRUE(gradient_matches(
        [&](const Doubles& v) { return dot(direct_linear(s, x64, v).y, r); }, w64, dw));
  }
}

TEST(CpuOpsLinear, BackwardOverwritesAndSkipsNullDx) {
  const LinearShape s{9, 33, 12};
  const Floats x = random_values(s.batch * s.in_features, 1);
  const Floats w = random_values(s.out_features * s.in_features, 2);
  const Floats dy = random_values(s.batch * s.out_features, 3);
  Floats dx(x.size(), kNaN), dw(w.size(), kNaN), dw_again(w.size(), kNaN);
  cpu::linear_backward(s, x.data(), w.data(), dy.data(), dx.data(), dw.data());
  cpu::linear_backward(s, x.data(), w.data(), dy.data(), nullptr, dw_again.data());
  EXPECT_TRUE(std::none_of(dx.begin(), dx.end(), [](float v) { return std::isnan(v); }));
  EXPECT_TRUE(std::none_of(dw.begin(), dw.end(), [](float v) { return std::isnan(v); }));
  EXPECT_TRUE(same_bits(dw, dw_again));
}

TEST(CpuOpsLinear, RejectsBadShapesAndNullPointers) {
  Floats buffer(64);
  float* p = buffer.data();
  EXPECT_THROW(cpu::linear_forward({2, 0, 3}, p, p, p), Error);
  EXPECT_THROW(cpu::linear_forward({2, 3, 0}, p, p, p), Error);
  EXPECT_THROW(cpu::linear_forward({2, 3, 3}, p, nullptr, p), Error);
  EXPECT_THROW(cpu::linear_backward({2, 3, 3}, p, p, p, p, nullptr), Error);
  Floats dw(6, kNaN);
  cpu::linear_backward({0, 3, 2}, nullptr, nullptr, nullptr, nullptr, dw.data());
  EXPECT_TRUE(same_bits(Floats(6, 0.0f), dw));
}

// ---- Max pooling ----

// Distinct values at least 0.1 apart: no ties, and a finite difference of
// 1e-3 cannot change a window's maximum.
Floats without_ties(std::int64_t n, std::uint32_t seed) {
  std::vector<int> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(seed));
  Floats v(order.size());
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.1f * static_cast<float>(order[i] - n / 2);
  return v;
}

class CpuOpsMaxPool : public ::testing::TestWithParam<Pool2dShape> {};

TEST_P(CpuOpsMaxPool, ForwardMatchesDirectLoopsAndGradientsFiniteDifferences) {
  const Pool2dShape s = GetParam();
  const Floats x = without_ties(size_of(s), 11);
  Floats y(out_size(s), kNaN);
  cpu::max_pool_forward(s, x.data(), y.data());
  const Doubles want = direct_pool(s, widen(x));
  EXPECT_TRUE(same_bits(Floats(want.begin(), want.end()), y));

  const Floats r = uniform(out_size(s), 12);
  Floats dx(size_of(s), kNaN);
  cpu::max_pool_backward(s, x.data(), r.data(), dx.data());
  EXPECT_TRUE(
      gradient_matches([&](const Doubles& v) { return dot(direct_pool(s, v), r); }, widen(x), dx));
}

// {batch, channels, H, W, kernel, stride}
INSTANTIATE_TEST_SUITE_P(
    Shapes, CpuOpsMaxPool,
    ::testing::Values(Pool2dShape{2, 3, 6, 6, 2, 2},   // LeNet's
                      Pool2dShape{2, 2, 7, 5, 2, 2},   // odd sizes: last row and column unread
                      Pool2dShape{1, 2, 7, 7, 3, 2},   // overlapping windows
                      Pool2dShape{1, 2, 6, 5, 2, 1},   // overlapping, stride 1
                      Pool2dShape{2, 1, 9, 9, 3, 3},   // 3x3 tiles
                      Pool2dShape{1, 2, 9, 10, 4, 3},  // a kernel without a fast path
                      Pool2dShape{1, 1, 3, 3, 3, 1}),  // one window
    [](const ::testing::TestParamInfo<Pool2dShape>& info) {
      const Pool2dShape& s = info.param;
      return std::to_string(s.height) + "x" + std::to_string(s.width) + "_k" +
             std::to_string(s.kernel) + "_s" + std::to_string(s.stride);
    });

// Ties go to the first maximum in row-major order; an element that is the
// maximum of two overlapping windows gets both gradients; NaN propagates and
// takes the gradient.
TEST(CpuOpsMaxPool, TiesOverlapsAndNaN) {
  for (const int kernel : {2, 4}) {  // the unrolled and the general path
    SCOPED_TRACE(kernel);
    {
      const Pool2dShape s{1, 1, kernel, kernel, kernel, kernel};
      Floats x(static_cast<std::size_t>(kernel * kernel), 1.0f);
      x[0] = -1.0f;  // the first maximum is x[1]
      const float dy = 5.0f;
      Floats y(1), dx(x.size(), kNaN);
      cpu::max_pool_forward(s, x.data(), y.data());
      cpu::max_pool_backward(s, x.data(), &dy, dx.data());
      Floats want(x.size(), 0.0f);
      want[1] = 5.0f;
      EXPECT_EQ(y[0], 1.0f);
      EXPECT_TRUE(same_bits(want, dx));
    }
    {
      // Width kernel+1, stride 1: both windows contain column 1 (their maximum).
      const Pool2dShape s{1, 1, kernel, kernel + 1, kernel, 1};
      Floats x(static_cast<std::size_t>(kernel * (kernel + 1)), 0.0f);
      x[1] = 3.0f;
      const Floats dy = {2.0f, 0.5f};
      Floats y(2), dx(x.size(), kNaN);
      cpu::max_pool_forward(s, x.data(), y.data());
      cpu::max_pool_backward(s, x.data(), dy.data(), dx.data());
      Floats want(x.size(), 0.0f);
      want[1] = 2.5f;
      EXPECT_TRUE(same_bits(Floats{3.0f, 3.0f}, y));
      EXPECT_TRUE(same_bits(want, dx));
    }
    {
      const Pool2dShape s{1, 1, kernel, kernel, kernel, kernel};
      Floats x(static_cast<std::size_t>(kernel * kernel), 1.0f);
      x[2] = kNaN;
      x[3] = kNaN;
      const float dy = 5.0f;
      Floats y(1), dx(x.size(), kNaN);
      cpu::max_pool_forward(s, x.data(), y.data());
      cpu::max_pool_backward(s, x.data(), &dy, dx.data());
      Floats want(x.size(), 0.0f);
      want[2] = 5.0f;
      EXPECT_TRUE(std::isnan(y[0]));
      EXPECT_TRUE(same_bits(want, dx));
    }
  }
}

// The 2x2/2 fast path against the reference on few distinct values (ties,
// -0 and +0, infinities, NaN) and a dy with -0, for rows of fewer than four
// windows, a multiple of four and more (the last four again), and odd sizes.
TEST(CpuOpsMaxPool, TwoByTwoEqualsTheReferenceBitForBit) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const std::array<float, 8> values = {-1.0f, -0.0f, 0.0f, 1.0f, 2.0f, kNaN, -kInf, kInf};
  std::mt19937 rng(5);
  for (const Pool2dShape& s :
       {Pool2dShape{3, 2, 28, 28, 2, 2}, Pool2dShape{2, 3, 10, 10, 2, 2},
        Pool2dShape{2, 2, 7, 9, 2, 2}, Pool2dShape{1, 1, 2, 2, 2, 2}, Pool2dShape{1, 2, 5, 3, 2, 2},
        Pool2dShape{1, 2, 6, 9, 2, 2}, Pool2dShape{1, 1, 4, 19, 2, 2}}) {
    SCOPED_TRACE(::testing::PrintToString(s));
    Floats x(size_of(s)), dy(out_size(s));
    for (float& v : x) v = values[rng() % values.size()];
    for (float& v : dy)
      v = rng() % 4 == 0 ? -0.0f : std::uniform_real_distribution<float>(-1, 1)(rng);
    Floats want_y(out_size(s)), want_dx(size_of(s)), y(out_size(s), 7.0f), dx(size_of(s), 7.0f);
    ref::max_pool_forward(s, x.data(), want_y.data());
    ref::max_pool_backward(s, x.data(), dy.data(), want_dx.data());
    cpu::max_pool_forward(s, x.data(), y.data());
    cpu::max_pool_backward(s, x.data(), dy.data(), dx.data());
    EXPECT_TRUE(same_bits(want_y, y));
    EXPECT_TRUE(same_bits(want_dx, dx));
  }
}

TEST(CpuOpsMaxPool, RejectsBadShapesAndNullPointers) {
  Floats buffer(64);
  float* p = buffer.data();
  EXPECT_THROW(cpu::max_pool_forward({1, 1, 4, 4, 5, 1}, p, p), Error);  // window > input
  EXPECT_THROW(cpu::max_pool_forward({1, 1, 4, 4, 2, 0}, p, p), Error);  // stride 0
  EXPECT_THROW(cpu::max_pool_forward({1, 1, 4, 4, 2, 2}, nullptr, p), Error);
  EXPECT_THROW(cpu::max_pool_backward({1, 1, 4, 4, 2, 2}, p, p, nullptr), Error);
}

// ---- GEMM ----

// gemm_nn with a transposed A (strides) and accumulation, gemm_nt with
// accumulation, on sizes around the blocking of both.
TEST(CpuOpsGemm, MatchesDirectLoops) {
  const std::vector<std::array<std::int64_t, 3>> sizes = {
      {1, 1, 1}, {3, 5, 7}, {5, 300, 9}, {6, 257, 17}, {4, 9, 33}};
  for (const auto& [m, n, k] : sizes) {
    SCOPED_TRACE(::testing::Message() << m << "x" << n << "x" << k);
    const Floats a = random_values(m * k, 1), b = random_values(k * n, 2);
    const Floats bt = random_values(n * k, 3), c0 = random_values(m * n, 4);
    Floats at(a.size());  // A stored transposed, [K, M]
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t p = 0; p < k; ++p) at[p * m + i] = a[i * k + p];
    Reference nn{Doubles(m * n), Doubles(m * n)}, nt{Doubles(m * n), Doubles(m * n)};
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j) {
        const std::size_t e = static_cast<std::size_t>(i * n + j);
        nn.y[e] = nt.y[e] = c0[e];
        nn.magnitude[e] = nt.magnitude[e] = std::abs(c0[e]);
        for (std::int64_t p = 0; p < k; ++p) {
          const double t_nn = static_cast<double>(a[i * k + p]) * b[p * n + j];
          const double t_nt = static_cast<double>(a[i * k + p]) * bt[j * k + p];
          nn.y[e] += t_nn;
          nn.magnitude[e] += std::abs(t_nn);
          nt.y[e] += t_nt;
          nt.magnitude[e] += std::abs(t_nt);
        }
      }
    Floats c = c0;
    cpu::gemm_nn(m, n, k, at.data(), 1, m, b.data(), n, c.data(), n, true);
    EXPECT_TRUE(near_reference(nn, c, k + 1));
    Floats c_plain(c0.size(), kNaN);
    cpu::gemm_nn(m, n, k, a.data(), k, 1, b.data(), n, c_plain.data(), n, false);
    for (std::size_t e = 0; e < c0.size(); ++e) {
      nn.y[e] -= c0[e];
      nn.magnitude[e] -= std::abs(c0[e]);
    }
    EXPECT_TRUE(near_reference(nn, c_plain, k));
    c = c0;
    cpu::gemm_nt(m, n, k, a.data(), k, bt.data(), k, c.data(), n, true);
    EXPECT_TRUE(near_reference(nt, c, k + 1));
  }
}

// gemm_nn's stated order in scalar float arithmetic: C, or +0, plus the
// terms k = 0..K-1 one at a time.
Floats sequential_nn(std::int64_t m, std::int64_t n, std::int64_t k, const Floats& a,
                     std::int64_t a_stride_m, std::int64_t a_stride_k, const Floats& b,
                     std::int64_t ldb, Floats c, std::int64_t ldc, bool accumulate) {
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      float sum = accumulate ? c[i * ldc + j] : 0.0f;
      for (std::int64_t p = 0; p < k; ++p)
        sum += a[i * a_stride_m + p * a_stride_k] * b[p * ldb + j];
      c[i * ldc + j] = sum;
    }
  return c;
}

// gemm_nt's: 16 lanes, lane l summing the terms p ≡ l (mod 16), folded
// pairwise.
Floats lane_nt(std::int64_t m, std::int64_t n, std::int64_t k, const Floats& a, std::int64_t lda,
               const Floats& b, std::int64_t ldb, Floats c, std::int64_t ldc, bool accumulate) {
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      std::array<float, 16> lanes{};
      for (std::int64_t p = 0; p < k; ++p) lanes[p % 16] += a[i * lda + p] * b[j * ldb + p];
      for (int width = 8; width > 0; width /= 2)
        for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + lanes[0] : lanes[0];
    }
  return c;
}

// Sizes around every level's tiles (4, 6 and 8 rows; 4, 8 and 16 columns per
// vector, two vectors a tile; 4x4 and 6x3 dot products) and gemm_nn's
// 256-step passes, with padded leading dimensions and B's rows strided or at
// offsets: the exact bits of the stated order on every instruction set, and
// nothing written outside C.
TEST(CpuOpsGemm, EveryInstructionSetGivesTheStatedOrderBitForBit) {
  const std::vector<std::int64_t> rows = {1, 3, 5, 7, 8, 9, 13, 17};
  const std::vector<std::int64_t> columns = {1, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 50, 100};
  const std::vector<std::int64_t> depths = {0, 1, 2, 15, 16, 17, 100, 256, 257, 600};
  for (const cpu::Isa isa : runnable_isas()) {
    const IsaScope scope(isa);
    std::uint32_t seed = 0;
    for (const std::int64_t m : rows)
      for (const std::int64_t n : columns)
        for (const std::int64_t k : depths) {
          SCOPED_TRACE(::testing::Message() << isa_name(isa) << " " << m << "x" << n << "x" << k);
          ++seed;
          const bool accumulate = seed % 2 == 0;
          const std::int64_t ldb = n + 2, ldc = n + 3;
          const Floats b = random_values(std::max<std::int64_t>(k, 1) * ldb, seed);
          const Floats c0 = random_values(m * ldc, seed + 1);
          // A row-major with a padded row (packed), transposed (read in place)
          // and interleaved (packed).
          const Floats a = random_values(m * (k + 1) + 2 * m * k + 1, seed + 2);
          for (const auto& [a_stride_m, a_stride_k] :
               {std::pair<std::int64_t, std::int64_t>{k + 1, 1}, {1, m}, {2, 2 * m}}) {
            Floats c = c0;
            cpu::gemm_nn(m, n, k, a.data(), a_stride_m, a_stride_k, b.data(), ldb, c.data(), ldc,
                         accumulate);
            EXPECT_TRUE(same_bits(
                sequential_nn(m, n, k, a, a_stride_m, a_stride_k, b, ldb, c0, ldc, accumulate), c))
                << "A strides " << a_stride_m << ", " << a_stride_k;
          }
          // B's rows at offsets: b's rows in reverse, each shifted by one.
          std::vector<std::int64_t> offsets(static_cast<std::size_t>(k));
          Floats b_rows(std::max<std::int64_t>(k, 1) * ldb);
          for (std::int64_t p = 0; p < k; ++p) {
            offsets[p] = (k - 1 - p) * ldb + 1;
            std::copy_n(b.begin() + offsets[p], n, b_rows.begin() + p * ldb);
          }
          Floats c = c0;
          cpu::gemm_nn_offsets(m, n, k, a.data(), k + 1, 1, b.data(), offsets.data(), c.data(), ldc,
                               accumulate);
          EXPECT_TRUE(
              same_bits(sequential_nn(m, n, k, a, k + 1, 1, b_rows, ldb, c0, ldc, accumulate), c))
              << "B rows at offsets";
          if (m > 9 || n > 17 || k > 257) continue;
          const std::int64_t lda = k + 1, ldbt = k + 5;
          const Floats bt = random_values(n * ldbt, seed + 3);
          c = c0;
          cpu::gemm_nt(m, n, k, a.data(), lda, bt.data(), ldbt, c.data(), ldc, accumulate);
          EXPECT_TRUE(same_bits(lane_nt(m, n, k, a, lda, bt, ldbt, c0, ldc, accumulate), c));
        }
  }
}

// Infinities and NaN in A or B reach only the elements they belong to, also
// in the tails that go through zero-padded copies.
TEST(CpuOpsGemm, NonFiniteValuesStayInTheirElements) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  for (const cpu::Isa isa : runnable_isas()) {
    SCOPED_TRACE(isa_name(isa));
    const IsaScope scope(isa);
    const std::int64_t m = 5, n = 19, k = 21;
    Floats a = random_values(m * k, 1), b = random_values(k * n, 2);
    a[2 * k + 20] = kInf;   // row 2, last step
    b[20 * n + 18] = kNaN;  // last step, last column
    Floats c(m * n, kNaN);
    cpu::gemm_nn(m, n, k, a.data(), k, 1, b.data(), n, c.data(), n, false);
    EXPECT_TRUE(same_bits(sequential_nn(m, n, k, a, k, 1, b, n, Floats(m * n), n, false), c));
    Floats bt = random_values(n * k, 3);
    bt[18 * k + 20] = kNaN;
    Floats d(m * n, kNaN);
    cpu::gemm_nt(m, n, k, a.data(), k, bt.data(), k, d.data(), n, false);
    EXPECT_TRUE(same_bits(lane_nt(m, n, k, a, k, bt, k, Floats(m * n), n, false), d));
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j)
        EXPECT_EQ(std::isfinite(d[i * n + j]), i != 2 && j != 18) << i << ", " << j;
  }
}

TEST(CpuOpsScratch, GrowsOnlyWhenAskedForMore) {
  cpu::Scratch scratch;
  float* first = scratch.reserve(cpu::Scratch::columns, 1000);
  EXPECT_EQ(first, scratch.reserve(cpu::Scratch::columns, 10));
  EXPECT_EQ(first, scratch.reserve(cpu::Scratch::columns, 1000));
  EXPECT_NE(first, scratch.reserve(cpu::Scratch::partials, 1000));
}

// ---- Determinism ----

/// Every output of the layer ops on seeded inputs: conv forward and backward
/// for each shape, then linear forward and backward, then pooling if given.
std::vector<Floats> layer_outputs(const std::vector<Conv2dShape>& convs, const LinearShape& fc,
                                  const Pool2dShape* pool = nullptr) {
  cpu::Scratch scratch;
  std::vector<Floats> out;
  for (const Conv2dShape& s : convs) {
    const Floats x = random_values(size_of(s), 1), w = random_values(weight_size(s), 2);
    const Floats dy = random_values(out_size(s), 3);
    Floats y(out_size(s)), dx(size_of(s)), dw(weight_size(s));
    cpu::conv2d_forward(s, x.data(), w.data(), y.data(), scratch);
    cpu::conv2d_backward(s, x.data(), w.data(), dy.data(), dx.data(), dw.data(), scratch);
    out.insert(out.end(), {y, dx, dw});
  }
  const Floats x = random_values(fc.batch * fc.in_features, 4);
  const Floats w = random_values(fc.out_features * fc.in_features, 5);
  const Floats dy = random_values(fc.batch * fc.out_features, 6);
  Floats y(dy.size()), dx(x.size()), dw(w.size());
  cpu::linear_forward(fc, x.data(), w.data(), y.data());
  cpu::linear_backward(fc, x.data(), w.data(), dy.data(), dx.data(), dw.data());
  out.insert(out.end(), {y, dx, dw});
  if (pool != nullptr) {
    const Floats px = random_values(size_of(*pool), 7), pdy = random_values(out_size(*pool), 8);
    Floats py(out_size(*pool)), pdx(size_of(*pool));
    cpu::max_pool_forward(*pool, px.data(), py.data());
    cpu::max_pool_backward(*pool, px.data(), pdy.data(), pdx.data());
    out.insert(out.end(), {py, pdx});
  }
  return out;
}

// Every op gives the same bits with 1, 2 and 3 threads (different splits of
// images, rows and weight-gradient partials).
TEST(CpuOpsDeterminism, ResultsDoNotDependOnTheThreadCount) {
  const Conv2dShape conv1{70, 1, 12, 12, 6, 5, 1, 2}, conv2{70, 6, 7, 7, 16, 3, 2, 0};
  const LinearShape fc{70, 150, 37};
  const Pool2dShape pool{70, 6, 12, 12, 2, 2};
  auto run_all = [&](int threads) {
    const test::ThreadCount scope(threads);
    return layer_outputs({conv1, conv2}, fc, &pool);
  };
  const std::vector<Floats> one = run_all(1);
  for (const int threads : {2, 3}) {
    const std::vector<Floats> many = run_all(threads);
    ASSERT_EQ(one.size(), many.size());
    for (std::size_t i = 0; i < one.size(); ++i)
      EXPECT_TRUE(same_bits(one[i], many[i])) << "output " << i << ", " << threads << " threads";
  }
}

// The layer ops give the same bits on every instruction set the kernels are
// built for (no FMA contraction, one order whatever the tiles).
TEST(CpuOpsDeterminism, ResultsDoNotDependOnTheInstructionSet) {
  const Conv2dShape conv1{9, 1, 28, 28, 6, 5, 1, 2}, conv2{9, 6, 14, 14, 16, 5, 1, 0};
  const LinearShape fc{9, 400, 120};
  auto run_all = [&] { return layer_outputs({conv1, conv2}, fc); };
  const std::vector<cpu::Isa> isas = runnable_isas();
  std::vector<Floats> lowest;
  {
    const IsaScope scope(isas.front());
    lowest = run_all();
  }
  for (const cpu::Isa isa : isas) {
    const IsaScope scope(isa);
    const std::vector<Floats> got = run_all();
    for (std::size_t i = 0; i < got.size(); ++i)
      EXPECT_TRUE(same_bits(lowest[i], got[i])) << "output " << i << ", " << isa_name(isa);
  }
}

// ---- The backend (links once every lowbit::ref op it dispatches to exists) ----

TEST(CpuBackend, DescribesItself) {
  const auto backend = make_cpu_backend();
  EXPECT_EQ(backend->kind(), DeviceKind::cpu);
  EXPECT_TRUE(std::regex_match(backend->description(), std::regex(R"(cpu \(\d+ threads?\))")))
      << backend->description();
}

TEST(CpuBackend, AllocatesAlignedZeroedMemory) {
  const auto backend = make_cpu_backend();
  for (const std::size_t bytes :
       {std::size_t{0}, std::size_t{1}, std::size_t{100}, std::size_t{1} << 20}) {
    const Buffer buffer = backend->allocate(bytes);
    EXPECT_EQ(buffer.bytes(), bytes);
    ASSERT_NE(buffer.data(), nullptr);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(buffer.data()) % 64, 0u);
    const auto* p = buffer.as<unsigned char>();
    EXPECT_TRUE(std::all_of(p, p + bytes, [](unsigned char c) { return c == 0; }));
    EXPECT_EQ(buffer.as_workspace().data, buffer.data());
    EXPECT_EQ(buffer.as_workspace().bytes, bytes);
  }
  EXPECT_THROW(backend->allocate(std::numeric_limits<std::size_t>::max() - 8), Error);
}

TEST(CpuBackend, BuffersMove) {
  const auto backend = make_cpu_backend();
  Buffer a = backend->allocate(256);
  void* data = a.data();
  Buffer b = std::move(a);
  EXPECT_EQ(b.data(), data);
  EXPECT_EQ(b.bytes(), 256u);
  Buffer c = backend->allocate(16);
  c = std::move(b);
  EXPECT_EQ(c.data(), data);
}

TEST(CpuBackend, CopiesBetweenHostAndBackendMemory) {
  const auto backend = make_cpu_backend();
  const Floats host = random_values(1000, 1);
  const std::size_t bytes = host.size() * sizeof(float);
  const Buffer a = backend->allocate(bytes), b = backend->allocate(bytes);
  backend->upload(a.data(), host.data(), bytes);
  backend->copy(b.data(), a.data(), bytes);
  Floats back(host.size(), kNaN);
  backend->download(back.data(), b.data(), bytes);
  EXPECT_TRUE(same_bits(host, back));
  backend->fill_zero(b.as<float>() + 10, 20 * sizeof(float));
  backend->synchronize();
  backend->download(back.data(), b.data(), bytes);
  Floats want = host;
  std::fill(want.begin() + 10, want.begin() + 30, 0.0f);
  EXPECT_TRUE(same_bits(want, back));
  EXPECT_THROW(backend->upload(nullptr, host.data(), 4), Error);
  EXPECT_NO_THROW(backend->upload(nullptr, nullptr, 0));
}

// capture() runs the step once; each replay() runs it again on the same memory.
// Like a CUDA graph: capturing records the step, each replay runs it.
TEST(CpuBackend, CaptureRecordsTheStepAndReplayRunsIt) {
  const auto backend = make_cpu_backend();
  const LinearShape s{2, 3, 1};
  const Buffer x = backend->allocate(6 * sizeof(float)), w = backend->allocate(3 * sizeof(float));
  const Buffer y = backend->allocate(2 * sizeof(float));
  const Floats w_host = {1.0f, 2.0f, 3.0f};
  backend->upload(w.data(), w_host.data(), 3 * sizeof(float));
  int runs = 0;
  const auto graph = backend->capture([&] {
    ++runs;
    backend->linear_forward(s, x.as<float>(), w.as<float>(), y.as<float>());
  });
  EXPECT_EQ(runs, 0);
  const Floats x_host = {1.0f, 1.0f, 1.0f, 0.0f, 1.0f, -1.0f};
  backend->upload(x.data(), x_host.data(), 6 * sizeof(float));
  graph->replay();
  graph->replay();
  EXPECT_EQ(runs, 2);
  Floats y_host(2);
  backend->download(y_host.data(), y.data(), 2 * sizeof(float));
  EXPECT_TRUE(same_bits(Floats({6.0f, -1.0f}), y_host));
}

// Layer ops through the backend equal lowbit::cpu; a kernel op equals lowbit::ref.
TEST(CpuBackend, DispatchesToTheCpuOpsAndTheReference) {
  const auto backend = make_cpu_backend();
  const Conv2dShape s{3, 2, 9, 9, 4, 3, 2, 1};
  const Floats x = random_values(size_of(s), 1), w = random_values(weight_size(s), 2);
  const Floats dy = random_values(out_size(s), 3);
  auto to_backend = [&](const Floats& v) {
    Buffer b = backend->allocate(v.size() * sizeof(float));
    backend->upload(b.data(), v.data(), v.size() * sizeof(float));
    return b;
  };
  auto to_host = [&](const Buffer& b) {
    Floats v(b.bytes() / sizeof(float));
    backend->download(v.data(), b.data(), b.bytes());
    return v;
  };
  const Buffer bx = to_backend(x), bw = to_backend(w), bdy = to_backend(dy);
  const Buffer by = backend->allocate(dy.size() * sizeof(float));
  const Buffer bdx = backend->allocate(x.size() * sizeof(float));
  const Buffer bdw = backend->allocate(w.size() * sizeof(float));
  backend->conv2d_forward(s, bx.as<float>(), bw.as<float>(), by.as<float>());
  backend->conv2d_backward(s, bx.as<float>(), bw.as<float>(), bdy.as<float>(), bdx.as<float>(),
                           bdw.as<float>());
  cpu::Scratch scratch;
  Floats y(dy.size()), dx(x.size()), dw(w.size());
  cpu::conv2d_forward(s, x.data(), w.data(), y.data(), scratch);
  cpu::conv2d_backward(s, x.data(), w.data(), dy.data(), dx.data(), dw.data(), scratch);
  EXPECT_TRUE(same_bits(y, to_host(by)));
  EXPECT_TRUE(same_bits(dx, to_host(bdx)));
  EXPECT_TRUE(same_bits(dw, to_host(bdw)));

  const Pool2dShape p{3, 4, 5, 5, 2, 2};  // pools conv's 5x5 output
  const Buffer py = backend->allocate(3 * 4 * 2 * 2 * sizeof(float));
  const Buffer pdx = backend->allocate(dy.size() * sizeof(float));
  const Floats pdy = random_values(3 * 4 * 2 * 2, 4);
  const Buffer bpdy = to_backend(pdy);
  backend->max_pool_forward(p, by.as<float>(), py.as<float>());
  backend->max_pool_backward(p, by.as<float>(), py.as<float>(), bpdy.as<float>(), pdx.as<float>());
  Floats pool_y(pdy.size()), pool_dx(dy.size());
  cpu::max_pool_forward(p, y.data(), pool_y.data());
  cpu::max_pool_backward(p, y.data(), pdy.data(), pool_dx.data());
  EXPECT_TRUE(same_bits(pool_y, to_host(py)));
  EXPECT_TRUE(same_bits(pool_dx, to_host(pdx)));

  const std::int64_t n = 100;
  std::vector<std::uint32_t> mask(mask_words(n));
  for (std::size_t i = 0; i < mask.size(); ++i) mask[i] = 0x9e3779b9u * (i + 1);
  Buffer bmask = backend->allocate(mask.size() * sizeof(std::uint32_t));
  backend->upload(bmask.data(), mask.data(), mask.size() * sizeof(std::uint32_t));
  const Floats g = random_values(n, 5);
  const Buffer bg = to_backend(g), bgx = backend->allocate(n * sizeof(float));
  backend->ste_backward(bg.as<float>(), bmask.as<std::uint32_t>(), MaskFormat::pass, n,
                        bgx.as<float>());
  Floats gx(n);
  ref::ste_backward(g.data(), mask.data(), MaskFormat::pass, n, gx.data());
  EXPECT_TRUE(same_bits(gx, to_host(bgx)));
}

// The CPU backend's own integer convolution (columns of centred inputs, any
// thread count) gives the reference's codes.
TEST(CpuBackend, IntegerConvEqualsTheReferenceForAnyThreadCount) {
  std::vector<test::ConvCase> cases;
  for (std::uint32_t seed = 200; seed < 240; ++seed) cases.push_back(test::random_case(seed));
  for (const std::int64_t features : {4, 400, 84, 7})
    cases.push_back(test::random_case(300 + static_cast<std::uint32_t>(features),
                                      {9, features, 1, 1, 5, 1, 1, 0}));
  for (const int threads : {1, 2, 3}) {
    const auto backend = make_cpu_backend(threads);
    for (const test::ConvCase& c : cases) {
      const Conv2dShape& s = c.shape;
      std::vector<std::uint8_t> y(
          static_cast<std::size_t>(s.batch * s.out_channels * s.out_height() * s.out_width()));
      const Requantization r{c.multiplier.data(), c.shift.data(), c.y_zero_point, c.y_min, c.y_max};
      backend->integer_conv2d(s, c.x.data(), c.x_zero_point, c.x_fraction_bits, c.w.data(),
                              c.w_zero_point.data(), c.bias.data(), c.accumulator_shift, r,
                              y.data());
      ASSERT_EQ(y, test::expected_conv(c)) << threads << " threads, batch " << s.batch << " "
                                           << s.in_channels << "x" << s.height << "x" << s.width;
    }
  }
}

}  // namespace
}  // namespace lowbit
