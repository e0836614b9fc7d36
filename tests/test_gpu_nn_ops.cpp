// The training building blocks of lowbit::cuda against the CPU reference, on
// seeded random sizes and on a stream (max pooling on LeNet's shapes, ties and
// non-finite values too): bit for bit, except softmax's loss and gradient (the
// device's expf/logf differ from the host's in the last ulps), whose counts
// are still exact. Also: a captured graph replays the cursor. Skips without a
// CUDA device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "golden.hpp"
#include "lowbit/cuda.hpp"
#include "lowbit/nn_element.hpp"
#include "lowbit/ref.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

using test::DeviceBuffer;
using test::Stream;
using test::random_values;
using test::same_bits;
using Floats = std::vector<float>;

/// The layouts the trainer uses: conv outputs {batch, K, H·W} and linear
/// outputs {batch, out, 1}, of seeded random sizes (kept moderate: the GPU
/// suite also runs under compute-sanitizer).
std::vector<ChannelLayout> random_layouts(std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<ChannelLayout> layouts;
  for (int i = 0; i < 4; ++i) {
    const std::int64_t batch = 1 + rng() % 130;
    const std::int64_t side = 1 + rng() % 28;
    layouts.push_back({batch, 1 + static_cast<std::int64_t>(rng() % 16), side * side});
    layouts.push_back({batch, 1 + static_cast<std::int64_t>(rng() % 130), 1});
  }
  layouts.push_back({256, 6, 28 * 28});  // LeNet conv1
  layouts.push_back({3, 5, 5000});       // rows of several reduction pieces
  return layouts;
}

/// The edges of reduction_order.hpp's items: inner 1 (Linear) with more rows
/// than one item holds (2048) and with many channels, small inner (3, 100)
/// with outer not a multiple of the rows per item, and rows just below, at
/// and above half a piece and a whole one.
const std::vector<ChannelLayout> kReductionOrderLayouts = {
    {2049, 3, 1},  {130, 300, 1}, {1500, 4, 3},  {45, 7, 100},  {5, 2, 1023},
    {5, 2, 1024},  {3, 2, 1025},  {3, 2, 2047},  {3, 2, 2048},  {3, 2, 2049}};

// ---------------------------------------------------------------------------

TEST(GpuNnOpsBiasActivation, MatchesReferenceExactly) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  std::uint32_t seed = 100;
  for (const ChannelLayout& layout : random_layouts(1)) {
    const std::int64_t n = layout.size();
    const auto x = random_values(n, seed++);
    const auto bias = random_values(layout.channels, seed++);
    DeviceBuffer<float> dx(x), dbias(bias), dy(n);
    for (bool relu : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "layout {" << layout.outer << ", " << layout.channels
                                        << ", " << layout.inner << "} relu " << relu);
      std::vector<float> y(n);
      ref::bias_activation(x.data(), bias.data(), layout, relu, y.data());
      cuda::bias_activation(dx.data(), dbias.data(), layout, relu, dy.data(), stream.get());
      stream.sync();
      ASSERT_TRUE(same_bits(y, dy.download()));

      // Without a bias, over the whole tensor (the ReLU-only case).
      ref::bias_activation(x.data(), nullptr, ChannelLayout::per_tensor(n), relu, y.data());
      cuda::bias_activation(dx.data(), nullptr, ChannelLayout::per_tensor(n), relu, dy.data(),
                            stream.get());
      stream.sync();
      ASSERT_TRUE(same_bits(y, dy.download()));
    }
  }
}

// In place, and NaN stays NaN (the device's NaN may carry other bits).
TEST(GpuNnOpsBiasActivation, InPlaceAndNaN) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  const ChannelLayout layout{4, 3, 50};
  auto x = random_values(layout.size(), 7);
  x[17] = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> bias = {0.5f, -0.25f, 1.0f};
  std::vector<float> y(x.size());
  ref::bias_activation(x.data(), bias.data(), layout, true, y.data());
  DeviceBuffer<float> dx(x), dbias(bias);
  cuda::bias_activation(dx.data(), dbias.data(), layout, true, dx.data(), stream.get());
  stream.sync();
  auto got = dx.download();
  EXPECT_TRUE(std::isnan(got[17]));
  got[17] = y[17];
  EXPECT_TRUE(same_bits(y, got));
}

