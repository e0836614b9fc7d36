// The CUDA backend against the CPU reference backend: cuDNN convolutions and
// cuBLAS GEMMs within float rounding of the CPU, max pooling and the other
// lowbit kernels bit for bit; determinism, capture + replay, out of memory, and
// creating and destroying backends. Skips without a CUDA device.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "backends/cuda/conv_algorithm.hpp"
#include "lowbit/backend.hpp"
#include "lowbit/error.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

using test::random_values;
using test::same_bits;

// The GPU sums in another order (and with FMA) than the CPU: each output may
// differ by this much relative to the sum of |terms| that produced it. For
// the random-signed sums here (up to 3136 terms) reordering is expected to
// cost about 1e-7 of that scale; the worst-case bound K·2^-24 is never near.
constexpr float kSumTolerance = 1e-5f;

/// Host data copied into memory that `backend` allocated.
template <class T>
Buffer put(Backend& backend, const std::vector<T>& host) {
  Buffer buffer = backend.allocate(host.size() * sizeof(T));
  backend.upload(buffer.data(), host.data(), buffer.bytes());
  return buffer;
}

template <class T>
std::vector<T> get(Backend& backend, const Buffer& buffer) {
  std::vector<T> host(buffer.bytes() / sizeof(T));
  backend.download(host.data(), buffer.data(), buffer.bytes());
  return host;
}

std::vector<float> absolute(std::vector<float> v) {
  for (float& x : v) x = std::fabs(x);
  return v;
}

/// |got - expected| <= tolerance·scale element by element, where scale[i] is
/// the sum of |terms| behind expected[i]; lists the first mismatches.
::testing::AssertionResult within_rounding(const std::vector<float>& expected,
                                 const std::vector<float>& got, const std::vector<float>& scale,
                                 float tolerance) {
  if (expected.size() != got.size() || expected.size() != scale.size())
    return ::testing::AssertionFailure() << "sizes differ: " << expected.size() << " vs "
                                         << got.size() << " (scale " << scale.size() << ")";
  std::ostringstream out;
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const float error = std::fabs(got[i] - expected[i]);
    if (error <= tolerance * scale[i]) continue;
    if (++mismatches <= 5)
      out << "\n  [" << i << "] expected " << expected[i] << " got " << got[i] << " (error "
          << error << ", allowed " << tolerance * scale[i] << ")";
  }
  if (mismatches == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << mismatches << " of " << expected.size()
                                       << " elements differ:" << out.str();
}

// ---------------------------------------------------------------------------
// Convolution

std::string name_of(const Conv2dShape& s) {
  std::ostringstream out;
  out << "conv [" << s.batch << "," << s.in_channels << "," << s.height << "," << s.width
      << "] k" << s.out_channels << " r" << s.kernel << " stride " << s.stride << " pad "
      << s.padding;
  return out.str();
}

const std::vector<Conv2dShape> kConvShapes = {
    {4, 1, 28, 28, 6, 5, 1, 2},   // LeNet conv1
    {4, 6, 14, 14, 16, 5, 1, 0},  // LeNet conv2
    {3, 5, 13, 11, 7, 3, 2, 1},   // odd sizes, stride 2, padding 1
};

std::int64_t conv_input_size(const Conv2dShape& s) {
  return s.batch * s.in_channels * s.height * s.width;
}
std::int64_t conv_weight_size(const Conv2dShape& s) {
  return s.out_channels * s.in_channels * s.kernel * s.kernel;
}
std::int64_t conv_output_size(const Conv2dShape& s) {
  return s.batch * s.out_channels * s.out_height() * s.out_width();
}

struct ConvResult {
  std::vector<float> y, dx, dw;
};

ConvResult run_conv(Backend& backend, const Conv2dShape& s, const std::vector<float>& x,
                    const std::vector<float>& w, const std::vector<float>& dy) {
  const Buffer x_in = put(backend, x), w_in = put(backend, w), dy_in = put(backend, dy);
  const Buffer y = backend.allocate(conv_output_size(s) * sizeof(float));
  const Buffer dx = backend.allocate(x.size() * sizeof(float));
  const Buffer dw = backend.allocate(w.size() * sizeof(float));
  backend.conv2d_forward(s, x_in.as<float>(), w_in.as<float>(), y.as<float>());
  backend.conv2d_backward(s, x_in.as<float>(), w_in.as<float>(), dy_in.as<float>(),
                          dx.as<float>(), dw.as<float>());
  return {get<float>(backend, y), get<float>(backend, dx), get<float>(backend, dw)};
}

