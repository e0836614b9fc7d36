// The training building blocks of the CPU reference (ref.hpp, nn_element.hpp):
// hand-computed cases for every op, PyTorch's SGD rule and qparams (golden
// vectors from tests/data/make_affine_params_golden.py), argument errors of
// both namespaces (the CUDA launchers check on the host, before touching the
// device, so those run here too) and n == 0 no-ops.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "lowbit/nn_element.hpp"
#include "lowbit/ref.hpp"
#include "test_util.hpp"

#ifndef LOWBIT_TEST_DATA_DIR
#error "LOWBIT_TEST_DATA_DIR must name the tests/data directory"
#endif

namespace lowbit {
namespace {

using test::bits_of;
using test::DeviceBuffer;
using test::host_workspace;
using test::random_values;
using test::same_bits;
using test::throws_mentioning;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kSentinel = -12345.0f;


// Variadic so that calls with commas can appear in it.
#define EXPECT_ERROR_MENTIONS(needle, ...) \
  EXPECT_TRUE(throws_mentioning([&] { __VA_ARGS__; }, needle))

// ---------------------------------------------------------------------------
// bias_activation

TEST(NnOpsBiasActivation, ConvLayoutAddsBiasPerChannelThenRelu) {
  const ChannelLayout layout{2, 3, 2};  // {batch, K, H·W}
  const std::vector<float> x = {1.0f, -1.0f, 0.5f,  kNaN,  -kInf, 2.0f,
                                0.0f, -0.5f, -4.0f, 3.0f, kInf,  -0.5f};
  const std::vector<float> bias = {0.5f, -1.0f, 0.5f};
  std::vector<float> y(12, kSentinel);
  ref::bias_activation(x.data(), bias.data(), layout, true, y.data());
  const std::vector<float> want_relu = {1.5f, 0.0f, 0.0f, kNaN, 0.0f, 2.5f,
                                        0.5f, 0.0f, 0.0f, 2.0f, kInf, 0.0f};
  EXPECT_TRUE(same_bits(want_relu, y));
  ref::bias_activation(x.data(), bias.data(), layout, false, y.data());
  const std::vector<float> want_linear = {1.5f,  -0.5f, -0.5f, kNaN, -kInf, 2.5f,
                                          0.5f,  0.0f,  -5.0f, 2.0f, kInf,  0.0f};
  EXPECT_TRUE(same_bits(want_linear, y));
}

TEST(NnOpsBiasActivation, LinearLayoutAndInPlace) {
  const ChannelLayout layout{3, 2, 1};  // {batch, out, 1}
  std::vector<float> x = {1.0f, 1.0f, -3.0f, 0.25f, 0.0f, -2.0f};
  const std::vector<float> bias = {-2.0f, 1.0f};
  ref::bias_activation(x.data(), bias.data(), layout, true, x.data());
  EXPECT_TRUE(same_bits({0.0f, 2.0f, 0.0f, 1.25f, 0.0f, 0.0f}, x));
}

// Without a bias the input is not touched by an addition: -0 stays -0 without
// the ReLU, and the ReLU maps it to +0.
TEST(NnOpsBiasActivation, ReluAloneWithoutBias) {
  const std::vector<float> x = {-0.0f, 0.0f, -1e-30f, 7.0f, kNaN, -kNaN, kInf};
  const auto layout = ChannelLayout::per_tensor(7);
  std::vector<float> y(7);
  ref::bias_activation(x.data(), nullptr, layout, true, y.data());
  EXPECT_TRUE(same_bits({0.0f, 0.0f, 0.0f, 7.0f, kNaN, -kNaN, kInf}, y));
  ref::bias_activation(x.data(), nullptr, layout, false, y.data());
  EXPECT_TRUE(same_bits(x, y));
  EXPECT_TRUE(std::isnan(relu(kNaN)));
  EXPECT_EQ(bits_of(relu(-0.0f)), bits_of(0.0f));
}

// ---------------------------------------------------------------------------
// bias_activation_backward

TEST(NnOpsBiasActivationBackward, ReluMasksWhereOutputIsNotPositive) {
  const ChannelLayout layout{2, 2, 3};
  const std::vector<float> y = {1.0f, 0.0f, -0.0f, kNaN, 2.0f, 1e-30f,
                                0.5f, 3.0f, 0.0f,  4.0f, kInf, 0.0f};
  const std::vector<float> dy = {1.0f, 2.0f,  4.0f,  8.0f,   16.0f,  32.0f,
                                 64.0f, 128.0f, 256.0f, 512.0f, 1024.0f, 2048.0f};
  std::vector<float> dx(12, kSentinel), d_bias(2, kSentinel), storage;
  ref::bias_activation_backward(dy.data(), y.data(), layout, true, nullptr, dx.data(),
                                d_bias.data(), host_workspace(storage, layout));
  EXPECT_TRUE(same_bits({1.0f, 0.0f, 0.0f, 0.0f, 16.0f, 32.0f,
                         64.0f, 128.0f, 0.0f, 512.0f, 1024.0f, 0.0f},
                        dx));
  // Channel 0: rows (0,0) and (1,0); channel 1: rows (0,1) and (1,1).
  EXPECT_EQ(d_bias[0], 1.0f + 64.0f + 128.0f);
  EXPECT_EQ(d_bias[1], 16.0f + 32.0f + 512.0f + 1024.0f);

  ref::bias_activation_backward(dy.data(), y.data(), layout, false, nullptr, dx.data(),
                                d_bias.data(), host_workspace(storage, layout));
  EXPECT_TRUE(same_bits(dy, dx));
  EXPECT_EQ(d_bias[0], 1.0f + 2.0f + 4.0f + 64.0f + 128.0f + 256.0f);
  EXPECT_EQ(d_bias[1], 8.0f + 16.0f + 32.0f + 512.0f + 1024.0f + 2048.0f);
}

// d_bias equals plain double sums to rounding, is the same bits on every call
// and with dx aliasing dy, on conv layouts (rows cut into several pieces) and
// linear ones (one element per row).
TEST(NnOpsBiasActivationBackward, BiasGradientsAreChannelSumsInAFixedOrder) {
  const std::vector<ChannelLayout> layouts = {{5, 7, 3000}, {300, 10, 1}, {64, 6, 784}};
  std::uint32_t seed = 30;
  for (const ChannelLayout& layout : layouts) {
    const std::int64_t n = layout.size();
    const auto y = random_values(n, seed++);
    const auto dy = random_values(n, seed++, 1.0f);
    std::vector<float> storage, dx(n), d_bias(layout.channels);
    const Workspace ws = host_workspace(storage, layout);
    ref::bias_activation_backward(dy.data(), y.data(), layout, true, nullptr, dx.data(),
                                  d_bias.data(), ws);
    std::vector<double> sums(layout.channels, 0.0);
    for (std::int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(bits_of(dx[i]), bits_of(y[i] > 0.0f ? dy[i] : dy[i] * 0.0f)) << i;
      sums[test::channel_of(layout, i)] += dx[i];
    }
    for (std::int64_t c = 0; c < layout.channels; ++c)
      EXPECT_NEAR(d_bias[c], sums[c], 1e-3) << "channel " << c;

    std::vector<float> again(layout.channels), in_place = dy;
    ref::bias_activation_backward(in_place.data(), y.data(), layout, true, nullptr, in_place.data(),
                                  again.data(), ws);
    EXPECT_TRUE(same_bits(d_bias, again));
    EXPECT_TRUE(same_bits(dx, in_place));
  }
}

TEST(NnOpsBiasActivationBackward, NullBiasGradientNeedsNoWorkspace) {
  const std::vector<float> y = {1.0f, -1.0f, 0.0f, 2.0f};
  std::vector<float> dy = {5.0f, 6.0f, 7.0f, 8.0f};
  ref::bias_activation_backward(dy.data(), y.data(), ChannelLayout::per_tensor(4), true, nullptr,
                                dy.data(), nullptr, Workspace{});
  EXPECT_TRUE(same_bits({5.0f, 0.0f, 0.0f, 8.0f}, dy));
}

// ---------------------------------------------------------------------------
// add

TEST(NnOpsAdd, SumsAndAliases) {
  std::vector<float> a = {1.0f, -2.0f, 0.5f, kInf, kNaN};
  std::vector<float> b = {2.0f, 2.0f, 0.25f, -kInf, 1.0f};
  std::vector<float> y(5);
  ref::add(a.data(), b.data(), 5, y.data());
  EXPECT_TRUE(same_bits({3.0f, 0.0f, 0.75f}, std::vector<float>(y.begin(), y.begin() + 3)));
  EXPECT_TRUE(std::isnan(y[3]));
  EXPECT_TRUE(std::isnan(y[4]));
  ref::add(a.data(), b.data(), 3, a.data());
  EXPECT_TRUE(same_bits({3.0f, 0.0f, 0.75f}, std::vector<float>(a.begin(), a.begin() + 3)));
  ref::add(a.data(), b.data(), 3, b.data());
  EXPECT_TRUE(same_bits({5.0f, 2.0f, 1.0f}, std::vector<float>(b.begin(), b.begin() + 3)));
  ref::add(b.data(), b.data(), 3, b.data());
  EXPECT_TRUE(same_bits({10.0f, 4.0f, 2.0f}, std::vector<float>(b.begin(), b.begin() + 3)));
}

// ---------------------------------------------------------------------------
// softmax_cross_entropy

/// -log softmax(row)[label] in double.
double row_loss(const std::vector<float>& row, int label) {
  double m = -INFINITY;
  for (float v : row) m = std::max(m, static_cast<double>(v));
  double sum = 0.0;
  for (float v : row) sum += std::exp(v - m);
  return std::log(sum) - (row[label] - m);
}

TEST(NnOpsSoftmax, KnownLogitsPaddingAndTies) {
  const int classes = 3;
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f,    // label 2: argmax 2, correct
                                     0.0f, 0.0f, 0.0f,    // label 1: tie, first max 0 wins
                                     5.0f, -5.0f, 0.0f};  // padding
  const std::vector<std::int32_t> labels = {2, 1, -1};
  std::vector<float> d(9, kSentinel);
  LossTotals totals;
  ref::softmax_cross_entropy(logits.data(), labels.data(), 3, classes, d.data(), &totals);
  const double loss0 = std::log(std::exp(-2.0) + std::exp(-1.0) + 1.0);
  EXPECT_NEAR(totals.loss_sum, loss0 + std::log(3.0), 1e-6);
  EXPECT_EQ(totals.correct, 1);
  EXPECT_EQ(totals.examples, 2);
  const double s0 = std::exp(-2.0) + std::exp(-1.0) + 1.0;
  const double want[9] = {std::exp(-2.0) / s0 / 2, std::exp(-1.0) / s0 / 2, (1.0 / s0 - 1) / 2,
                          1.0 / 6,                 (1.0 / 3 - 1) / 2,       1.0 / 6,
                          0.0,                     0.0,                     0.0};
  for (int i = 0; i < 9; ++i) EXPECT_NEAR(d[i], want[i], 2e-7) << i;
  EXPECT_EQ(bits_of(d[6]), bits_of(0.0f));

