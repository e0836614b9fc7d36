// Every CUDA op against the CPU reference, bit for bit (outputs, masks, EMA
// state, and the fixed-order reductions), on seeded random shapes of rank 1-5
// with sizes that are not multiples of the block, misaligned pointers, every
// width 2..16, both families, per tensor and per channel on every axis,
// ranges on either side of 0 and non-finite inputs. Needs a CUDA device (or
// the emulator, tests/simt).
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "golden.hpp"
#include "lowbit/cuda.hpp"
#include "lowbit/ref.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

using test::DeviceBuffer;
using test::matches;
using test::random_values;
using test::same_bits;
using test::Stream;

struct RandomShape {
  std::vector<std::int64_t> dims;
  int axis;
  int offset;  // misalignment of x, in floats
};

std::vector<RandomShape> random_shapes(std::uint32_t seed, int count) {
  std::mt19937 rng(seed);
  std::vector<RandomShape> shapes;
  for (int s = 0; s < count; ++s) {
    const int rank = 1 + static_cast<int>(rng() % 5);
    RandomShape shape{{}, static_cast<int>(rng() % rank), static_cast<int>(rng() % 4)};
    std::int64_t n = 1;
    for (int d = 0; d < rank; ++d) {
      const std::int64_t limit = std::max<std::int64_t>(1, 40000 / n);
      shape.dims.push_back(1 + static_cast<std::int64_t>(rng() % std::min<std::int64_t>(limit, 97)));
      n *= shape.dims.back();
    }
    shapes.push_back(shape);
  }
#if defined(LOWBIT_SIMT)
  // On the CPU emulator each one-element channel of a per-channel reduction
  // is a block of 256 fibers: 2^20 of them would take minutes.
  shapes.push_back({{1 << 16}, 0, 1});        // one large tensor
#else
  shapes.push_back({{1 << 20}, 0, 1});        // one large tensor
#endif
  shapes.push_back({{64, 16, 33, 31}, 1, 2});  // NCHW-like
  return shapes;
}

/// x copied to the device at a float offset, so pointers are misaligned.
struct OffsetInput {
  DeviceBuffer<float> storage;
  const float* x;
  OffsetInput(const std::vector<float>& host, int offset) : storage(host.size() + 4) {
    std::vector<float> padded(host.size() + 4, 0.0f);
    std::copy(host.begin(), host.end(), padded.begin() + offset);
    storage.upload(padded);
    x = storage.data() + offset;
  }
};

/// random_values with NaN, +Inf and -Inf at three places. The outputs are
/// compared with test::matches then: a NaN's payload is not part of the
/// contract (the GPU returns its canonical NaN).
std::vector<float> random_values_with_non_finite(std::int64_t n, std::uint32_t seed) {
  auto x = random_values(n, seed);
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity()};
  for (int k = 0; k < 3; ++k) x[static_cast<std::size_t>(n * k / 3)] = specials[k];
  return x;
}

/// Range ends per channel that straddle 0, lie above it and lie below it.
void varied_ranges(std::int64_t channels, std::vector<float>& lo, std::vector<float>& hi) {
  lo.resize(channels);
  hi.resize(channels);
  for (std::int64_t c = 0; c < channels; ++c) {
    const float a = 0.37f * static_cast<float>(c % 5), b = 0.71f * static_cast<float>(c % 7);
    switch (c % 3) {
      case 0: lo[c] = -0.5f - a, hi[c] = 0.25f + b; break;
      case 1: lo[c] = 0.3f + a, hi[c] = 1.5f + a + b; break;    // excludes 0, above
      default: lo[c] = -3.0f - b, hi[c] = -0.5f + a / 4; break;  // excludes 0, below
    }
  }
}

std::vector<float> download(const float* device, std::int64_t n) {
  std::vector<float> host(n);
  if (n > 0)
    LOWBIT_CUDA_TRY(cudaMemcpy(host.data(), device, n * sizeof(float), cudaMemcpyDeviceToHost));
  return host;
}