TEST(GpuBackendConv, MatchesCpuWithinFloatRounding) {
  LOWBIT_REQUIRE_GPU();
  const auto cpu = make_cpu_backend();
  const auto gpu = make_cuda_backend();
  std::uint32_t seed = 10;
  for (const Conv2dShape& s : kConvShapes) {
    SCOPED_TRACE(name_of(s));
    const auto x = random_values(conv_input_size(s), seed++);
    const auto w = random_values(conv_weight_size(s), seed++, 0.2f);
    const auto dy = random_values(conv_output_size(s), seed++);
    const ConvResult expected = run_conv(*cpu, s, x, w, dy);
    // The same sums over |terms|: y from |x|·|w|, dx from |dy|·|w|, dw from |dy|·|x|.
    const ConvResult scale = run_conv(*cpu, s, absolute(x), absolute(w), absolute(dy));
    const ConvResult got = run_conv(*gpu, s, x, w, dy);
    EXPECT_TRUE(within_rounding(expected.y, got.y, scale.y, kSumTolerance)) << "forward";
    EXPECT_TRUE(within_rounding(expected.dx, got.dx, scale.dx, kSumTolerance)) << "backward data";
    EXPECT_TRUE(within_rounding(expected.dw, got.dw, scale.dw, kSumTolerance)) << "backward filter";
  }
}

TEST(GpuBackendConv, BackwardWithoutDxGivesTheSameDw) {
  LOWBIT_REQUIRE_GPU();
  const auto gpu = make_cuda_backend();
  const Conv2dShape& s = kConvShapes[2];
  const auto x = random_values(conv_input_size(s), 1);
  const auto w = random_values(conv_weight_size(s), 2, 0.2f);
  const auto dy = random_values(conv_output_size(s), 3);
  const ConvResult with_dx = run_conv(*gpu, s, x, w, dy);

  const Buffer x_in = put(*gpu, x), w_in = put(*gpu, w), dy_in = put(*gpu, dy);
  const Buffer dw = gpu->allocate(w.size() * sizeof(float));
  gpu->conv2d_backward(s, x_in.as<float>(), w_in.as<float>(), dy_in.as<float>(), nullptr,
                       dw.as<float>());
  EXPECT_TRUE(same_bits(with_dx.dw, get<float>(*gpu, dw)));
}

// ---------------------------------------------------------------------------
// Fully connected

const std::vector<LinearShape> kLinearShapes = {
    {4, 400, 120},  // LeNet fc1
    {4, 120, 84},   // LeNet fc2
    {4, 84, 10},    // LeNet fc3
    {3, 37, 5},     // odd sizes
};

struct LinearResult {
  std::vector<float> y, dx, dw;
};

LinearResult run_linear(Backend& backend, const LinearShape& s, const std::vector<float>& x,
                        const std::vector<float>& w, const std::vector<float>& dy) {
  const Buffer x_in = put(backend, x), w_in = put(backend, w), dy_in = put(backend, dy);
  const Buffer y = backend.allocate(s.batch * s.out_features * sizeof(float));
  const Buffer dx = backend.allocate(x.size() * sizeof(float));
  const Buffer dw = backend.allocate(w.size() * sizeof(float));
  backend.linear_forward(s, x_in.as<float>(), w_in.as<float>(), y.as<float>());
  backend.linear_backward(s, x_in.as<float>(), w_in.as<float>(), dy_in.as<float>(),
                          dx.as<float>(), dw.as<float>());
  return {get<float>(backend, y), get<float>(backend, dx), get<float>(backend, dw)};
}

TEST(GpuBackendLinear, MatchesCpuWithinFloatRounding) {
  LOWBIT_REQUIRE_GPU();
  const auto cpu = make_cpu_backend();
  const auto gpu = make_cuda_backend();
  std::uint32_t seed = 20;
  for (const LinearShape& s : kLinearShapes) {
    SCOPED_TRACE("linear [" + std::to_string(s.batch) + "," + std::to_string(s.in_features) +
                 "] -> " + std::to_string(s.out_features));
    const auto x = random_values(s.batch * s.in_features, seed++);
    const auto w = random_values(s.out_features * s.in_features, seed++, 0.1f);
    const auto dy = random_values(s.batch * s.out_features, seed++);
    const LinearResult expected = run_linear(*cpu, s, x, w, dy);
    const LinearResult scale = run_linear(*cpu, s, absolute(x), absolute(w), absolute(dy));
    const LinearResult got = run_linear(*gpu, s, x, w, dy);
    EXPECT_TRUE(within_rounding(expected.y, got.y, scale.y, kSumTolerance)) << "y = x·wᵀ";
    EXPECT_TRUE(within_rounding(expected.dx, got.dx, scale.dx, kSumTolerance)) << "dx = dy·w";
    EXPECT_TRUE(within_rounding(expected.dw, got.dw, scale.dw, kSumTolerance)) << "dw = dyᵀ·x";
  }
}

