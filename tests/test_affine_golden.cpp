// Affine mode (DESIGN.md §2) against golden vectors from PyTorch's CPU kernels:
// torch.fake_quantize_per_{tensor,channel}_affine and their _cachemask STE
// masks. The data, tests/data/affine_golden.json, came from
// tests/data/make_affine_golden.py (see its docstring to regenerate). Every
// float is stored as its bit pattern, and outputs must match bit for bit.
#include <gtest/gtest.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "golden.hpp"
#include "lowbit/cuda.hpp"
#include "lowbit/ref.hpp"
#include "lowbit/types.hpp"
#include "test_util.hpp"

namespace {

using lowbit::test::bits_of;
using lowbit::test::DeviceBuffer;
using lowbit::test::float_from_bits;
using lowbit::test::floats_from_bits;
using lowbit::test::show;
using lowbit::test::Stream;

struct GoldenCase {
  std::string name;
  lowbit::ChannelLayout layout;
  lowbit::AffineQuant quant;
  std::vector<float> scale;
  std::vector<std::int32_t> zero_point;
  std::vector<float> x;
  std::vector<std::uint32_t> y_bits;  // expected output, as bit patterns
  std::vector<int> mask;              // PyTorch's STE mask, one 0/1 per element
};

const std::vector<GoldenCase>& golden_cases() {
  static const std::vector<GoldenCase> cases = [] {
    const auto doc = lowbit::test::load_golden("affine_golden.json");
    std::vector<GoldenCase> out;
    for (const auto& c : doc.at("cases")) {
      GoldenCase g;
      g.name = c.at("name").get<std::string>();
      const auto shape = c.at("shape").get<std::vector<std::int64_t>>();
      const auto x = floats_from_bits(c.at("x_bits"));
      g.layout = c.at("mode") == "per_tensor"
                     ? lowbit::ChannelLayout::per_tensor(static_cast<std::int64_t>(x.size()))
                     : lowbit::ChannelLayout::per_channel(shape, c.at("axis").get<int>());
      g.quant = lowbit::AffineQuant{c.at("qmin").get<int>(), c.at("qmax").get<int>()};
      g.scale = floats_from_bits(c.at("scale_bits"));
      g.zero_point = c.at("zero_point").get<std::vector<std::int32_t>>();
      g.x = x;
      g.y_bits = c.at("y_bits").get<std::vector<std::uint32_t>>();
      g.mask = c.at("mask").get<std::vector<int>>();
      out.push_back(std::move(g));
    }
    return out;
  }();
  return cases;
}

// Compares lowbit's y (bit for bit) and bit-packed mask with PyTorch's, and
// lists the first few mismatches.
::testing::AssertionResult matches_golden(const GoldenCase& g, const std::vector<float>& y,
                                          const std::vector<std::uint32_t>& mask) {
  std::ostringstream msg;
  std::int64_t bad = 0;
  for (std::size_t i = 0; i < g.x.size(); ++i) {
    const bool got_pass = (mask[i / 32] >> (i % 32)) & 1u;
    const bool want_pass = g.mask[i] != 0;
    if (bits_of(y[i]) == g.y_bits[i] && got_pass == want_pass) continue;
    if (bad++ < 5) {
      msg << "\n  [" << i << "] x=" << show(g.x[i])
          << " expected y=" << show(float_from_bits(g.y_bits[i])) << " mask=" << want_pass
          << ", got y=" << show(y[i]) << " mask=" << got_pass;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << g.name << ": " << bad << " of " << g.x.size()
                                       << " elements differ from PyTorch" << msg.str();
}

TEST(AffineGolden, DataLoaded) {
  const auto& cases = golden_cases();
  ASSERT_GT(cases.size(), 0u);
  for (const auto& g : cases) {
    ASSERT_EQ(g.layout.size(), static_cast<std::int64_t>(g.x.size())) << g.name;
    ASSERT_EQ(g.scale.size(), static_cast<std::size_t>(g.layout.channels)) << g.name;
    ASSERT_EQ(g.zero_point.size(), g.scale.size()) << g.name;
    ASSERT_EQ(g.y_bits.size(), g.x.size()) << g.name;
    ASSERT_EQ(g.mask.size(), g.x.size()) << g.name;
  }
}

TEST(AffineGolden, CpuReferenceMatchesPyTorch) {
  for (const auto& g : golden_cases()) {
    const std::int64_t n = g.layout.size();
    std::vector<float> y(n, float_from_bits(0x7fc0dead));  // NaN: catches unwritten outputs
    std::vector<std::uint32_t> mask(lowbit::mask_words(n), 0xa5a5a5a5u);
    lowbit::ref::fake_quant_affine(g.x.data(), y.data(), g.layout, g.scale.data(),
                                   g.zero_point.data(), g.quant, mask.data());
    EXPECT_TRUE(matches_golden(g, y, mask));
  }
}

TEST(GpuAffineGolden, CudaMatchesPyTorch) {
  LOWBIT_REQUIRE_GPU();
  Stream stream;
  for (const auto& g : golden_cases()) {
    const std::int64_t n = g.layout.size();
    std::vector<float> y(n, float_from_bits(0x7fc0dead));
    std::vector<std::uint32_t> mask(lowbit::mask_words(n), 0xa5a5a5a5u);
    DeviceBuffer<float> d_x(g.x), d_scale(g.scale), d_y(y);
    DeviceBuffer<std::int32_t> d_zp(g.zero_point);
    DeviceBuffer<std::uint32_t> d_mask(mask);
    lowbit::cuda::fake_quant_affine(d_x.data(), d_y.data(), g.layout, d_scale.data(), d_zp.data(),
                                    g.quant, d_mask.data(), nullptr, stream.get());
    stream.sync();
    EXPECT_TRUE(matches_golden(g, d_y.download(), d_mask.download()));
  }
}

}  // namespace