TEST(GpuNnOpsBiasActivationBackward, DxAndBiasGradientsMatchReferenceExactly) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  std::uint32_t seed = 200;
  std::vector<ChannelLayout> layouts = random_layouts(2);
  layouts.insert(layouts.end(), kReductionOrderLayouts.begin(), kReductionOrderLayouts.end());
  for (const ChannelLayout& layout : layouts) {
    const std::int64_t n = layout.size();
    const auto y = random_values(n, seed++);
    const auto g = random_values(n, seed++, 1.0f);
    std::mt19937 rng(seed++);
    std::vector<std::uint32_t> mask(mask_words(n));
    for (std::uint32_t& word : mask) word = static_cast<std::uint32_t>(rng());
    std::vector<float> storage;
    const Workspace host_ws = test::host_workspace(storage, layout);
    DeviceBuffer<float> dy_buf(g), y_buf(y), dx_buf(n), dbias(layout.channels);
    DeviceBuffer<std::uint32_t> mask_buf(mask);
    DeviceBuffer<float> workspace(reduction_workspace_bytes(layout) / sizeof(float) + 1);
    for (bool relu : {false, true}) {
      for (bool with_mask : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << "layout {" << layout.outer << ", " << layout.channels << ", "
                     << layout.inner << "} relu " << relu << " pass mask " << with_mask);
        const std::uint32_t* host_mask = with_mask ? mask.data() : nullptr;
        const std::uint32_t* device_mask = with_mask ? mask_buf.data() : nullptr;
        std::vector<float> dx(n), d_bias(layout.channels);
        ref::bias_activation_backward(g.data(), y.data(), layout, relu, host_mask, dx.data(),
                                      d_bias.data(), host_ws);
        cuda::bias_activation_backward(dy_buf.data(), y_buf.data(), layout, relu, device_mask,
                                       dx_buf.data(), dbias.data(), workspace.as_workspace(),
                                       stream.get());
        stream.sync();
        ASSERT_TRUE(same_bits(dx, dx_buf.download()));
        ASSERT_TRUE(same_bits(d_bias, dbias.download()));

        // No bias gradient: no workspace, and dx may be dy.
        DeviceBuffer<float> in_place(g);
        cuda::bias_activation_backward(in_place.data(), y_buf.data(), layout, relu, device_mask,
                                       in_place.data(), nullptr, Workspace{}, stream.get());
        stream.sync();
        ASSERT_TRUE(same_bits(dx, in_place.download()));
      }
    }
  }
}

TEST(GpuNnOpsAdd, MatchesReferenceExactlyAndAliases) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  std::mt19937 rng(3);
  for (int t = 0; t < 8; ++t) {
    const std::int64_t n = 1 + rng() % 300000;
    const auto a = random_values(n, 300 + t);
    const auto b = random_values(n, 400 + t);
    std::vector<float> y(n);
    ref::add(a.data(), b.data(), n, y.data());
    DeviceBuffer<float> da(a), db(b), dy(n);
    cuda::add(da.data(), db.data(), n, dy.data(), stream.get());
    cuda::add(da.data(), db.data(), n, da.data(), stream.get());
    stream.sync();
    ASSERT_TRUE(same_bits(y, dy.download())) << "n " << n;
    ASSERT_TRUE(same_bits(y, da.download())) << "n " << n;
  }
}

// ---------------------------------------------------------------------------
// Max pooling: the first-maximum rule on both sides, and the backward's gather
// adds in the reference scatter's order, so even overlapping windows match
// bit for bit.

