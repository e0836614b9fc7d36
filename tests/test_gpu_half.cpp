// lowbit::cuda's bf16 and fp16 ops against lowbit::ref, bit for bit: outputs,
// masks, clip counts, EMA state and the range gradients, on layouts that are
// not multiples of a tile, with misaligned pointers and every special value.
// Needs a CUDA device (or the emulator, tests/simt).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "golden.hpp"
#include "half_cases.hpp"
#include "lowbit/cuda.hpp"
#include "lowbit/ref.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

using test::DeviceBuffer;
using test::half_values;
using test::ranges_for;
using test::same_bits;
using test::same_elements;
using Words = std::vector<std::uint32_t>;

template <class T>
class GpuHalf : public ::testing::Test {};
using ElementTypes = ::testing::Types<bf16, fp16>;
TYPED_TEST_SUITE(GpuHalf, ElementTypes);

#if defined(LOWBIT_SIMT)
constexpr std::int64_t kLarge = 1 << 14;
#else
constexpr std::int64_t kLarge = 1 << 20;
#endif

const ChannelLayout kLayouts[] = {ChannelLayout::per_tensor(kLarge + 77), ChannelLayout{3, 5, 37},
                                  ChannelLayout{13, 11, 1}, ChannelLayout::per_tensor(33)};

/// Device copy of a host tensor at an element offset, so pointers are
/// misaligned for any vector width.
template <class T>
struct OffsetElements {
  DeviceBuffer<T> storage;
  T* data;
  OffsetElements(const std::vector<T>& host, int offset) : storage(host.size() + 4) {
    std::vector<T> padded(host.size() + 4, T{0});
    std::copy(host.begin(), host.end(), padded.begin() + offset);
    storage.upload(padded);
    data = storage.data() + offset;
  }
  std::vector<T> download(std::size_t n, int offset) const {
    std::vector<T> all = storage.download();
    return std::vector<T>(all.begin() + offset, all.begin() + offset + static_cast<long>(n));
  }
};

TYPED_TEST(GpuHalf, FakeQuantMatchesTheReference) {
  LOWBIT_REQUIRE_GPU();
  using T = TypeParam;
  std::uint32_t seed = 10;
  int offset = 0;
  for (const ChannelLayout& layout : kLayouts) {
    const std::int64_t n = layout.size();
    const std::vector<T> x = half_values<T>(n, seed++);
    std::vector<float> lo, hi, scale(layout.channels);
    ranges_for(layout.channels, lo, hi);
    std::vector<std::int32_t> zero_point(layout.channels);
    for (std::int64_t c = 0; c < layout.channels; ++c) {
      scale[c] = c % 2 ? 0.25f : 0.03f * static_cast<float>(c + 1);
      zero_point[c] = static_cast<std::int32_t>(c % 3) - 1;  // inside every signed grid
    }
    DeviceBuffer<float> dlo(lo), dhi(hi), dscale(scale);
    DeviceBuffer<std::int32_t> dzero(zero_point);
    offset = (offset + 1) % 4;
    OffsetElements<T> dx(x, offset);
    for (int bits : {2, 4, 8, 16}) {
      for (MaskFormat format : {MaskFormat::pass, MaskFormat::sides}) {
        SCOPED_TRACE(::testing::Message() << "channels " << layout.channels << " bits " << bits);
        const RangeQuant quant{bits, bits == 4};
        std::vector<T> want(n);
        Words want_mask(mask_words(n, format));
        ref::fake_quant_range(x.data(), want.data(), layout, lo.data(), hi.data(), quant,
                              want_mask.data(), format);
        OffsetElements<T> dy(std::vector<T>(n), 3 - offset);
        DeviceBuffer<std::uint32_t> dmask(want_mask.size());
        cuda::fake_quant_range(dx.data, dy.data, layout, dlo.data(), dhi.data(), quant,
                               dmask.data(), format, nullptr);
        ASSERT_TRUE(same_elements("range y", x, want, dy.download(n, 3 - offset)));
        ASSERT_TRUE(same_bits(want_mask, dmask.download()));
      }
      const AffineQuant quant = AffineQuant::signed_bits(bits);
      std::vector<T> want(n);
      Words want_mask(mask_words(n));
      ClipCount want_counts;
      ref::fake_quant_affine(x.data(), want.data(), layout, scale.data(), zero_point.data(), quant,
                             want_mask.data(), &want_counts);
      DeviceBuffer<T> dy(n);
      DeviceBuffer<std::uint32_t> dmask(want_mask.size());
      DeviceBuffer<ClipCount> dcounts(std::vector<ClipCount>(1));
      cuda::fake_quant_affine(dx.data, dy.data(), layout, dscale.data(), dzero.data(), quant,
                              dmask.data(), dcounts.data(), nullptr);
      ASSERT_TRUE(same_elements("affine y", x, want, dy.download()));
      ASSERT_TRUE(same_bits(want_mask, dmask.download()));
      const ClipCount counts = dcounts.download()[0];
      ASSERT_EQ(counts.quantized, want_counts.quantized);
      ASSERT_EQ(counts.clipped, want_counts.clipped);
    }
  }
}