TEST(GpuBackendLinear, BackwardWithoutDxGivesTheSameDw) {
  LOWBIT_REQUIRE_GPU();
  const auto gpu = make_cuda_backend();
  const LinearShape s = kLinearShapes[3];
  const auto x = random_values(s.batch * s.in_features, 1);
  const auto w = random_values(s.out_features * s.in_features, 2);
  const auto dy = random_values(s.batch * s.out_features, 3);
  const LinearResult with_dx = run_linear(*gpu, s, x, w, dy);

  const Buffer x_in = put(*gpu, x), w_in = put(*gpu, w), dy_in = put(*gpu, dy);
  const Buffer dw = gpu->allocate(w.size() * sizeof(float));
  gpu->linear_backward(s, x_in.as<float>(), w_in.as<float>(), dy_in.as<float>(), nullptr,
                       dw.as<float>());
  EXPECT_TRUE(same_bits(with_dx.dw, get<float>(*gpu, dw)));
}

// ---------------------------------------------------------------------------
// Max pooling

const std::vector<Pool2dShape> kPoolShapes = {
    {4, 6, 28, 28, 2, 2},   // LeNet pool1
    {4, 16, 10, 10, 2, 2},  // LeNet pool2
    {3, 5, 13, 11, 3, 2},   // odd sizes, overlapping windows
};

struct PoolResult {
  std::vector<float> y, dx;
};

PoolResult run_pool(Backend& backend, const Pool2dShape& s, const std::vector<float>& x,
                    const std::vector<float>& dy) {
  const Buffer x_in = put(backend, x), dy_in = put(backend, dy);
  const Buffer y = backend.allocate(dy.size() * sizeof(float));
  const Buffer dx = backend.allocate(x.size() * sizeof(float));
  backend.max_pool_forward(s, x_in.as<float>(), y.as<float>());
  backend.max_pool_backward(s, x_in.as<float>(), y.as<float>(), dy_in.as<float>(),
                            dx.as<float>());
  return {get<float>(backend, y), get<float>(backend, dx)};
}

TEST(GpuBackendPool, MatchesCpu) {
  LOWBIT_REQUIRE_GPU();
  const auto cpu = make_cpu_backend();
  const auto gpu = make_cuda_backend();
  std::uint32_t seed = 30;
  for (const Pool2dShape& s : kPoolShapes) {
    SCOPED_TRACE("pool [" + std::to_string(s.batch) + "," + std::to_string(s.channels) + "," +
                 std::to_string(s.height) + "," + std::to_string(s.width) + "] kernel " +
                 std::to_string(s.kernel) + " stride " + std::to_string(s.stride));
    // random_values has ties (zeros, grid points): both take the first maximum.
    const auto x = random_values(s.batch * s.channels * s.height * s.width, seed++);
    const auto dy = random_values(s.batch * s.channels * s.out_height() * s.out_width(), seed++);
    const PoolResult expected = run_pool(*cpu, s, x, dy);
    const PoolResult got = run_pool(*gpu, s, x, dy);
    EXPECT_TRUE(same_bits(expected.y, got.y)) << "forward";
    // Overlapping windows add their gradients in the same order on both.
    EXPECT_TRUE(same_bits(expected.dx, got.dx)) << "backward";
  }
}

TEST(GpuBackendPool, TiesGoToTheFirstMaximum) {
  LOWBIT_REQUIRE_GPU();
  const auto gpu = make_cuda_backend();
  const Pool2dShape s{1, 1, 2, 4, 2, 2};
  // Windows {1 2 / 2 2} and {3 3 / 3 1}: the first maxima are at (0,1) and (0,2).
  const std::vector<float> x = {1, 2, 3, 3, 2, 2, 3, 1};
  const PoolResult got = run_pool(*gpu, s, x, {10.0f, 20.0f});
  EXPECT_TRUE(same_bits(std::vector<float>{2, 3}, got.y));
  EXPECT_TRUE(same_bits(std::vector<float>{0, 10, 20, 0, 0, 0, 0, 0}, got.dx));
}

// ---------------------------------------------------------------------------
// lowbit kernels: the same kernels as the CPU reference, so the same bits