// {batch, channels, height, width, kernel, stride}
const Pool2dShape kPoolShapes[] = {
    {128, 6, 28, 28, 2, 2},   // LeNet pool1
    {128, 16, 10, 10, 2, 2},  // LeNet pool2
    {2, 3, 7, 9, 2, 2},       // 2x2/2, odd sizes: the last row and column are read by none
    {3, 5, 13, 11, 3, 2},     // 3x3/2: overlapping, odd sizes
    {2, 3, 9, 10, 3, 1},      // 3x3/1: up to 9 windows per element
    {2, 3, 7, 6, 2, 1},       // 2x2/1
    {2, 2, 14, 13, 4, 3},     // 4x4/3: windows overlap by one
    {2, 3, 9, 9, 3, 3},       // 3x3/3: tiles without a fast path
    {2, 2, 11, 12, 2, 3},     // stride > kernel: the gaps get no gradient
    {1, 2, 5, 5, 5, 1},       // one window
};

float float_of(std::uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

std::string name_of(const Pool2dShape& s) {
  return "pool [" + std::to_string(s.batch) + ", " + std::to_string(s.channels) + ", " +
         std::to_string(s.height) + ", " + std::to_string(s.width) + "] " +
         std::to_string(s.kernel) + "x" + std::to_string(s.kernel) + "/" +
         std::to_string(s.stride);
}

std::int64_t pool_inputs(const Pool2dShape& s) {
  return s.batch * s.channels * s.height * s.width;
}

std::int64_t pool_outputs(const Pool2dShape& s) {
  return s.batch * s.channels * s.out_height() * s.out_width();
}

/// ReLU'd 4-bit activations: levels 0..15 of a step of 0.25, most windows
/// tied (many exact zeros, a third of them -0, so -0 and +0 share windows).
std::vector<float> relu_grid_values(std::int64_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) {
    x = std::clamp(std::round(normal(rng)), 0.0f, 15.0f) * 0.25f;
    if (x == 0.0f && rng() % 3 == 0) x = -0.0f;
  }
  return v;
}

/// v with a sprinkle of NaN (two payloads and a negative one, so a copied
/// element shows), +Inf and -Inf.
std::vector<float> with_non_finite(std::vector<float> v, std::uint32_t seed) {
  const float nans[] = {std::numeric_limits<float>::quiet_NaN(), float_of(0x7fc00123u),
                        float_of(0xffc00000u)};
  const float inf = std::numeric_limits<float>::infinity();
  std::mt19937 rng(seed);
  for (float& x : v) {
    const std::uint32_t r = rng() % 24;
    x = r < 3 ? nans[r] : r == 3 ? inf : r == 4 ? -inf : x;
  }
  return v;
}

struct Pooled {
  std::vector<float> y, dx;
};

Pooled pool_on_host(const Pool2dShape& s, const std::vector<float>& x,
                    const std::vector<float>& dy) {
  Pooled out{std::vector<float>(dy.size()), std::vector<float>(x.size())};
  ref::max_pool_forward(s, x.data(), out.y.data());
  ref::max_pool_backward(s, x.data(), dy.data(), out.dx.data());
  return out;
}

Pooled pool_on_device(const Pool2dShape& s, const std::vector<float>& x,
                      const std::vector<float>& dy, const Stream& stream) {
  // Outputs start as a sentinel, so an element the kernels never write shows.
  DeviceBuffer<float> d_x(x), d_dy(dy), d_y(std::vector<float>(dy.size(), -12345.0f));
  DeviceBuffer<float> d_dx(std::vector<float>(x.size(), -12345.0f));
  cuda::max_pool_forward(s, d_x.data(), d_y.data(), stream.get());
  cuda::max_pool_backward(s, d_x.data(), d_dy.data(), d_dx.data(), stream.get());
  stream.sync();
  return {d_y.download(), d_dx.download()};
}

TEST(GpuNnOpsMaxPool, MatchesReferenceExactlyWithTiesAndSignedZeros) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  std::uint32_t seed = 500;
  for (const Pool2dShape& s : kPoolShapes) {
    const auto dy = random_values(pool_outputs(s), seed++);
    const std::pair<const char*, std::vector<float>> inputs[] = {
        {"random", random_values(pool_inputs(s), seed++)},
        {"relu 4-bit grid", relu_grid_values(pool_inputs(s), seed++)},
    };
    for (const auto& [kind, x] : inputs) {
      SCOPED_TRACE(name_of(s) + ", " + kind);
      const Pooled expected = pool_on_host(s, x, dy);
      const Pooled got = pool_on_device(s, x, dy, stream);
      ASSERT_TRUE(same_bits(expected.y, got.y)) << "forward";
      ASSERT_TRUE(same_bits(expected.dx, got.dx)) << "backward";
    }
  }
}