TEST(GpuFakeQuant, RangeMatchesReferenceOnRandomShapes) {
  LOWBIT_REQUIRE_GPU();
  std::uint32_t seed = 1;
  for (const RandomShape& shape : random_shapes(42, 12)) {
    for (bool per_channel : {false, true}) {
      const ChannelLayout layout = per_channel
                                       ? ChannelLayout::per_channel(shape.dims, shape.axis)
                                       : ChannelLayout::per_tensor(ChannelLayout::per_channel(
                                                                       shape.dims, 0).size());
      const std::int64_t n = layout.size();
      const auto x = random_values_with_non_finite(n, seed++);
      std::vector<float> lo, hi;
      varied_ranges(layout.channels, lo, hi);
      OffsetInput dx(x, shape.offset);
      DeviceBuffer<float> dlo(lo), dhi(hi), dy(n + 3);
      for (int bits = kMinBits; bits <= kMaxBits; ++bits) {
        for (bool narrow : {false, true}) {
          for (MaskFormat format : {MaskFormat::pass, MaskFormat::sides}) {
            SCOPED_TRACE(::testing::Message() << "n " << n << " channels " << layout.channels
                                              << " bits " << bits << " narrow " << narrow);
            const RangeQuant quant{bits, narrow};
            std::vector<float> y(n);
            std::vector<std::uint32_t> mask(mask_words(n, format));
            ref::fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), quant,
                                  mask.data(), format);
            DeviceBuffer<std::uint32_t> dmask(mask.size());
            float* y_out = dy.data() + (shape.offset + 1) % 3;
            cuda::fake_quant_range(dx.x, y_out, layout, dlo.data(), dhi.data(), quant, dmask.data(),
                                   format, nullptr);
            ASSERT_TRUE(matches("y", x, y, download(y_out, n)));
            ASSERT_TRUE(same_bits(mask, dmask.download()));
          }
        }
      }
    }
  }
}

TEST(GpuFakeQuant, AffineMatchesReferenceOnRandomShapes) {
  LOWBIT_REQUIRE_GPU();
  std::uint32_t seed = 500;
  for (const RandomShape& shape : random_shapes(43, 12)) {
    const ChannelLayout layout = ChannelLayout::per_channel(shape.dims, shape.axis);
    const std::int64_t n = layout.size();
    const auto x = random_values_with_non_finite(n, seed++);
    OffsetInput dx(x, shape.offset);
    DeviceBuffer<float> dy(n);
    for (int bits = kMinBits; bits <= kMaxBits; ++bits) {
      for (bool is_signed : {false, true}) {
        const AffineQuant quant =
            is_signed ? AffineQuant::signed_bits(bits) : AffineQuant::unsigned_bits(bits);
        std::vector<float> scale(layout.channels);
        std::vector<std::int32_t> zero_point(layout.channels);
        for (std::int64_t c = 0; c < layout.channels; ++c) {
          scale[c] = 5.0f / static_cast<float>(quant.qmax - quant.qmin) * (1.0f + 0.01f * c);
          zero_point[c] =
              quant.qmin + static_cast<std::int32_t>((c * 40503) % (quant.qmax - quant.qmin + 1));
        }
        std::vector<float> y(n);
        std::vector<std::uint32_t> mask(mask_words(n));
        ClipCount counts;
        ref::fake_quant_affine(x.data(), y.data(), layout, scale.data(), zero_point.data(), quant,
                               mask.data(), &counts);
        DeviceBuffer<float> dscale(scale);
        DeviceBuffer<std::int32_t> dzero(zero_point);
        DeviceBuffer<std::uint32_t> dmask(mask.size());
        DeviceBuffer<ClipCount> dcounts(std::vector<ClipCount>(1));
        cuda::fake_quant_affine(dx.x, dy.data(), layout, dscale.data(), dzero.data(), quant,
                                dmask.data(), dcounts.data(), nullptr);
        ASSERT_TRUE(matches("y", x, y, dy.download())) << "bits " << bits;
        ASSERT_TRUE(same_bits(mask, dmask.download())) << "bits " << bits;
        const ClipCount got = dcounts.download()[0];
        ASSERT_EQ(got.quantized, static_cast<unsigned long long>(n)) << "bits " << bits;
        ASSERT_EQ(got.clipped, counts.clipped) << "bits " << bits;
      }
    }
  }
}