TEST(GpuBackendKernels, FakeQuantWeightsMatchesCpuBitForBit) {
  LOWBIT_REQUIRE_GPU();
  const auto cpu = make_cpu_backend();
  const auto gpu = make_cuda_backend();
  struct Case {
    ChannelLayout layout;
    RangeQuant quant;
    bool symmetric;
  };
  const Case cases[] = {
      {ChannelLayout::per_channel({16, 6, 5, 5}, 0), {4, true}, true},  // conv2 weights
      {ChannelLayout::per_tensor(120 * 400), {8, false}, false},         // fc1 weights
      {ChannelLayout::per_channel({10, 84}, 0), {2, true}, true},        // fc3 weights
  };
  std::uint32_t seed = 40;
  for (const Case& c : cases) {
    SCOPED_TRACE("bits " + std::to_string(c.quant.bits) + ", channels " +
                 std::to_string(c.layout.channels));
    const auto w = random_values(c.layout.size(), seed++, 0.1f);
    const std::size_t words = mask_words(c.layout.size());
    const auto run = [&](Backend& backend) {
      const Buffer w_in = put(backend, w);
      const Buffer y = backend.allocate(w.size() * sizeof(float));
      const Buffer min = backend.allocate(c.layout.channels * sizeof(float));
      const Buffer max = backend.allocate(c.layout.channels * sizeof(float));
      const Buffer mask = backend.allocate(words * sizeof(std::uint32_t));
      const Buffer workspace = backend.allocate(reduction_workspace_bytes(c.layout));
      backend.fake_quant_weights(w_in.as<float>(), y.as<float>(), c.layout, c.quant, c.symmetric,
                                 min.as<float>(), max.as<float>(), mask.as<std::uint32_t>(),
                                 workspace.as_workspace());
      return std::make_tuple(get<float>(backend, y), get<float>(backend, min),
                             get<float>(backend, max), get<std::uint32_t>(backend, mask));
    };
    const auto [y_cpu, min_cpu, max_cpu, mask_cpu] = run(*cpu);
    const auto [y_gpu, min_gpu, max_gpu, mask_gpu] = run(*gpu);
    EXPECT_TRUE(same_bits(y_cpu, y_gpu)) << "y";
    EXPECT_TRUE(same_bits(min_cpu, min_gpu)) << "min";
    EXPECT_TRUE(same_bits(max_cpu, max_gpu)) << "max";
    EXPECT_TRUE(same_bits(mask_cpu, mask_gpu)) << "mask";
  }
}

TEST(GpuBackendKernels, EmaFakeQuantMatchesCpuBitForBitOverSteps) {
  LOWBIT_REQUIRE_GPU();
  const auto cpu = make_cpu_backend();
  const auto gpu = make_cuda_backend();
  constexpr std::int64_t n = 4 * 6 * 28 * 28;
  for (const EmaMode mode : {EmaMode::exact, EmaMode::lagged}) {
    SCOPED_TRACE(mode == EmaMode::exact ? "exact" : "lagged");
    EmaConfig config;
    config.quant = {4, false};
    config.decay = 0.9f;
    config.mode = mode;
    config.quant_delay = 1;
    struct Side {
      Backend& backend;
      Buffer x, y, mask, state;
    };
    Side sides[] = {{*cpu, cpu->allocate(n * sizeof(float)), cpu->allocate(n * sizeof(float)),
                     cpu->allocate(mask_words(n) * sizeof(std::uint32_t)),
                     cpu->allocate(sizeof(EmaRangeState))},
                    {*gpu, gpu->allocate(n * sizeof(float)), gpu->allocate(n * sizeof(float)),
                     gpu->allocate(mask_words(n) * sizeof(std::uint32_t)),
                     gpu->allocate(sizeof(EmaRangeState))}};
    for (Side& side : sides) side.backend.ema_state_init(side.state.as<EmaRangeState>());
    for (std::uint32_t step = 0; step < 4; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      const auto x = random_values(n, 50 + step, 1.0f + static_cast<float>(step));
      for (Side& side : sides) {
        side.backend.upload(side.x.data(), x.data(), side.x.bytes());
        side.backend.ema_fake_quant(side.x.as<float>(), side.y.as<float>(), n,
                                    side.state.as<EmaRangeState>(), config,
                                    side.mask.as<std::uint32_t>(), nullptr);
      }
      EXPECT_TRUE(same_bits(get<float>(*cpu, sides[0].y), get<float>(*gpu, sides[1].y)));
      EXPECT_TRUE(same_bits(get<std::uint32_t>(*cpu, sides[0].mask),
                            get<std::uint32_t>(*gpu, sides[1].mask)));
    }
    EmaRangeState expected, got;
    cpu->download(&expected, sides[0].state.data(), sizeof expected);
    gpu->download(&got, sides[1].state.data(), sizeof got);
    EXPECT_TRUE(same_bits(std::vector<float>{expected.min, expected.max, expected.decay_pow},
                          std::vector<float>{got.min, got.max, got.decay_pow}));
    EXPECT_EQ(expected.steps, got.steps);
    EXPECT_EQ(expected.updates, got.updates);
    EXPECT_EQ(expected.skipped, got.skipped);
    EXPECT_EQ(got.steps, 4);
  }
}