// NaN and ±Inf in x (the forward copies the first NaN's bits), and in dy,
// where sums over overlapping windows meet Inf - Inf.
TEST(GpuNnOpsMaxPool, NonFiniteInputsAndGradients) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  std::uint32_t seed = 600;
  for (const Pool2dShape& s : kPoolShapes) {
    if (pool_inputs(s) > 100000) continue;  // the overlapping and generic shapes
    SCOPED_TRACE(name_of(s));
    const auto x = with_non_finite(relu_grid_values(pool_inputs(s), seed), seed + 1);
    const auto dy = with_non_finite(random_values(pool_outputs(s), seed + 2), seed + 3);
    seed += 4;
    const Pooled expected = pool_on_host(s, x, dy);
    const Pooled got = pool_on_device(s, x, dy, stream);
    ASSERT_TRUE(same_bits(expected.y, got.y)) << "forward";
    ASSERT_TRUE(test::matches("backward dx", {}, expected.dx, got.dx));
  }
}

// Hand-checked on the device: 2x2/2 windows {+0 -0 / -0 +0}, {-0 +0 / 0 0},
// {1 NaN / 7 NaN'}, {-Inf -Inf / -Inf -Inf}; and 2x2/1 over a row whose
// middle element is both windows' first maximum.
TEST(GpuNnOpsMaxPool, FirstMaximumFirstNaNAndSignedZeros) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  const float nan_a = float_of(0x7fc00001u), nan_b = float_of(0x7fc00002u);
  const float inf = std::numeric_limits<float>::infinity();
  const Pool2dShape tiles{1, 1, 2, 8, 2, 2};
  const std::vector<float> x = {0.0f, -0.0f, -0.0f, 0.0f, 1.0f,  nan_a, -inf, -inf,
                                -0.0f, 0.0f, 0.0f, 0.0f, 7.0f, nan_b, -inf, -inf};
  const Pooled got = pool_on_device(tiles, x, {1.0f, 2.0f, 3.0f, 4.0f}, stream);
  EXPECT_TRUE(same_bits(Floats{0.0f, -0.0f, nan_a, -inf}, got.y));
  EXPECT_TRUE(same_bits(Floats{1, 0, 2, 0, 0, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0}, got.dx));

  const Pool2dShape overlapping{1, 1, 2, 3, 2, 1};
  const Pooled shared = pool_on_device(overlapping, {1, 5, 2, 5, 5, 5}, {0.5f, 0.25f}, stream);
  EXPECT_TRUE(same_bits(Floats{5, 5}, shared.y));
  EXPECT_TRUE(same_bits(Floats{0, 0.75f, 0, 0, 0, 0}, shared.dx));
}

// ---------------------------------------------------------------------------