TEST(GpuSteBackward, DxAndRangeGradientsMatchReferenceExactly) {
  LOWBIT_REQUIRE_GPU();
  std::uint32_t seed = 900;
  for (const RandomShape& shape : random_shapes(44, 10)) {
    for (bool per_channel : {false, true}) {
      const ChannelLayout layout =
          per_channel ? ChannelLayout::per_channel(shape.dims, shape.axis)
                      : ChannelLayout::per_tensor(ChannelLayout::per_channel(shape.dims, 0).size());
      const std::int64_t n = layout.size();
      const auto x = random_values_with_non_finite(n, seed++);
      const auto g = random_values(n, seed++, 1.0f);
      std::vector<float> lo, hi;
      varied_ranges(layout.channels, lo, hi);
      std::vector<float> y(n);
      std::vector<std::uint32_t> sides(mask_words(n, MaskFormat::sides));
      ref::fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), {4, false},
                            sides.data(), MaskFormat::sides);
      std::vector<float> storage, dx(n), d_min(layout.channels), d_max(layout.channels);
      ref::ste_backward_range(g.data(), sides.data(), layout, dx.data(), d_min.data(),
                              d_max.data(), test::host_workspace(storage, layout));

      OffsetInput dg(g, shape.offset);
      DeviceBuffer<std::uint32_t> dsides(sides);
      DeviceBuffer<float> ddx(n), ddmin(layout.channels), ddmax(layout.channels);
      DeviceBuffer<float> workspace(reduction_workspace_bytes(layout) / sizeof(float) + 1);
      cuda::ste_backward_range(dg.x, dsides.data(), layout, ddx.data(), ddmin.data(), ddmax.data(),
                               workspace.as_workspace(), nullptr);
      ASSERT_TRUE(same_bits(dx, ddx.download()));
      ASSERT_TRUE(same_bits(d_min, ddmin.download()));
      ASSERT_TRUE(same_bits(d_max, ddmax.download()));

      cuda::ste_backward(dg.x, dsides.data(), MaskFormat::sides, n, ddx.data(), nullptr);
      ASSERT_TRUE(same_bits(dx, ddx.download()));
      std::vector<std::uint32_t> pass(mask_words(n));
      ref::fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), {4, false},
                            pass.data());
      DeviceBuffer<std::uint32_t> dpass(pass);
      cuda::ste_backward(dg.x, dpass.data(), MaskFormat::pass, n, ddx.data(), nullptr);
      ASSERT_TRUE(same_bits(dx, ddx.download()));
    }
  }
}

// A run of EMA steps, including a NaN batch, quant_delay and a freeze, gives
// the same outputs, masks and state bytes on both sides.
TEST(GpuEma, SequenceMatchesReferenceInBothModesAndMaskFormats) {
  LOWBIT_REQUIRE_GPU();
  for (EmaMode mode : {EmaMode::exact, EmaMode::lagged}) {
    for (int bits : {2, 4, 8, 16}) {
      const MaskFormat format = bits % 8 == 0 ? MaskFormat::pass : MaskFormat::sides;
      EmaConfig config;
      config.quant = {bits, false};
      config.mode = mode;
      config.quant_delay = 2;
      config.freeze_step = 9;
      config.decay = 0.99f;
      EmaRangeState state;
      ref::ema_state_init(&state);
      DeviceBuffer<EmaRangeState> dstate(1);
      cuda::ema_state_init(dstate.data(), nullptr);
      ClipCount counts;  // over the whole sequence
      DeviceBuffer<ClipCount> dcounts(std::vector<ClipCount>(1));
      std::int64_t total = 0;
      for (int step = 0; step < 12; ++step) {
        const std::int64_t n = 1000 + 7919 * step;
        auto x = random_values(n, 77 + step, 0.5f + step);
        if (step == 4) x[n / 2] = std::numeric_limits<float>::quiet_NaN();
        std::vector<float> y(n);
        std::vector<std::uint32_t> mask(mask_words(n, format));
        ref::ema_fake_quant(x.data(), y.data(), n, &state, config, mask.data(), format, &counts);
        total += n;
        OffsetInput dx(x, step % 4);
        DeviceBuffer<float> dy(n);
        DeviceBuffer<std::uint32_t> dmask(mask.size());
        cuda::ema_fake_quant(dx.x, dy.data(), n, dstate.data(), config, dmask.data(), format,
                             dcounts.data(), nullptr);
        SCOPED_TRACE(::testing::Message() << "bits " << bits << " step " << step);
        ASSERT_TRUE(matches("y", x, y, dy.download()));
        ASSERT_TRUE(same_bits(mask, dmask.download()));
        const EmaRangeState got = dstate.download()[0];
        ASSERT_EQ(std::memcmp(&state, &got, sizeof state), 0)
            << "min " << got.min << " vs " << state.min << ", max " << got.max << " vs "
            << state.max << ", steps " << got.steps << ", skipped " << got.skipped;
        const ClipCount got_counts = dcounts.download()[0];
        ASSERT_EQ(got_counts.quantized, counts.quantized);
        ASSERT_EQ(got_counts.clipped, counts.clipped);
      }
      // The delay's identity steps quantize nothing; growing batches clip.
      EXPECT_GT(counts.quantized, 0u);
      EXPECT_LT(counts.quantized, static_cast<unsigned long long>(total));
      EXPECT_GT(counts.clipped, 0u);
    }
  }
}