// ---------------------------------------------------------------------------
// Determinism

TEST(GpuBackendDeterminism, RepeatedCallsGiveIdenticalBits) {
  LOWBIT_REQUIRE_GPU();
  const auto first = make_cuda_backend();
  const auto second = make_cuda_backend();
  const Conv2dShape& conv = kConvShapes[1];
  const auto x = random_values(conv_input_size(conv), 60);
  const auto w = random_values(conv_weight_size(conv), 61, 0.2f);
  const auto dy = random_values(conv_output_size(conv), 62);
  const LinearShape& fc = kLinearShapes[0];
  const auto fx = random_values(fc.batch * fc.in_features, 63);
  const auto fw = random_values(fc.out_features * fc.in_features, 64, 0.1f);
  const auto fdy = random_values(fc.batch * fc.out_features, 65);
  const Pool2dShape& pool = kPoolShapes[2];
  const auto px = random_values(pool.batch * pool.channels * pool.height * pool.width, 66);
  const auto pdy =
      random_values(pool.batch * pool.channels * pool.out_height() * pool.out_width(), 67);

  const ConvResult conv_once = run_conv(*first, conv, x, w, dy);
  const LinearResult fc_once = run_linear(*first, fc, fx, fw, fdy);
  const PoolResult pool_once = run_pool(*first, pool, px, pdy);
  for (Backend* backend : {first.get(), second.get()}) {
    const ConvResult conv_again = run_conv(*backend, conv, x, w, dy);
    EXPECT_TRUE(same_bits(conv_once.y, conv_again.y));
    EXPECT_TRUE(same_bits(conv_once.dx, conv_again.dx));
    EXPECT_TRUE(same_bits(conv_once.dw, conv_again.dw));
    const LinearResult fc_again = run_linear(*backend, fc, fx, fw, fdy);
    EXPECT_TRUE(same_bits(fc_once.y, fc_again.y));
    EXPECT_TRUE(same_bits(fc_once.dx, fc_again.dx));
    EXPECT_TRUE(same_bits(fc_once.dw, fc_again.dw));
    const PoolResult pool_again = run_pool(*backend, pool, px, pdy);
    EXPECT_TRUE(same_bits(pool_once.y, pool_again.y));
    EXPECT_TRUE(same_bits(pool_once.dx, pool_again.dx));
  }
}

// ---------------------------------------------------------------------------
// Capture and replay

/// A small training-like step: conv, pool, fc and an EMA fake quant forward,
/// then the backward of fc, pool and conv. Its EMA state advances each run.
struct SmallStep {
  static constexpr Conv2dShape kConv{2, 1, 12, 12, 3, 5, 1, 2};
  static constexpr Pool2dShape kPool{2, 3, 12, 12, 2, 2};
  static constexpr LinearShape kFc{2, 3 * 6 * 6, 10};

  Backend& backend;
  Buffer x, w, conv_out, pool_out, fc_w, logits, quantized, mask, state;
  Buffer d_pool, d_conv, d_fc_w, d_w;

  explicit SmallStep(Backend& b)
      : backend(b),
        x(put(b, random_values(conv_input_size(kConv), 70))),
        w(put(b, random_values(conv_weight_size(kConv), 71, 0.3f))),
        conv_out(b.allocate(conv_output_size(kConv) * sizeof(float))),
        pool_out(b.allocate(kFc.batch * kFc.in_features * sizeof(float))),
        fc_w(put(b, random_values(kFc.out_features * kFc.in_features, 72, 0.1f))),
        logits(b.allocate(kFc.batch * kFc.out_features * sizeof(float))),
        quantized(b.allocate(kFc.batch * kFc.out_features * sizeof(float))),
        mask(b.allocate(mask_words(kFc.batch * kFc.out_features) * sizeof(std::uint32_t))),
        state(b.allocate(sizeof(EmaRangeState))),
        d_pool(b.allocate(kFc.batch * kFc.in_features * sizeof(float))),
        d_conv(b.allocate(conv_output_size(kConv) * sizeof(float))),
        d_fc_w(b.allocate(kFc.out_features * kFc.in_features * sizeof(float))),
        d_w(b.allocate(conv_weight_size(kConv) * sizeof(float))) {
    b.ema_state_init(state.as<EmaRangeState>());
  }