TEST(GpuNnOpsSoftmax, MatchesReferenceToRoundingAndCountsExactly) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  std::mt19937 rng(5);
  for (int classes : {1, 2, 10, 33, 100, 1024}) {
    for (int t = 0; t < 3; ++t) {
      const std::int64_t batch = 1 + rng() % (classes > 100 ? 300 : 3000);
      SCOPED_TRACE(::testing::Message() << "batch " << batch << " classes " << classes);
      const auto logits = random_values(batch * classes, rng(), 4.0f);
      std::vector<std::int32_t> labels(batch);
      for (auto& l : labels)
        l = rng() % 7 == 0 ? -1 : static_cast<std::int32_t>(rng() % classes);
      // Ties, so that "first maximum" is exercised: copy the label's logit.
      std::vector<float> tied = logits;
      for (std::int64_t r = 0; r < batch; r += 5) tied[r * classes] = tied[r * classes + classes - 1];

      std::vector<float> d(batch * classes);
      LossTotals totals{0.25, 1, 2};
      ref::softmax_cross_entropy(tied.data(), labels.data(), batch, classes, d.data(), &totals);
      ref::softmax_cross_entropy(tied.data(), labels.data(), batch, classes, nullptr, &totals);

      DeviceBuffer<float> dlogits(tied), dd(batch * classes);
      DeviceBuffer<std::int32_t> dlabels(labels);
      DeviceBuffer<LossTotals> dtotals(std::vector<LossTotals>{LossTotals{0.25, 1, 2}});
      cuda::softmax_cross_entropy(dlogits.data(), dlabels.data(), batch, classes, dd.data(),
                                  dtotals.data(), stream.get());
      cuda::softmax_cross_entropy(dlogits.data(), dlabels.data(), batch, classes, nullptr,
                                  dtotals.data(), stream.get());
      stream.sync();
      const LossTotals got = dtotals.download()[0];
      EXPECT_EQ(got.correct, totals.correct);
      EXPECT_EQ(got.examples, totals.examples);
      EXPECT_NEAR(got.loss_sum, totals.loss_sum, 1e-4 + 1e-5 * std::fabs(totals.loss_sum));
      const float labelled = static_cast<float>((totals.examples - 2) / 2);
      const auto gd = dd.download();
      for (std::int64_t i = 0; i < batch * classes; ++i) {
        if (labels[i / classes] < 0) {
          ASSERT_EQ(gd[i], 0.0f) << i;
          continue;
        }
        ASSERT_NEAR(gd[i], d[i], 1e-5f / labelled) << i;
      }
    }
  }
}

// Labels outside [-1, classes) are padding on the device: the same result as
// the reference with those labels set to -1.
TEST(GpuNnOpsSoftmax, OutOfRangeLabelsArePadding) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  const int classes = 10;
  const std::int64_t batch = 64;
  const auto logits = random_values(batch * classes, 9);
  std::vector<std::int32_t> labels(batch), cleaned(batch);
  for (std::int64_t r = 0; r < batch; ++r) {
    labels[r] = r % 4 == 1 ? 10 + static_cast<std::int32_t>(r) : r % 4 == 2 ? -7
                                                                            : r % classes;
    cleaned[r] = labels[r] >= 0 && labels[r] < classes ? labels[r] : -1;
  }
  std::vector<float> d(batch * classes);
  LossTotals totals;
  ref::softmax_cross_entropy(logits.data(), cleaned.data(), batch, classes, d.data(), &totals);
  DeviceBuffer<float> dlogits(logits), dd(batch * classes);
  DeviceBuffer<std::int32_t> dlabels(labels);
  DeviceBuffer<LossTotals> dtotals(std::vector<LossTotals>(1));
  cuda::softmax_cross_entropy(dlogits.data(), dlabels.data(), batch, classes, dd.data(),
                              dtotals.data(), stream.get());
  stream.sync();
  const LossTotals got = dtotals.download()[0];
  EXPECT_EQ(got.examples, 32);
  EXPECT_EQ(got.examples, totals.examples);
  EXPECT_EQ(got.correct, totals.correct);
  EXPECT_NEAR(got.loss_sum, totals.loss_sum, 1e-4);
  const auto gd = dd.download();
  for (std::int64_t i = 0; i < batch * classes; ++i) ASSERT_NEAR(gd[i], d[i], 1e-6f) << i;
}

// ---------------------------------------------------------------------------