// The ops are capturable: a captured forward + backward replays to the same
// result as eager calls, in both EMA modes.
TEST(GpuGraph, CapturedStepReplaysLikeEager) {
  LOWBIT_REQUIRE_GPU();
  const std::int64_t n = 123457;
  const auto x = random_values(n, 5);
  const auto g = random_values(n, 6);
  for (EmaMode mode : {EmaMode::exact, EmaMode::lagged}) {
    SCOPED_TRACE(mode == EmaMode::exact ? "exact" : "lagged");
    DeviceBuffer<float> dx(x), dg(g), dy(n), ddx(n);
    DeviceBuffer<std::uint32_t> dmask(mask_words(n));
    DeviceBuffer<EmaRangeState> dstate(1);
    EmaConfig config;
    config.quant = {4, false};
    config.mode = mode;
    DeviceBuffer<ClipCount> dcounts(std::vector<ClipCount>(1));
    const Stream stream;
    cuda::ema_state_init(dstate.data(), stream.get());
    // One eager call first, so that no kernel module is loaded inside the capture.
    cuda::ema_fake_quant(dx.data(), dy.data(), n, dstate.data(), config, dmask.data(),
                         MaskFormat::pass, dcounts.data(), stream.get());
    cuda::ste_backward(dg.data(), dmask.data(), MaskFormat::pass, n, ddx.data(), stream.get());
    cudaGraph_t graph;
    LOWBIT_CUDA_TRY(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
    cuda::ema_fake_quant(dx.data(), dy.data(), n, dstate.data(), config, dmask.data(),
                         MaskFormat::pass, dcounts.data(), stream.get());
    cuda::ste_backward(dg.data(), dmask.data(), MaskFormat::pass, n, ddx.data(), stream.get());
    LOWBIT_CUDA_TRY(cudaStreamEndCapture(stream.get(), &graph));
    cudaGraphExec_t exec;
    LOWBIT_CUDA_TRY(cudaGraphInstantiate(&exec, graph, 0));
    for (int i = 0; i < 3; ++i) LOWBIT_CUDA_TRY(cudaGraphLaunch(exec, stream.get()));
    stream.sync();

    EmaRangeState state;
    ref::ema_state_init(&state);
    std::vector<float> y(n), dxr(n);
    std::vector<std::uint32_t> mask(mask_words(n));
    ClipCount counts;
    for (int i = 0; i < 4; ++i) {  // the eager call and three replays
      ref::ema_fake_quant(x.data(), y.data(), n, &state, config, mask.data(), MaskFormat::pass,
                          &counts);
      ref::ste_backward(g.data(), mask.data(), MaskFormat::pass, n, dxr.data());
    }
    EXPECT_TRUE(same_bits(y, dy.download()));
    EXPECT_TRUE(same_bits(dxr, ddx.download()));
    const EmaRangeState got = dstate.download()[0];
    EXPECT_EQ(std::memcmp(&state, &got, sizeof state), 0);
    const ClipCount got_counts = dcounts.download()[0];
    EXPECT_EQ(got_counts.quantized, counts.quantized);
    EXPECT_EQ(got_counts.clipped, counts.clipped);
    LOWBIT_CUDA_TRY(cudaGraphExecDestroy(exec));
    LOWBIT_CUDA_TRY(cudaGraphDestroy(graph));
  }
}

// DeviceBuffer's copies on a non-blocking stream wait for that stream's work:
// the legacy default stream would not order them.
TEST(GpuDeviceBuffer, CopiesAreOrderedWithTheCallersStream) {
  LOWBIT_REQUIRE_GPU();
  const Stream stream(cudaStreamNonBlocking);
#if defined(LOWBIT_SIMT)
  const std::int64_t n = std::int64_t{1} << 16;  // the emulator runs each copy at once
#else
  const std::int64_t n = std::int64_t{1} << 22;
#endif
  const ChannelLayout layout = ChannelLayout::per_tensor(n);
  DeviceBuffer<float> dx(n), dy(n), dlo(1), dhi(1);
  DeviceBuffer<std::uint32_t> dmask(mask_words(n));
  for (std::uint32_t round = 0; round < 3; ++round) {
    const auto x = random_values(n, 40 + round);
    const std::vector<float> lo = {-1.0f - static_cast<float>(round)}, hi = {2.0f};
    dx.upload(x, stream.get());
    dlo.upload(lo, stream.get());
    dhi.upload(hi, stream.get());
    cuda::fake_quant_range(dx.data(), dy.data(), layout, dlo.data(), dhi.data(), {4, false},
                           dmask.data(), MaskFormat::pass, stream.get());
    std::vector<float> y(n);
    std::vector<std::uint32_t> mask(mask_words(n));
    ref::fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), {4, false},
                          mask.data(), MaskFormat::pass);
    ASSERT_TRUE(same_bits(y, dy.download(stream.get()))) << "round " << round;
  }
}