  void operator()() {
    EmaConfig ema;
    ema.quant = {4, false};
    ema.decay = 0.5f;
    backend.conv2d_forward(kConv, x.as<float>(), w.as<float>(), conv_out.as<float>());
    backend.max_pool_forward(kPool, conv_out.as<float>(), pool_out.as<float>());
    backend.linear_forward(kFc, pool_out.as<float>(), fc_w.as<float>(), logits.as<float>());
    backend.ema_fake_quant(logits.as<float>(), quantized.as<float>(), kFc.batch * kFc.out_features,
                           state.as<EmaRangeState>(), ema, mask.as<std::uint32_t>(), nullptr);
    // The quantized logits stand in for a loss gradient.
    backend.linear_backward(kFc, pool_out.as<float>(), fc_w.as<float>(), quantized.as<float>(),
                            d_pool.as<float>(), d_fc_w.as<float>());
    backend.max_pool_backward(kPool, conv_out.as<float>(), pool_out.as<float>(),
                              d_pool.as<float>(), d_conv.as<float>());
    backend.conv2d_backward(kConv, x.as<float>(), w.as<float>(), d_conv.as<float>(), nullptr,
                            d_w.as<float>());
  }

  std::int64_t steps() {
    EmaRangeState s;
    backend.download(&s, state.data(), sizeof s);
    return s.steps;
  }
  std::vector<std::vector<float>> outputs() {
    EmaRangeState s;
    backend.download(&s, state.data(), sizeof s);
    return {get<float>(backend, quantized), get<float>(backend, d_fc_w),
            get<float>(backend, d_w), {s.min, s.max, s.decay_pow}};
  }
};

TEST(GpuBackendCapture, ReplayEqualsEagerSteps) {
  LOWBIT_REQUIRE_GPU();
  const auto eager_backend = make_cuda_backend();
  SmallStep eager(*eager_backend);
  for (int i = 0; i < 3; ++i) eager();

  const auto graph_backend = make_cuda_backend();
  SmallStep step(*graph_backend);
  step();  // the eager step that creates descriptors and workspaces
  const std::unique_ptr<StepGraph> graph = graph_backend->capture([&] { step(); });
  EXPECT_EQ(step.steps(), 1) << "capture records the step without running it";
  graph->replay();
  graph->replay();
  EXPECT_EQ(step.steps(), 3);

  const auto expected = eager.outputs();
  const auto got = step.outputs();
  ASSERT_EQ(expected.size(), got.size());
  for (std::size_t i = 0; i < expected.size(); ++i)
    EXPECT_TRUE(same_bits(expected[i], got[i])) << "output " << i;
}