TEST(GpuNnOpsSgd, MatchesReferenceExactlyOverSteps) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  std::mt19937 rng(11);
  for (int t = 0; t < 5; ++t) {
    const std::int64_t n = 1 + rng() % 200000;
    const std::int64_t decay_count = rng() % (n + 1);
    SgdConfig config;
    config.weight_decay = t % 2 == 0 ? 5e-4f : 0.0f;
    config.momentum = t == 3 ? 0.0f : 0.9f;
    auto params = random_values(n, 600 + t, 0.1f);
    std::vector<float> velocity(n, 0.0f);
    DeviceBuffer<float> dparams(params), dvelocity(velocity), dgrads(n);
    for (int step = 0; step < 3; ++step) {
      const auto grads = random_values(n, 700 + 10 * t + step, 0.01f);
      ref::sgd_step(params.data(), grads.data(), velocity.data(), n, decay_count, config);
      dgrads.upload(grads);
      cuda::sgd_step(dparams.data(), dgrads.data(), dvelocity.data(), n, decay_count, config,
                     stream.get());
    }
    stream.sync();
    ASSERT_TRUE(same_bits(params, dparams.download())) << "n " << n;
    ASSERT_TRUE(same_bits(velocity, dvelocity.download())) << "n " << n;
  }
}

// ---------------------------------------------------------------------------

TEST(GpuNnOpsShuffle, SamePermutationAsReference) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  int offset = 0;
  for (std::int64_t n : {1, 2, 3, 255, 1000, 4097, 60000, (1 << 18) + 7}) {
    for (std::int64_t epoch : {0, 17}) {
      const std::uint64_t seed = 0x5eed0000u + static_cast<std::uint64_t>(n);
      std::vector<std::int32_t> perm(n);
      ref::shuffle_indices(seed, epoch, n, perm.data(), Workspace{});
      // A misaligned workspace must work too.
      const std::size_t bytes = cuda::shuffle_workspace_bytes(n);
      DeviceBuffer<unsigned char> workspace(bytes + 8);
      offset = (offset + 3) % 8;
      DeviceBuffer<std::int32_t> dperm(std::vector<std::int32_t>(n, -1));
      cuda::shuffle_indices(seed, epoch, n, dperm.data(),
                            Workspace{workspace.data() + offset, bytes}, stream.get());
      stream.sync();
      ASSERT_TRUE(same_bits(perm, dperm.download())) << "n " << n << " epoch " << epoch;
    }
  }
}

TEST(GpuNnOpsShuffle, WorkspaceTooSmallIsRejected) {
  LOWBIT_REQUIRE_GPU();
  const std::size_t bytes = cuda::shuffle_workspace_bytes(1000);
  DeviceBuffer<unsigned char> workspace(bytes);
  DeviceBuffer<std::int32_t> perm(1000);
  EXPECT_THROW(cuda::shuffle_indices(1, 0, 1000, perm.data(), Workspace{workspace.data(), bytes - 1},
                                     nullptr),
               Error);
}

// ---------------------------------------------------------------------------

struct Dataset {
  std::int64_t n;
  std::int64_t pixels;
  std::vector<std::uint8_t> images, labels;
  Dataset(std::int64_t count, std::int64_t example_size, std::uint32_t seed)
      : n(count), pixels(example_size), images(count * example_size), labels(count) {
    std::mt19937 rng(seed);
    for (auto& p : images) p = static_cast<std::uint8_t>(rng());
    for (auto& l : labels) l = static_cast<std::uint8_t>(rng() % 10);
  }
};

// Every batch of an epoch, and one past it, with the device permutation and
// without one; the cursor advances on the device.
TEST(GpuNnOpsGather, MatchesReferenceExactlyOverAnEpoch) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  const Dataset data(1000, 784, 21);
  const Normalization norm;
  DeviceBuffer<std::uint8_t> dimages(data.images), dlabels(data.labels);
  std::vector<std::int32_t> perm(data.n);
  ref::shuffle_indices(3, 1, data.n, perm.data(), Workspace{});
  DeviceBuffer<std::int32_t> dperm(perm);
  for (const std::int64_t batch : {128, 77, 1000, 1500}) {
    for (const bool shuffled : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "batch " << batch << " shuffled " << shuffled);
      std::int64_t cursor = 0;
      DeviceBuffer<std::int64_t> dcursor(std::vector<std::int64_t>{0});
      DeviceBuffer<float> dx(batch * data.pixels);
      DeviceBuffer<std::int32_t> dout(batch);
      const std::int64_t batches = (data.n + batch - 1) / batch + 1;
      for (std::int64_t b = 0; b < batches; ++b) {
        std::vector<float> x(batch * data.pixels);
        std::vector<std::int32_t> labels(batch);
        ref::gather_batch(data.images.data(), data.labels.data(), data.n, data.pixels,
                          shuffled ? perm.data() : nullptr, &cursor, batch, norm, x.data(),
                          labels.data());
        ref::advance_cursor(&cursor);
        cuda::gather_batch(dimages.data(), dlabels.data(), data.n, data.pixels,
                           shuffled ? dperm.data() : nullptr, dcursor.data(), batch, norm,
                           dx.data(), dout.data(), stream.get());
        cuda::advance_cursor(dcursor.data(), stream.get());
        stream.sync();
        ASSERT_TRUE(same_bits(x, dx.download())) << "batch index " << b;
        ASSERT_TRUE(same_bits(labels, dout.download())) << "batch index " << b;
      }
      EXPECT_EQ(dcursor.download()[0], cursor);
    }
  }
}