  // Totals accumulate over calls.
  ref::softmax_cross_entropy(logits.data(), labels.data(), 3, classes, nullptr, &totals);
  EXPECT_NEAR(totals.loss_sum, 2 * (loss0 + std::log(3.0)), 1e-6);
  EXPECT_EQ(totals.correct, 2);
  EXPECT_EQ(totals.examples, 4);
}

TEST(NnOpsSoftmax, FirstMaximumWinsTheArgmax) {
  const std::vector<float> logits = {3.0f, 7.0f, 7.0f, 1.0f, 3.0f, 7.0f, 7.0f, 1.0f,
                                     kNaN, 2.0f, 2.0f, 1.0f};
  const std::vector<std::int32_t> labels = {1, 2, 1};
  LossTotals totals;
  ref::softmax_cross_entropy(logits.data(), labels.data(), 3, 4, nullptr, &totals);
  EXPECT_EQ(totals.correct, 2);  // row 0 (index 1), row 2 (NaN never wins, so index 1)
  EXPECT_EQ(totals.examples, 3);
  EXPECT_TRUE(std::isnan(totals.loss_sum));  // row 2's NaN logit poisons its loss
  EXPECT_FALSE(argmax_takes(kNaN, 0, 1.0f, 3));
  EXPECT_TRUE(argmax_takes(1.0f, 0, 1.0f, 3));
  EXPECT_FALSE(argmax_takes(1.0f, 4, 1.0f, 3));
}

// Max-subtraction keeps huge logits finite.
TEST(NnOpsSoftmax, LargeLogitsStayFinite) {
  const std::vector<float> logits = {1000.0f, 0.0f, -1000.0f, 1000.0f};
  const std::vector<std::int32_t> labels = {0, 0};
  std::vector<float> d(4);
  LossTotals totals;
  ref::softmax_cross_entropy(logits.data(), labels.data(), 2, 2, d.data(), &totals);
  EXPECT_NEAR(totals.loss_sum, 2000.0, 1e-3);
  EXPECT_EQ(totals.correct, 1);
  for (float v : d) EXPECT_TRUE(std::isfinite(v));
  EXPECT_EQ(d[0], 0.0f);
  EXPECT_EQ(d[2], -0.5f);
  EXPECT_EQ(d[3], 0.5f);
}

TEST(NnOpsSoftmax, AllPaddingLeavesTotalsAndZeroesTheGradient) {
  const std::vector<float> logits(6, 1.0f);
  const std::vector<std::int32_t> labels = {-1, -1};
  std::vector<float> d(6, kSentinel);
  LossTotals totals{1.5, 3, 4};
  ref::softmax_cross_entropy(logits.data(), labels.data(), 2, 3, d.data(), &totals);
  EXPECT_EQ(d, std::vector<float>(6, 0.0f));
  EXPECT_EQ(totals.loss_sum, 1.5);
  EXPECT_EQ(totals.correct, 3);
  EXPECT_EQ(totals.examples, 4);
}

// Many rows of up to 1024 classes: loss against double sums; d_logits is the
// gradient of the mean loss (central differences) and sums to 0 per row.
TEST(NnOpsSoftmax, MatchesDoubleReferenceAndFiniteDifferences) {
  for (int classes : {1, 10, 33, 1024}) {
    SCOPED_TRACE(::testing::Message() << "classes " << classes);
    const std::int64_t batch = 77;
    const auto logits = random_values(batch * classes, 40 + classes, 3.0f);
    std::vector<std::int32_t> labels(batch);
    std::int64_t labelled = 0;
    for (std::int64_t r = 0; r < batch; ++r) {
      labels[r] = r % 9 == 4 ? -1 : static_cast<std::int32_t>((r * 7919) % classes);
      labelled += labels[r] >= 0;
    }
    std::vector<float> d(batch * classes);
    LossTotals totals;
    ref::softmax_cross_entropy(logits.data(), labels.data(), batch, classes, d.data(), &totals);
    double want = 0.0;
    for (std::int64_t r = 0; r < batch; ++r) {
      if (labels[r] < 0) continue;
      want += row_loss({logits.begin() + r * classes, logits.begin() + (r + 1) * classes},
                       labels[r]);
      double row_sum = 0.0;
      for (int c = 0; c < classes; ++c) row_sum += d[r * classes + c];
      EXPECT_NEAR(row_sum, 0.0, 1e-6) << "row " << r;
    }
    EXPECT_NEAR(totals.loss_sum, want, 1e-5 * std::max(1.0, want));
    EXPECT_EQ(totals.examples, labelled);

    // Central differences of the mean loss in a few coordinates.
    for (std::int64_t i : {std::int64_t{0}, batch * classes / 2, batch * classes - 1}) {
      const float h = 1e-2f;
      auto mean_loss = [&](float delta) {
        auto shifted = logits;
        shifted[i] += delta;
        LossTotals t;
        ref::softmax_cross_entropy(shifted.data(), labels.data(), batch, classes, nullptr, &t);
        return t.loss_sum / static_cast<double>(labelled);
      };
      const double numeric = (mean_loss(h) - mean_loss(-h)) / (2.0 * h);
      EXPECT_NEAR(d[i], numeric, 1e-4) << "logit " << i;
    }
  }
}

TEST(NnOpsSoftmax, LabelsOutsideTheClassesThrowBeforeWriting) {
  const std::vector<float> logits(6, 0.0f);
  std::vector<float> d(6, kSentinel);
  LossTotals totals;
  for (std::int32_t bad : {3, -2, 1000}) {
    const std::vector<std::int32_t> labels = {0, bad};
    EXPECT_ERROR_MENTIONS("label of row 1",
                          ref::softmax_cross_entropy(logits.data(), labels.data(), 2, 3, d.data(),
                                                     &totals));
  }
  EXPECT_EQ(d, std::vector<float>(6, kSentinel));
  EXPECT_EQ(totals.examples, 0);
}

// ---------------------------------------------------------------------------
// sgd_step

/// torch.optim.SGD's step for one parameter (dampening 0, no Nesterov), in
/// double: the first step clones d_p into the momentum buffer.
struct TorchSgd {
  double p, buf = 0.0;
  bool has_buf = false;
  void step(double grad, double lr, double momentum, double weight_decay) {
    double d_p = grad;
    if (weight_decay != 0.0) d_p += weight_decay * p;
    if (momentum != 0.0) {
      buf = has_buf ? momentum * buf + d_p : d_p;
      has_buf = true;
      d_p = buf;
    }
    p -= lr * d_p;
  }
};

// Dyadic values keep every operation exact, so the comparison is exact.
TEST(NnOpsSgd, FollowsPyTorchsRuleWithDecayOnAPrefix) {
  for (const SgdConfig config : {SgdConfig{0.5f, 0.5f, 0.25f}, SgdConfig{0.25f, 0.0f, 0.5f},
                                 SgdConfig{0.5f, 0.75f, 0.0f}}) {
    std::vector<float> params = {1.0f, -2.0f, 4.0f, 0.5f};
    std::vector<float> velocity(4, 0.0f);
    std::vector<TorchSgd> torch_decayed, torch_plain;
    for (float p : params) {
      torch_decayed.push_back({p});
      torch_plain.push_back({p});
    }
    const std::int64_t decay_count = 2;
    const float grads[3][4] = {{0.5f, -1.0f, 2.0f, 0.25f},
                               {-0.5f, 0.75f, 1.0f, -1.0f},
                               {1.0f, 0.125f, -2.0f, 0.5f}};
    for (const auto& g : grads) {
      ref::sgd_step(params.data(), g, velocity.data(), 4, decay_count, config);
      for (int i = 0; i < 4; ++i) {
        TorchSgd& t = i < decay_count ? torch_decayed[i] : torch_plain[i];
        t.step(g[i], config.learning_rate, config.momentum,
               i < decay_count ? config.weight_decay : 0.0);
        EXPECT_EQ(params[i], static_cast<float>(t.p)) << "parameter " << i;
      }
    }
  }
}

TEST(NnOpsSgd, DefaultConfigMatchesTheElementRule) {
  const std::int64_t n = 1000;
  auto params = random_values(n, 50);
  const auto grads = random_values(n, 51);
  auto velocity = random_values(n, 52, 0.1f);
  auto want_p = params, want_v = velocity;
  SgdConfig config;
  config.weight_decay = 5e-4f;
  ref::sgd_step(params.data(), grads.data(), velocity.data(), n, 600, config);
  for (std::int64_t i = 0; i < n; ++i) {
    const float g = i < 600 ? grads[i] + config.weight_decay * want_p[i] : grads[i];
    want_v[i] = config.momentum * want_v[i] + g;
    want_p[i] = want_p[i] - config.learning_rate * want_v[i];
  }
  EXPECT_TRUE(same_bits(want_p, params));
  EXPECT_TRUE(same_bits(want_v, velocity));
}

// ---------------------------------------------------------------------------
// shuffle_indices

std::vector<std::int32_t> shuffled(std::uint64_t seed, std::int64_t epoch, std::int64_t n) {
  std::vector<std::int32_t> perm(n, -1);
  ref::shuffle_indices(seed, epoch, n, perm.data(), Workspace{});
  return perm;
}

// splitmix64's first output from state 0 is a published constant.
TEST(NnOpsShuffle, KeyIsSplitMix64) {
  EXPECT_EQ(splitmix64(0), 0xe220a8397b1dcdafull);
  EXPECT_NE(shuffle_key(1, 0, 5), shuffle_key(1, 1, 5));
  EXPECT_NE(shuffle_key(1, 0, 5), shuffle_key(2, 0, 5));
}

TEST(NnOpsShuffle, PermutationSortedByKey) {
  for (std::int64_t n : {1, 2, 3, 1000, 60000}) {
    const auto perm = shuffled(42, 3, n);
    std::vector<std::int32_t> sorted = perm;
    std::sort(sorted.begin(), sorted.end());
    std::vector<std::int32_t> iota(n);
    std::iota(iota.begin(), iota.end(), 0);
    ASSERT_EQ(sorted, iota) << "n " << n;
    for (std::int64_t i = 1; i < n; ++i)
      ASSERT_LT(shuffle_key(42, 3, perm[i - 1]), shuffle_key(42, 3, perm[i])) << i;
  }
  EXPECT_EQ(ref::shuffle_workspace_bytes(60000), 0u);
}

TEST(NnOpsShuffle, DeterministicAndDifferentAcrossEpochsAndSeeds) {
  const std::int64_t n = 1000;
  const auto base = shuffled(7, 0, n);
  EXPECT_EQ(base, shuffled(7, 0, n));
  EXPECT_NE(base, shuffled(7, 1, n));
  EXPECT_NE(base, shuffled(8, 0, n));
  std::vector<std::int32_t> iota(n);
  std::iota(iota.begin(), iota.end(), 0);
  EXPECT_NE(base, iota);
  // A shuffle, not a rotation: few fixed points.
  int fixed = 0;
  for (std::int64_t i = 0; i < n; ++i) fixed += base[i] == i;
  EXPECT_LT(fixed, 10);
}

// ---------------------------------------------------------------------------
// gather_batch and advance_cursor

struct TinyDataset {
  static constexpr std::int64_t kN = 5, kPixels = 3;
  std::vector<std::uint8_t> images = {0, 255, 51, 10, 20, 30, 255, 255, 0,
                                      1, 2,   3,  128, 64, 32};
  std::vector<std::uint8_t> labels = {9, 8, 7, 6, 5};
};

TEST(NnOpsGather, NormalisesPermutedRowsAndPadsPastTheEnd) {
  const TinyDataset data;
  const std::vector<std::int32_t> perm = {4, 2, 0, 1, 3};
  const Normalization norm{0.5f, 0.5f};
  const std::int64_t batch = 2;
  std::int64_t cursor = 0;
  std::vector<float> x(batch * 3, kSentinel);
  std::vector<std::int32_t> labels(batch, 99);
  auto gather = [&] {
    ref::gather_batch(data.images.data(), data.labels.data(), TinyDataset::kN, 3, perm.data(),
                      &cursor, batch, norm, x.data(), labels.data());
  };
  auto pixel = [&](std::uint8_t p) { return (static_cast<float>(p) / 255.0f - 0.5f) / 0.5f; };

  gather();  // examples 4 and 2
  EXPECT_TRUE(same_bits({pixel(128), pixel(64), pixel(32), 1.0f, 1.0f, -1.0f}, x));
  EXPECT_EQ(labels, (std::vector<std::int32_t>{5, 7}));
  ref::advance_cursor(&cursor);
  EXPECT_EQ(cursor, 1);
  gather();  // examples 0 and 1
  EXPECT_TRUE(same_bits({-1.0f, 1.0f, pixel(51), pixel(10), pixel(20), pixel(30)}, x));
  EXPECT_EQ(labels, (std::vector<std::int32_t>{9, 8}));
  ref::advance_cursor(&cursor);
  gather();  // example 3, then a padding row
  EXPECT_TRUE(same_bits({pixel(1), pixel(2), pixel(3), 0.0f, 0.0f, 0.0f}, x));
  EXPECT_EQ(labels, (std::vector<std::int32_t>{6, -1}));
  ref::advance_cursor(&cursor);
  gather();  // all padding
  EXPECT_TRUE(same_bits(std::vector<float>(6, 0.0f), x));
  EXPECT_EQ(labels, (std::vector<std::int32_t>{-1, -1}));
}

TEST(NnOpsGather, NullPermutationIsIdentityOrder) {
  const TinyDataset data;
  const Normalization norm;  // Fashion-MNIST's
  std::int64_t cursor = 1;
  std::vector<float> x(4 * 3);
  std::vector<std::int32_t> labels(4);
  ref::gather_batch(data.images.data(), data.labels.data(), TinyDataset::kN, 3, nullptr, &cursor,
                    4, norm, x.data(), labels.data());
  EXPECT_EQ(labels, (std::vector<std::int32_t>{5, -1, -1, -1}));
  EXPECT_EQ(x[0], normalize_pixel(128, norm));
  EXPECT_EQ(x[0], (128.0f / 255.0f - 0.2860f) / 0.3530f);
  EXPECT_EQ(x[2], normalize_pixel(32, norm));
  EXPECT_EQ(x[3], 0.0f);
}

TEST(NnOpsGather, RejectsBadCursorAndPermutation) {
  const TinyDataset data;
  std::vector<float> x(6, kSentinel);
  std::vector<std::int32_t> labels(2, 99);
  std::int64_t cursor = -1;
  EXPECT_ERROR_MENTIONS("cursor is negative",
                        ref::gather_batch(data.images.data(), data.labels.data(), 5, 3, nullptr,
                                          &cursor, 2, Normalization{}, x.data(), labels.data()));
  cursor = 0;
  const std::vector<std::int32_t> perm = {0, 5, 1, 2, 3};
  EXPECT_ERROR_MENTIONS("perm[1] = 5",
                        ref::gather_batch(data.images.data(), data.labels.data(), 5, 3,
                                          perm.data(), &cursor, 2, Normalization{}, x.data(),
                                          labels.data()));
  EXPECT_EQ(x, std::vector<float>(6, kSentinel));
  // The CUDA side's rule, shared: bad entries and positions become padding.
  EXPECT_EQ(batch_example(1, 5, perm.data()), -1);
  EXPECT_EQ(batch_example(-1, 5, nullptr), -1);
  EXPECT_EQ(batch_example(5, 5, nullptr), -1);
  EXPECT_EQ(batch_example(4, 5, perm.data()), 3);
}

// ---------------------------------------------------------------------------
// affine_params_from_range

struct QparamsCase {
  std::string name;
  AffineQuant quant;
  bool symmetric;
  std::vector<float> min, max, scale;
  std::vector<std::int32_t> zero_point;
};

std::vector<float> floats_from_bits(const nlohmann::json& j) {
  std::vector<float> out;
  for (const auto& b : j) {
    const std::uint32_t u = b.get<std::uint32_t>();
    float v;
    std::memcpy(&v, &u, sizeof v);
    out.push_back(v);
  }
  return out;
}

const std::vector<QparamsCase>& golden_qparams() {
  static const std::vector<QparamsCase> cases = [] {
    const std::string path = std::string(LOWBIT_TEST_DATA_DIR) + "/affine_params_golden.json";
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open " + path);
    const auto doc = nlohmann::json::parse(in);
    std::vector<QparamsCase> out;
    for (const auto& c : doc.at("cases")) {
      out.push_back({c.at("name").get<std::string>(),
                     {c.at("qmin").get<int>(), c.at("qmax").get<int>()},
                     c.at("symmetric").get<bool>(),
                     floats_from_bits(c.at("min_bits")),
                     floats_from_bits(c.at("max_bits")),
                     floats_from_bits(c.at("scale_bits")),
                     c.at("zero_point").get<std::vector<std::int32_t>>()});
    }
    return out;
  }();
  return cases;
}

TEST(NnOpsAffineParams, MatchesPyTorchObserversExactly) {
  const auto& cases = golden_qparams();
  ASSERT_EQ(cases.size(), 20u);
  for (const auto& g : cases) {
    SCOPED_TRACE(g.name);
    const std::int64_t channels = static_cast<std::int64_t>(g.min.size());
    ASSERT_GT(channels, 0);
    std::vector<float> scale(channels, kSentinel);
    std::vector<std::int32_t> zero_point(channels, -99999);
    ref::affine_params_from_range(g.min.data(), g.max.data(), channels, g.quant, g.symmetric,
                                  scale.data(), zero_point.data());
    EXPECT_TRUE(same_bits(g.scale, scale));
    EXPECT_TRUE(same_bits(g.zero_point, zero_point));
  }
}

TEST(NnOpsAffineParams, HandComputed) {
  const std::vector<float> lo = {-1.0f, -1.0f, 0.5f, 0.0f}, hi = {0.5f, 3.0f, 2.0f, 0.0f};
  std::vector<float> scale(4);
  std::vector<std::int32_t> zp(4);
  ref::affine_params_from_range(lo.data(), hi.data(), 4, AffineQuant::signed_bits(8), true,
                                scale.data(), zp.data());
  EXPECT_EQ(scale[0], 1.0f / 127.5f);
  EXPECT_EQ(zp, (std::vector<std::int32_t>{0, 0, 0, 0}));
  EXPECT_EQ(scale[3], FLT_EPSILON);
  ref::affine_params_from_range(lo.data(), hi.data(), 4, AffineQuant::unsigned_bits(4), false,
                                scale.data(), zp.data());
  EXPECT_EQ(scale[1], 4.0f / 15.0f);
  EXPECT_EQ(zp[1], 4);               // 0 - round(-3.75)
  EXPECT_EQ(scale[2], 2.0f / 15.0f);  // [0.5, 2] widened to [0, 2]
  EXPECT_EQ(zp[2], 0);
  ref::affine_params_from_range(lo.data(), hi.data(), 4, AffineQuant::unsigned_bits(4), true,
                                scale.data(), zp.data());
  EXPECT_EQ(zp, (std::vector<std::int32_t>{7, 7, 7, 7}));
  EXPECT_EQ(scale[1], 3.0f / 7.5f);
}

TEST(NnOpsAffineParams, InvalidRangesThrowOnTheHostAndAreSanitisedOnTheDevice) {
  std::vector<float> scale(1, kSentinel);
  std::vector<std::int32_t> zp(1, 5);
  const float one = 1.0f, minus = -1.0f;
  EXPECT_ERROR_MENTIONS("min > max", ref::affine_params_from_range(&one, &minus, 1, AffineQuant{},
                                                                   false, scale.data(), zp.data()));
  EXPECT_ERROR_MENTIONS("not finite", ref::affine_params_from_range(&kNaN, &one, 1, AffineQuant{},
                                                                    false, scale.data(),
                                                                    zp.data()));
  EXPECT_EQ(scale[0], kSentinel);
  // affine_qparams (the CUDA kernel's math): PyTorch's defaults.
  const std::vector<std::pair<float, float>> invalid = {{kNaN, 1.0f}, {-kInf, 1.0f}, {1.0f, -1.0f}};
  for (const auto& [lo, hi] : invalid) {
    const AffineQparams p = affine_qparams(lo, hi, -8, 7, false);
    EXPECT_EQ(p.scale, 1.0f);
    EXPECT_EQ(p.zero_point, 0);
    EXPECT_EQ(affine_qparams(lo, hi, 1, 255, true).zero_point, 1);
  }
}

// ---------------------------------------------------------------------------
// max_pool_forward / max_pool_backward

float float_of(std::uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

struct Pooled {
  std::vector<float> y, dx;
};

Pooled max_pool(const Pool2dShape& s, const std::vector<float>& x, const std::vector<float>& dy) {
  Pooled out{std::vector<float>(dy.size(), kSentinel), std::vector<float>(x.size(), kSentinel)};
  ref::max_pool_forward(s, x.data(), out.y.data());
  ref::max_pool_backward(s, x.data(), dy.data(), out.dx.data());
  return out;
}

// 2x2/2 (the unrolled path) and 4x4/4 (the general one) over ties: the first
// maximum in row-major order is the output and takes the gradient.
TEST(NnOpsMaxPool, TiesGoToTheFirstMaximum) {
  const Pooled two = max_pool({1, 1, 2, 4, 2, 2}, {1, 2, 3, 3, 2, 2, 3, 1}, {10, 20});
  EXPECT_TRUE(same_bits(std::vector<float>{2, 3}, two.y));
  EXPECT_TRUE(same_bits(std::vector<float>{0, 10, 20, 0, 0, 0, 0, 0}, two.dx));

  std::vector<float> x(16, 4.0f);
  x[0] = 3.0f;
  const Pooled four = max_pool({1, 1, 4, 4, 4, 4}, x, {5});
  std::vector<float> want(16, 0.0f);
  want[1] = 5.0f;
  EXPECT_TRUE(same_bits(std::vector<float>{4}, four.y));
  EXPECT_TRUE(same_bits(want, four.dx));
}

// -0 and +0 compare equal: the first one in row-major order is the output
// (its sign kept) and takes the gradient.
TEST(NnOpsMaxPool, SignedZerosKeepTheFirst) {
  const Pool2dShape s{1, 1, 2, 4, 2, 2};
  const Pooled got = max_pool(s, {-0.0f, 0.0f, 0.0f, -0.0f, -0.0f, 0.0f, -0.0f, 0.0f}, {1, 2});
  EXPECT_TRUE(same_bits(std::vector<float>{-0.0f, 0.0f}, got.y));
  EXPECT_TRUE(same_bits(std::vector<float>{1, 0, 2, 0, 0, 0, 0, 0}, got.dx));
}

// The first NaN of a window wins over numbers before and after it and over
// later NaNs: the output copies its bits, and it takes the gradient. ±Inf are
// ordinary values.
TEST(NnOpsMaxPool, FirstNaNWinsAndInfinitiesAreValues) {
  const float nan_a = float_of(0x7fc00001u), nan_b = float_of(0xffc00002u);
  const Pool2dShape s{1, 1, 2, 8, 2, 2};
  const std::vector<float> x = {5,    nan_a, -kInf, -kInf, 1, kInf, 3, 2,
                                nan_b, 9,    -kInf, -kInf, 2, kInf, nan_a, 1};
  const Pooled got = max_pool(s, x, {1, 2, 3, 4});
  EXPECT_EQ(bits_of(got.y[0]), 0x7fc00001u);
  EXPECT_TRUE(same_bits(std::vector<float>{-kInf, kInf, nan_a}, {got.y[1], got.y[2], got.y[3]}));
  EXPECT_TRUE(same_bits(std::vector<float>{0, 1, 2, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0},
                        got.dx));
}

// 3x3/1: the centre of a 5x5 plane of zeros is every window's first maximum,
// and its gradient is the sum in row-major window order from +0, which here
// differs from the sum in any other order (1e8 + 1 rounds back to 1e8).
TEST(NnOpsMaxPool, OverlappingWindowsAddInOutputOrder) {
  const Pool2dShape s{1, 1, 5, 5, 3, 1};
  std::vector<float> x(25, 0.0f);
  x[12] = 1.0f;
  const std::vector<float> dy = {1e8f, 1, -1e8f, 1, 1, 1, 1, 1, 1};
  const Pooled got = max_pool(s, x, dy);
  float want = 0.0f;
  for (const float g : dy) want += g;
  EXPECT_EQ(want, 6.0f);  // not 7: the 1 right after 1e8 is lost
  EXPECT_TRUE(same_bits(std::vector<float>(9, 1.0f), got.y));
  std::vector<float> want_dx(25, 0.0f);
  want_dx[12] = want;
  EXPECT_TRUE(same_bits(want_dx, got.dx));
}

// A dy of -0 gives +0 (0.0f + -0), and so do the elements no window reads
// (stride > kernel leaves gaps).
TEST(NnOpsMaxPool, UnpickedElementsGetPositiveZero) {
  const Pool2dShape s{1, 1, 4, 4, 1, 3};  // windows (0,0) (0,3) (3,0) (3,3)
  std::vector<float> x(16);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i);
  const Pooled got = max_pool(s, x, {-0.0f, -1, -2, -3});
  std::vector<float> want(16, 0.0f);
  want[3] = -1;
  want[12] = -2;
  want[15] = -3;
  EXPECT_TRUE(same_bits(std::vector<float>{0, 3, 12, 15}, got.y));
  EXPECT_TRUE(same_bits(want, got.dx));
}

// ---------------------------------------------------------------------------
// Argument errors (both namespaces) and empty inputs

TEST(NnOpsArguments, EachOpRejectsBadArgumentsInBothNamespaces) {
  std::vector<float> f(8, 0.0f), g(8, 0.0f), h(8, 0.0f);
  std::vector<std::int32_t> labels(2, 0), perm(8, 0);
  std::vector<std::uint8_t> bytes(24, 0);
  std::int64_t cursor = 0;
  LossTotals totals;
  const ChannelLayout layout{2, 2, 2};
  const ChannelLayout negative{1, -2, 3};
  const Workspace tiny{f.data(), 4};

  EXPECT_ERROR_MENTIONS("x is null", ref::bias_activation(nullptr, g.data(), layout, true, h.data()));
  EXPECT_ERROR_MENTIONS("x is null",
                        cuda::bias_activation(nullptr, g.data(), layout, true, h.data(), nullptr));
  EXPECT_ERROR_MENTIONS("negative size",
                        ref::bias_activation(f.data(), g.data(), negative, true, h.data()));
  EXPECT_ERROR_MENTIONS("workspace",
                        ref::bias_activation_backward(f.data(), g.data(), layout, true, nullptr,
                                                      h.data(), g.data(), tiny));
  EXPECT_ERROR_MENTIONS("workspace",
                        cuda::bias_activation_backward(f.data(), g.data(), layout, true, nullptr,
                                                       h.data(), g.data(), tiny, nullptr));
  EXPECT_ERROR_MENTIONS("y is null", ref::bias_activation_backward(f.data(), nullptr, layout, true,
                                                                   nullptr, h.data(), nullptr, {}));
  EXPECT_ERROR_MENTIONS("b is null", ref::add(f.data(), nullptr, 8, h.data()));
  EXPECT_ERROR_MENTIONS("b is null", cuda::add(f.data(), nullptr, 8, h.data(), nullptr));
  EXPECT_ERROR_MENTIONS("negative length", ref::add(f.data(), g.data(), -1, h.data()));

  for (int classes : {0, -1, kMaxSoftmaxClasses + 1}) {
    EXPECT_ERROR_MENTIONS("classes must be in 1..1024",
                          ref::softmax_cross_entropy(f.data(), labels.data(), 2, classes, g.data(),
                                                     &totals));
    EXPECT_ERROR_MENTIONS("classes must be in 1..1024",
                          cuda::softmax_cross_entropy(f.data(), labels.data(), 2, classes,
                                                      g.data(), &totals, nullptr));
  }
  EXPECT_ERROR_MENTIONS("totals is null", ref::softmax_cross_entropy(f.data(), labels.data(), 2, 4,
                                                                     g.data(), nullptr));
  EXPECT_ERROR_MENTIONS("batch must not be negative",
                        cuda::softmax_cross_entropy(f.data(), labels.data(), -1, 4, g.data(),
                                                    &totals, nullptr));

  EXPECT_ERROR_MENTIONS("decay_count", ref::sgd_step(f.data(), g.data(), h.data(), 8, 9, {}));
  EXPECT_ERROR_MENTIONS("decay_count",
                        cuda::sgd_step(f.data(), g.data(), h.data(), 8, -1, {}, nullptr));
  EXPECT_ERROR_MENTIONS("learning rate",
                        ref::sgd_step(f.data(), g.data(), h.data(), 8, 0, {-0.1f, 0.9f, 0.0f}));
  EXPECT_ERROR_MENTIONS("momentum",
                        cuda::sgd_step(f.data(), g.data(), h.data(), 8, 0, {0.1f, kNaN, 0.0f},
                                       nullptr));
  EXPECT_ERROR_MENTIONS("weight decay",
                        ref::sgd_step(f.data(), g.data(), h.data(), 8, 0, {0.1f, 0.9f, -1.0f}));
  EXPECT_ERROR_MENTIONS("velocity is null", ref::sgd_step(f.data(), g.data(), nullptr, 8, 0, {}));

  EXPECT_ERROR_MENTIONS("shuffle takes", ref::shuffle_indices(1, 0, -1, perm.data(), {}));
  EXPECT_ERROR_MENTIONS("shuffle takes", cuda::shuffle_indices(1, 0, -1, perm.data(), {}, nullptr));
  EXPECT_ERROR_MENTIONS("shuffle takes", cuda::shuffle_workspace_bytes(std::int64_t{1} << 31));
  EXPECT_ERROR_MENTIONS("perm is null", ref::shuffle_indices(1, 0, 8, nullptr, {}));

  const Normalization no_spread{0.5f, 0.0f};
  EXPECT_ERROR_MENTIONS("example_size", ref::gather_batch(bytes.data(), bytes.data(), 8, 0,
                                                          nullptr, &cursor, 2, {}, f.data(),
                                                          labels.data()));
  EXPECT_ERROR_MENTIONS("normalization",
                        cuda::gather_batch(bytes.data(), bytes.data(), 8, 3, nullptr, &cursor, 2,
                                           no_spread, f.data(), labels.data(), nullptr));
  EXPECT_ERROR_MENTIONS("cursor is null",
                        cuda::gather_batch(bytes.data(), bytes.data(), 8, 3, nullptr, nullptr, 2,
                                           {}, f.data(), labels.data(), nullptr));
  EXPECT_ERROR_MENTIONS("labels_out is null",
                        ref::gather_batch(bytes.data(), bytes.data(), 8, 3, nullptr, &cursor, 2,
                                          {}, f.data(), nullptr));
  EXPECT_ERROR_MENTIONS("cursor is null", ref::advance_cursor(nullptr));
  EXPECT_ERROR_MENTIONS("cursor is null", cuda::advance_cursor(nullptr, nullptr));

  const Pool2dShape pool{1, 2, 2, 2, 2, 2};
  for (const Pool2dShape& bad : {Pool2dShape{1, 1, 2, 2, 3, 1}, Pool2dShape{1, 1, 4, 4, 0, 1},
                                 Pool2dShape{1, 1, 4, 4, 2, 0}, Pool2dShape{-1, 1, 4, 4, 2, 2}}) {
    EXPECT_ERROR_MENTIONS("the window must fit", ref::max_pool_forward(bad, f.data(), g.data()));
    EXPECT_ERROR_MENTIONS("the window must fit",
                          cuda::max_pool_backward(bad, f.data(), g.data(), h.data(), nullptr));
  }
  EXPECT_ERROR_MENTIONS("x is null", ref::max_pool_forward(pool, nullptr, g.data()));
  EXPECT_ERROR_MENTIONS("y is null", cuda::max_pool_forward(pool, f.data(), nullptr, nullptr));
  EXPECT_ERROR_MENTIONS("dy is null",
                        ref::max_pool_backward(pool, f.data(), nullptr, h.data()));
  EXPECT_ERROR_MENTIONS("dx is null",
                        cuda::max_pool_backward(pool, f.data(), g.data(), nullptr, nullptr));

  std::vector<std::int32_t> zp(8);
  EXPECT_ERROR_MENTIONS("must be below qmax",
                        ref::affine_params_from_range(f.data(), g.data(), 8, AffineQuant{5, 5},
                                                      false, h.data(), zp.data()));
  EXPECT_ERROR_MENTIONS("must span 2..16 bits",
                        cuda::affine_params_from_range(f.data(), g.data(), 8, AffineQuant{0, 1},
                                                       false, h.data(), zp.data(), nullptr));
  EXPECT_ERROR_MENTIONS("scale is null",
                        ref::affine_params_from_range(f.data(), g.data(), 8, AffineQuant{}, true,
                                                      nullptr, zp.data()));
  EXPECT_EQ(h, std::vector<float>(8, 0.0f));
  EXPECT_EQ(totals.examples, 0);
  EXPECT_EQ(cursor, 0);
}

// n == 0 touches nothing (null pointers are fine) and launches nothing, so the
// CUDA calls run without a device too.
TEST(NnOpsEmpty, ZeroSizesAreNoOps) {
  const ChannelLayout empty{0, 3, 5};
  float d_bias[3] = {kSentinel, kSentinel, kSentinel};
  ref::bias_activation(nullptr, nullptr, empty, true, nullptr);
  cuda::bias_activation(nullptr, nullptr, empty, true, nullptr, nullptr);
  ref::bias_activation_backward(nullptr, nullptr, empty, true, nullptr, nullptr, d_bias, {});
  cuda::bias_activation_backward(nullptr, nullptr, empty, true, nullptr, nullptr, d_bias, {},
                                 nullptr);
  EXPECT_EQ(d_bias[0], kSentinel);
  ref::add(nullptr, nullptr, 0, nullptr);
  cuda::add(nullptr, nullptr, 0, nullptr, nullptr);
  for (const Pool2dShape& no_planes :
       {Pool2dShape{0, 3, 4, 4, 2, 2}, Pool2dShape{2, 0, 4, 4, 2, 2}}) {
    ref::max_pool_forward(no_planes, nullptr, nullptr);
    cuda::max_pool_forward(no_planes, nullptr, nullptr, nullptr);
    ref::max_pool_backward(no_planes, nullptr, nullptr, nullptr);
    cuda::max_pool_backward(no_planes, nullptr, nullptr, nullptr, nullptr);
  }
  ref::softmax_cross_entropy(nullptr, nullptr, 0, 10, nullptr, nullptr);
  cuda::softmax_cross_entropy(nullptr, nullptr, 0, 10, nullptr, nullptr, nullptr);
  ref::sgd_step(nullptr, nullptr, nullptr, 0, 0, {});
  cuda::sgd_step(nullptr, nullptr, nullptr, 0, 0, {}, nullptr);
  EXPECT_EQ(ref::shuffle_workspace_bytes(0), 0u);
  EXPECT_EQ(cuda::shuffle_workspace_bytes(0), 0u);
  ref::shuffle_indices(1, 2, 0, nullptr, {});
  cuda::shuffle_indices(1, 2, 0, nullptr, {}, nullptr);
  ref::gather_batch(nullptr, nullptr, 0, 784, nullptr, nullptr, 0, {}, nullptr, nullptr);
  cuda::gather_batch(nullptr, nullptr, 0, 784, nullptr, nullptr, 0, {}, nullptr, nullptr,
                     nullptr);
  ref::affine_params_from_range(nullptr, nullptr, 0, AffineQuant{}, true, nullptr, nullptr);
  cuda::affine_params_from_range(nullptr, nullptr, 0, AffineQuant{}, true, nullptr, nullptr,
                                 nullptr);
}

// An empty dataset gives padding rows (batch > 0 still writes its outputs).
TEST(NnOpsEmpty, EmptyDatasetGivesPaddingRows) {
  std::int64_t cursor = 0;
  std::vector<float> x(6, kSentinel);
  std::vector<std::int32_t> labels(2, 7);
  ref::gather_batch(nullptr, nullptr, 0, 3, nullptr, &cursor, 2, {}, x.data(), labels.data());
  EXPECT_EQ(x, std::vector<float>(6, 0.0f));
  EXPECT_EQ(labels, (std::vector<std::int32_t>{-1, -1}));
}

// ---------------------------------------------------------------------------
// GPU: the golden qparams on the device (kept here beside the loader).

TEST(GpuNnOpsAffineParams, MatchesPyTorchObserversExactly) {
  LOWBIT_REQUIRE_GPU();
  cudaStream_t stream;
  LOWBIT_CUDA_TRY(cudaStreamCreate(&stream));
  for (const auto& g : golden_qparams()) {
    SCOPED_TRACE(g.name);
    const std::int64_t channels = static_cast<std::int64_t>(g.min.size());
    DeviceBuffer<float> lo(g.min), hi(g.max), scale(std::vector<float>(channels, kSentinel));
    DeviceBuffer<std::int32_t> zp(std::vector<std::int32_t>(channels, -99999));
    cuda::affine_params_from_range(lo.data(), hi.data(), channels, g.quant, g.symmetric,
                                   scale.data(), zp.data(), stream);
    LOWBIT_CUDA_TRY(cudaStreamSynchronize(stream));
    EXPECT_TRUE(same_bits(g.scale, scale.download()));
    EXPECT_TRUE(same_bits(g.zero_point, zp.download()));
  }
  LOWBIT_CUDA_TRY(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace lowbit