TEST(GpuBackendCapture, ShapeFirstSeenDuringCaptureIsAnError) {
  LOWBIT_REQUIRE_GPU();
  const auto gpu = make_cuda_backend();
  SmallStep step(*gpu);
  try {
    gpu->capture([&] { step(); });
    FAIL() << "capture of unseen shapes did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("eager step"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  // The stream left capture mode: eager work and a later capture succeed.
  step();
  EXPECT_EQ(step.steps(), 1);
  const auto graph = gpu->capture([&] { step(); });
  graph->replay();
  EXPECT_EQ(step.steps(), 2);
}

TEST(GpuBackendCapture, ThrowingStepEndsTheCaptureAndRethrows) {
  LOWBIT_REQUIRE_GPU();
  const auto gpu = make_cuda_backend();
  SmallStep step(*gpu);
  step();
  EXPECT_THROW(gpu->capture([&] {
    step();
    throw std::runtime_error("step failed");
  }),
               std::runtime_error);
  EXPECT_THROW(gpu->capture([&] { gpu->allocate(16); }), Error);
  EXPECT_THROW(gpu->capture([&] { gpu->synchronize(); }), Error);
  EXPECT_EQ(step.steps(), 1) << "the abandoned captures did not run";
  step();
  EXPECT_EQ(step.steps(), 2);
}

// ---------------------------------------------------------------------------
// Memory, errors and lifetime

TEST(GpuBackendMemory, AllocateGivesZeroedMemory) {
  LOWBIT_REQUIRE_GPU();
  const auto gpu = make_cuda_backend();
  constexpr std::size_t n = 1 << 20;
  {
    // Dirty memory that the next allocation of the same size will likely reuse.
    const Buffer dirty = put(*gpu, std::vector<std::uint32_t>(n, 0xFFFFFFFFu));
    gpu->synchronize();
  }
  const Buffer fresh = gpu->allocate(n * sizeof(std::uint32_t));
  EXPECT_TRUE(same_bits(std::vector<std::uint32_t>(n, 0u), get<std::uint32_t>(*gpu, fresh)));
  EXPECT_EQ(gpu->allocate(0).data(), nullptr);
}

TEST(GpuBackendMemory, CopyAndFillZero) {
  LOWBIT_REQUIRE_GPU();
  const auto gpu = make_cuda_backend();
  const auto values = random_values(1000, 80);
  const Buffer source = put(*gpu, values);
  const Buffer target = gpu->allocate(source.bytes());
  gpu->copy(target.data(), source.data(), source.bytes());
  EXPECT_TRUE(same_bits(values, get<float>(*gpu, target)));
  gpu->fill_zero(target.data(), target.bytes());
  EXPECT_TRUE(same_bits(std::vector<float>(values.size(), 0.0f), get<float>(*gpu, target)));
}

TEST(GpuBackendMemory, ForcedOutOfMemoryThrowsAndLeaksNothing) {
  LOWBIT_REQUIRE_GPU();
  const auto gpu = make_cuda_backend();
  gpu->synchronize();
  std::size_t free_before = 0, free_after = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_before, &total), cudaSuccess);
  constexpr std::size_t huge = std::size_t{1} << 50;
  try {
    gpu->allocate(huge);
    FAIL() << "allocating 2^50 bytes did not throw";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("out of GPU memory: cannot allocate " + std::to_string(huge) + " bytes"),
              std::string::npos)
        << what;
    EXPECT_NE(what.find("MiB)"), std::string::npos) << what;
  }
  ASSERT_EQ(cudaMemGetInfo(&free_after, &total), cudaSuccess);
  EXPECT_EQ(free_after, free_before);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "the failed cudaMalloc must not linger";
  const Buffer small = gpu->allocate(64);
  EXPECT_TRUE(same_bits(std::vector<float>(16, 0.0f), get<float>(*gpu, small)));
}

TEST(GpuBackendErrors, BadShapesAndNullPointersThrow) {
  LOWBIT_REQUIRE_GPU();
  const auto gpu = make_cuda_backend();
  const Buffer a = gpu->allocate(4096), b = gpu->allocate(4096), c = gpu->allocate(4096);
  const Conv2dShape too_big_kernel{1, 1, 4, 4, 1, 7, 1, 1};
  EXPECT_THROW(gpu->conv2d_forward(too_big_kernel, a.as<float>(), b.as<float>(), c.as<float>()),
               Error);
  const Conv2dShape zero_stride{1, 1, 4, 4, 1, 3, 0, 0};
  EXPECT_THROW(gpu->conv2d_forward(zero_stride, a.as<float>(), b.as<float>(), c.as<float>()),
               Error);
  EXPECT_THROW(gpu->linear_forward({2, 3, 4}, nullptr, b.as<float>(), c.as<float>()), Error);
  EXPECT_THROW(gpu->max_pool_forward({1, 1, 2, 2, 3, 1}, a.as<float>(), c.as<float>()), Error);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(GpuBackendLifetime, DescribesTheDevice) {
  LOWBIT_REQUIRE_GPU();
  EXPECT_EQ(cuda_device_problem(), "");
  const auto gpu = make_cuda_backend();
  EXPECT_EQ(gpu->kind(), DeviceKind::cuda);
  const std::string description = gpu->description();
  EXPECT_EQ(description.rfind("cuda: ", 0), 0u) << description;
  EXPECT_NE(description.find("(sm_"), std::string::npos) << description;
  EXPECT_NE(description.find(" MB), cuDNN "), std::string::npos) << description;
}

TEST(GpuBackendLifetime, CreatingAndDestroyingBackendsLeaksNoDeviceMemory) {
  LOWBIT_REQUIRE_GPU();
  const auto cycle = [] {
    const auto gpu = make_cuda_backend();
    const Buffer big = gpu->allocate(std::size_t{16} << 20);
    SmallStep step(*gpu);
    step();
    const auto graph = gpu->capture([&] { step(); });
    graph->replay();
    gpu->synchronize();
  };
  cycle();  // loads kernels and library state that stay for the process
  std::size_t free_before = 0, free_after = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_before, &total), cudaSuccess);
  for (int i = 0; i < 8; ++i) cycle();
  ASSERT_EQ(cudaMemGetInfo(&free_after, &total), cudaSuccess);
  // A cycle allocates more than 48 MiB; leaking 1 MiB or more per cycle
  // exceeds this slack.
  constexpr std::size_t kSlack = std::size_t{8} << 20;
  EXPECT_GE(free_after + kSlack, free_before)
      << "free memory fell by " << ((free_before - free_after) >> 20) << " MiB over 8 cycles";
}