// Device-side sanitising: a negative cursor and out-of-range permutation
// entries give padding rows.
TEST(GpuNnOpsGather, BadPositionsBecomePadding) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  const Dataset data(10, 4, 22);
  const std::vector<std::int32_t> perm = {3, -1, 10, 2, 0, 1, 4, 5, 6, 7};
  DeviceBuffer<std::uint8_t> dimages(data.images), dlabels(data.labels);
  DeviceBuffer<std::int32_t> dperm(perm), dout(4);
  DeviceBuffer<float> dx(16);
  DeviceBuffer<std::int64_t> dcursor(std::vector<std::int64_t>{0});
  cuda::gather_batch(dimages.data(), dlabels.data(), data.n, data.pixels, dperm.data(),
                     dcursor.data(), 4, Normalization{}, dx.data(), dout.data(), stream.get());
  stream.sync();
  const auto labels = dout.download();
  const auto x = dx.download();
  EXPECT_EQ(labels, (std::vector<std::int32_t>{data.labels[3], -1, -1, data.labels[2]}));
  for (int j = 4; j < 12; ++j) EXPECT_EQ(x[j], 0.0f) << j;
  EXPECT_EQ(x[0], normalize_pixel(data.images[12], Normalization{}));

  dcursor.upload({-1});
  cuda::gather_batch(dimages.data(), dlabels.data(), data.n, data.pixels, dperm.data(),
                     dcursor.data(), 4, Normalization{}, dx.data(), dout.data(), stream.get());
  stream.sync();
  EXPECT_EQ(dout.download(), std::vector<std::int32_t>(4, -1));
  EXPECT_EQ(dx.download(), std::vector<float>(16, 0.0f));
}