TYPED_TEST(GpuHalf, SteBackwardMatchesTheReference) {
  LOWBIT_REQUIRE_GPU();
  using T = TypeParam;
  std::uint32_t seed = 20;
  int offset = 0;
  for (const ChannelLayout& layout : kLayouts) {
    const std::int64_t n = layout.size();
    const std::vector<T> x = half_values<T>(n, seed++);
    const std::vector<T> g = half_values<T>(n, seed++, 1.0f);
    std::vector<float> lo, hi;
    ranges_for(layout.channels, lo, hi);
    std::vector<T> y(n);
    Words sides(mask_words(n, MaskFormat::sides)), pass(mask_words(n));
    ref::fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), {4, false},
                          sides.data(), MaskFormat::sides);
    ref::fake_quant_range(x.data(), y.data(), layout, lo.data(), hi.data(), {4, false}, pass.data(),
                          MaskFormat::pass);
    std::vector<T> want_dx(n), want_pass_dx(n);
    std::vector<float> storage, want_min(layout.channels), want_max(layout.channels);
    ref::ste_backward_range(g.data(), sides.data(), layout, want_dx.data(), want_min.data(),
                            want_max.data(), test::host_workspace(storage, layout));
    ref::ste_backward(g.data(), pass.data(), MaskFormat::pass, n, want_pass_dx.data());

    offset = (offset + 1) % 4;
    OffsetElements<T> dg(g, offset);
    DeviceBuffer<std::uint32_t> dsides(sides), dpass(pass);
    DeviceBuffer<T> ddx(n);
    DeviceBuffer<float> ddmin(layout.channels), ddmax(layout.channels);
    DeviceBuffer<float> workspace(reduction_workspace_bytes(layout) / sizeof(float) + 1);
    cuda::ste_backward_range(dg.data, dsides.data(), layout, ddx.data(), ddmin.data(), ddmax.data(),
                             workspace.as_workspace(), nullptr);
    ASSERT_TRUE(same_elements("range dx", g, want_dx, ddx.download()));
    // Bit for bit, but for a NaN sum's sign and payload (the GPU's NaN is
    // its own canonical one).
    ASSERT_TRUE(test::matches("d_min", {}, want_min, ddmin.download()));
    ASSERT_TRUE(test::matches("d_max", {}, want_max, ddmax.download()));
    cuda::ste_backward(dg.data, dsides.data(), MaskFormat::sides, n, ddx.data(), nullptr);
    ASSERT_TRUE(same_elements("sides dx", g, want_dx, ddx.download()));
    cuda::ste_backward(dg.data, dpass.data(), MaskFormat::pass, n, ddx.data(), nullptr);
    ASSERT_TRUE(same_elements("pass dx", g, want_pass_dx, ddx.download()));
  }
}

TYPED_TEST(GpuHalf, EmaFakeQuantMatchesTheReference) {
  LOWBIT_REQUIRE_GPU();
  using T = TypeParam;
  for (EmaMode mode : {EmaMode::exact, EmaMode::lagged}) {
    for (MaskFormat format : {MaskFormat::pass, MaskFormat::sides}) {
      EmaConfig config;
      config.quant = {format == MaskFormat::pass ? 4 : 8, false};
      config.mode = mode;
      config.quant_delay = 2;
      config.freeze_step = 6;
      config.decay = 0.9f;
      EmaRangeState state;
      ref::ema_state_init(&state);
      DeviceBuffer<EmaRangeState> dstate(1);
      cuda::ema_state_init(dstate.data(), nullptr);
      ClipCount counts;
      DeviceBuffer<ClipCount> dcounts(std::vector<ClipCount>(1));
      for (int step = 0; step < 8; ++step) {
        const std::int64_t n = 300 + 2113 * step;
        std::vector<T> x = half_values<T>(n, 40 + step, 0.5f + step);
        if (step != 3)  // batch 3 keeps its NaN and is skipped; the others clip
          for (T& v : x)
            if (!(std::fabs(to_float(v)) <= 16.0f)) v = from_float<T>(0.5f);
        std::vector<T> want(n);
        Words want_mask(mask_words(n, format));
        ref::ema_fake_quant(x.data(), want.data(), n, &state, config, want_mask.data(), format,
                            &counts);
        OffsetElements<T> dx(x, step % 4);
        DeviceBuffer<T> dy(n);
        DeviceBuffer<std::uint32_t> dmask(want_mask.size());
        cuda::ema_fake_quant(dx.data, dy.data(), n, dstate.data(), config, dmask.data(), format,
                             dcounts.data(), nullptr);
        SCOPED_TRACE(::testing::Message() << "step " << step);
        ASSERT_TRUE(same_elements("y", x, want, dy.download()));
        ASSERT_TRUE(same_bits(want_mask, dmask.download()));
        const EmaRangeState got = dstate.download()[0];
        ASSERT_EQ(std::memcmp(&state, &got, sizeof state), 0);
        const ClipCount got_counts = dcounts.download()[0];
        ASSERT_EQ(got_counts.quantized, counts.quantized);
        ASSERT_EQ(got_counts.clipped, counts.clipped);
      }
      EXPECT_EQ(state.skipped, 1u);
      EXPECT_GT(counts.clipped, 0u);
    }
  }
}

}  // namespace
}  // namespace lowbit