// The choice among cuDNN's ranked algorithms (no GPU needed: the ranking is
// made up here).
cudnnConvolutionFwdAlgoPerf_t ranked(cudnnConvolutionFwdAlgo_t algo, cudnnStatus_t status,
                                     cudnnDeterminism_t determinism, cudnnMathType_t math) {
  cudnnConvolutionFwdAlgoPerf_t perf{};
  perf.algo = algo;
  perf.status = status;
  perf.determinism = determinism;
  perf.mathType = math;
  return perf;
}

TEST(CudnnAlgorithmChoice, TakesTheFirstDeterministicFmaAlgorithm) {
  const cudnnConvolutionFwdAlgoPerf_t ranking[] = {
      ranked(CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED, CUDNN_STATUS_NOT_SUPPORTED,
             CUDNN_DETERMINISTIC, CUDNN_FMA_MATH),
      ranked(CUDNN_CONVOLUTION_FWD_ALGO_FFT, CUDNN_STATUS_SUCCESS, CUDNN_NON_DETERMINISTIC,
             CUDNN_FMA_MATH),
      ranked(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_STATUS_SUCCESS, CUDNN_DETERMINISTIC,
             CUDNN_TENSOR_OP_MATH),
      ranked(CUDNN_CONVOLUTION_FWD_ALGO_GEMM, CUDNN_STATUS_SUCCESS, CUDNN_DETERMINISTIC,
             CUDNN_FMA_MATH),
      ranked(CUDNN_CONVOLUTION_FWD_ALGO_DIRECT, CUDNN_STATUS_SUCCESS, CUDNN_DETERMINISTIC,
             CUDNN_FMA_MATH)};
  EXPECT_EQ(gpu::first_usable_algorithm(ranking, 5, "conv"), CUDNN_CONVOLUTION_FWD_ALGO_GEMM);
  // Default math is allowed: the descriptor pins FMA math, so TF32 cannot run.
  const cudnnConvolutionFwdAlgoPerf_t default_math[] = {
      ranked(CUDNN_CONVOLUTION_FWD_ALGO_DIRECT, CUDNN_STATUS_SUCCESS, CUDNN_DETERMINISTIC,
             CUDNN_DEFAULT_MATH)};
  EXPECT_EQ(gpu::first_usable_algorithm(default_math, 1, "conv"),
            CUDNN_CONVOLUTION_FWD_ALGO_DIRECT);
}

TEST(CudnnAlgorithmChoice, NoUsableAlgorithmNamesTheShapeAndWhatWasTried) {
  const cudnnConvolutionFwdAlgoPerf_t ranking[] = {
      ranked(CUDNN_CONVOLUTION_FWD_ALGO_FFT, CUDNN_STATUS_SUCCESS, CUDNN_NON_DETERMINISTIC,
             CUDNN_FMA_MATH),
      ranked(CUDNN_CONVOLUTION_FWD_ALGO_GEMM, CUDNN_STATUS_SUCCESS, CUDNN_DETERMINISTIC,
             CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION)};
  const std::string shape = "conv2d [128, 1, 28, 28] -> 6 channels, forward";
  try {
    gpu::first_usable_algorithm(ranking, 2, shape);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(shape), std::string::npos) << message;
    EXPECT_NE(message.find("algorithm " + std::to_string(CUDNN_CONVOLUTION_FWD_ALGO_FFT) +
                           " (not deterministic)"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("algorithm " + std::to_string(CUDNN_CONVOLUTION_FWD_ALGO_GEMM) +
                           " (tensor-core math)"),
              std::string::npos)
        << message;
  }
  EXPECT_TRUE(test::throws_mentioning(
      [] {
        gpu::first_usable_algorithm(static_cast<cudnnConvolutionFwdAlgoPerf_t*>(nullptr), 0,
                                    "empty");
      },
      "tried none"));
}

}  // namespace
}  // namespace lowbit