// The cursor lives on the device, so a captured gather + advance replays to
// successive batches, and the loss totals keep accumulating.
TEST(GpuNnOpsGraph, CapturedGatherAdvancesOnEveryReplay) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  const Dataset data(300, 10, 23);
  const std::int64_t batch = 64;
  const Normalization norm;
  std::vector<std::int32_t> perm(data.n);
  ref::shuffle_indices(9, 0, data.n, perm.data(), Workspace{});
  DeviceBuffer<std::uint8_t> dimages(data.images), dlabels(data.labels);
  DeviceBuffer<std::int32_t> dperm(perm), dout(batch);
  DeviceBuffer<float> dx(batch * data.pixels);
  DeviceBuffer<std::int64_t> dcursor(std::vector<std::int64_t>{0});
  DeviceBuffer<LossTotals> dtotals(std::vector<LossTotals>(1));

  cudaGraph_t graph;
  LOWBIT_CUDA_TRY(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
  cuda::gather_batch(dimages.data(), dlabels.data(), data.n, data.pixels, dperm.data(),
                     dcursor.data(), batch, norm, dx.data(), dout.data(), stream.get());
  // The gathered input doubles as logits of `pixels` classes.
  cuda::softmax_cross_entropy(dx.data(), dout.data(), batch, static_cast<int>(data.pixels),
                              nullptr, dtotals.data(), stream.get());
  cuda::advance_cursor(dcursor.data(), stream.get());
  LOWBIT_CUDA_TRY(cudaStreamEndCapture(stream.get(), &graph));
  cudaGraphExec_t exec;
  LOWBIT_CUDA_TRY(cudaGraphInstantiate(&exec, graph, 0));

  std::int64_t cursor = 0;
  LossTotals totals;
  for (int replay = 0; replay < 6; ++replay) {
    LOWBIT_CUDA_TRY(cudaGraphLaunch(exec, stream.get()));
    std::vector<float> x(batch * data.pixels);
    std::vector<std::int32_t> labels(batch);
    ref::gather_batch(data.images.data(), data.labels.data(), data.n, data.pixels, perm.data(),
                      &cursor, batch, norm, x.data(), labels.data());
    ref::softmax_cross_entropy(x.data(), labels.data(), batch, static_cast<int>(data.pixels),
                               nullptr, &totals);
    ref::advance_cursor(&cursor);
    stream.sync();
    ASSERT_TRUE(same_bits(x, dx.download())) << "replay " << replay;
    ASSERT_TRUE(same_bits(labels, dout.download())) << "replay " << replay;
  }
  const LossTotals got = dtotals.download()[0];
  EXPECT_EQ(got.examples, data.n);
  EXPECT_EQ(got.examples, totals.examples);
  EXPECT_EQ(got.correct, totals.correct);
  EXPECT_NEAR(got.loss_sum, totals.loss_sum, 1e-3);
  EXPECT_EQ(dcursor.download()[0], 6);
  LOWBIT_CUDA_TRY(cudaGraphExecDestroy(exec));
  LOWBIT_CUDA_TRY(cudaGraphDestroy(graph));
}

// ---------------------------------------------------------------------------

TEST(GpuNnOpsAffineParams, MatchesReferenceOnRandomRangesAndSanitises) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  const std::int64_t channels = 5000;
  const auto a = random_values(channels, 31, 3.0f);
  const auto b = random_values(channels, 32, 3.0f);
  std::vector<float> lo(channels), hi(channels);
  for (std::int64_t c = 0; c < channels; ++c) {
    lo[c] = std::min(a[c], b[c]);
    hi[c] = std::max(a[c], b[c]);
  }
  DeviceBuffer<float> dlo(lo), dhi(hi), dscale(channels);
  DeviceBuffer<std::int32_t> dzp(channels);
  for (int bits : {2, 4, 8, 16}) {
    for (bool is_signed : {false, true}) {
      for (bool symmetric : {false, true}) {
        const AffineQuant quant =
            is_signed ? AffineQuant::signed_bits(bits) : AffineQuant::unsigned_bits(bits);
        std::vector<float> scale(channels);
        std::vector<std::int32_t> zp(channels);
        ref::affine_params_from_range(lo.data(), hi.data(), channels, quant, symmetric,
                                      scale.data(), zp.data());
        cuda::affine_params_from_range(dlo.data(), dhi.data(), channels, quant, symmetric,
                                       dscale.data(), dzp.data(), stream.get());
        stream.sync();
        ASSERT_TRUE(same_bits(scale, dscale.download())) << bits << is_signed << symmetric;
        ASSERT_TRUE(same_bits(zp, dzp.download())) << bits << is_signed << symmetric;
      }
    }
  }
  const std::vector<float> bad_lo = {std::nanf(""), 1.0f, -INFINITY};
  const std::vector<float> bad_hi = {1.0f, -1.0f, 0.0f};
  DeviceBuffer<float> dbad_lo(bad_lo), dbad_hi(bad_hi), dbad_scale(3);
  DeviceBuffer<std::int32_t> dbad_zp(3);
  cuda::affine_params_from_range(dbad_lo.data(), dbad_hi.data(), 3, AffineQuant::unsigned_bits(8),
                                 false, dbad_scale.data(), dbad_zp.data(), stream.get());
  stream.sync();
  EXPECT_EQ(dbad_scale.download(), std::vector<float>(3, 1.0f));
  EXPECT_EQ(dbad_zp.download(), std::vector<std::int32_t>(3, 0));
}

}  // namespace
}  // namespace lowbit