#if !defined(LOWBIT_SIMT)
// n >= 2^31 needs 64-bit indexing; checked at the tail, where 32-bit
// arithmetic would wrap. GPU only: the emulator would take hours.

/// Skips (fails under LOWBIT_EXPECT_GPU=1) unless `bytes` of device memory are free.
#define LOWBIT_REQUIRE_FREE_DEVICE_MEMORY(bytes)                                             \
  if (std::size_t free_bytes = 0, total_bytes = 0;                                           \
      cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess || free_bytes < (bytes))      \
  LOWBIT_SKIP_OR_FAIL("needs " + std::to_string((bytes) >> 30) + " GiB of free device memory")

constexpr std::int64_t kBeyondInt32 = (std::int64_t{1} << 31) + 77;

/// n floats of device memory, all 0, with `tail` copied to the end.
void zeros_then(DeviceBuffer<float>& x, const std::vector<float>& tail) {
  const std::int64_t n = x.size();
  LOWBIT_CUDA_TRY(cudaMemset(x.data(), 0, n * sizeof(float)));
  LOWBIT_CUDA_TRY(cudaMemcpy(x.data() + n - tail.size(), tail.data(), tail.size() * sizeof(float),
                             cudaMemcpyHostToDevice));
}

TEST(GpuLargeTensor, FakeQuantBeyondTwoToThe31Elements) {
  LOWBIT_REQUIRE_GPU();
  const std::int64_t n = kBeyondInt32;
  LOWBIT_REQUIRE_FREE_DEVICE_MEMORY(static_cast<std::size_t>(n) * 9);
  DeviceBuffer<float> x(n), y(n);
  DeviceBuffer<std::uint32_t> mask(mask_words(n));
  // 0 everywhere but the last 1000 elements, which are 5.0 (above the range).
  zeros_then(x, std::vector<float>(1000, 5.0f));
  const std::vector<float> lo = {-1.0f}, hi = {1.0f};
  DeviceBuffer<float> dlo(lo), dhi(hi);
  cuda::fake_quant_range(x.data(), y.data(), ChannelLayout::per_tensor(n), dlo.data(), dhi.data(),
                         {8, false}, mask.data(), MaskFormat::pass, nullptr);
  const auto y_tail = download(y.data() + n - 1000, 1000);
  const RangeParams p = nudge_range(-1.0f, 1.0f, 0, 255);
  for (float v : y_tail) ASSERT_EQ(v, p.nudged_max);
  std::vector<std::uint32_t> last_words(2);
  LOWBIT_CUDA_TRY(cudaMemcpy(last_words.data(), mask.data() + mask_words(n) - 2,
                             2 * sizeof(std::uint32_t), cudaMemcpyDeviceToHost));
  EXPECT_EQ(last_words[0], 0u);
  EXPECT_EQ(last_words[1], 0u);
  const auto y_head = download(y.data(), 1000);
  for (float v : y_head) ASSERT_EQ(v, 0.0f);
}

// A reduction over 2^31 + 77 weights: the extremes sit in the last elements,
// which a wrapped index would never reach.
TEST(GpuLargeTensor, WeightRangeBeyondTwoToThe31Elements) {
  LOWBIT_REQUIRE_GPU();
  const std::int64_t n = kBeyondInt32;
  const ChannelLayout layout = ChannelLayout::per_tensor(n);
  LOWBIT_REQUIRE_FREE_DEVICE_MEMORY(static_cast<std::size_t>(n) * 4 +
                                    reduction_workspace_bytes(layout));
  DeviceBuffer<float> w(n), min(1), max(1);
  zeros_then(w, {-3.0f, 0.25f, 7.5f});
  DeviceBuffer<std::uint8_t> workspace(reduction_workspace_bytes(layout));
  cuda::weight_range(w.data(), layout, false, min.data(), max.data(), workspace.as_workspace(),
                     nullptr);
  EXPECT_EQ(min.download()[0], -3.0f);
  EXPECT_EQ(max.download()[0], 7.5f);
}
#endif

}  // namespace
}  // namespace lowbit
