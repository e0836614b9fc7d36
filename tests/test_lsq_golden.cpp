// LSQ (docs/numerics.md, "Learned step size") against PyTorch's learnable fake
// quant, torch._fake_quantize_learnable_per_{tensor,channel}_affine with zero
// point 0: tests/data/lsq_golden.json came from tests/data/make_lsq_golden.py.
//
// - The forward equals PyTorch's bit for bit, zeros included (+0).
// - dx equals PyTorch's bit for bit, except in the bands at the grid ends
//   where PyTorch (rounded level inside the grid) and Esser et al. (v = x/s
//   strictly inside) disagree; there lowbit gives the paper's dx = dy·0.
// - d_scale equals PyTorch's to rounding (the per-element terms are computed
//   differently, and the sums in other orders), except in those bands, where
//   lowbit's term is the paper's qmin or qmax, exactly.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "both_sides.hpp"
#include "checks.hpp"
#include "golden.hpp"
#include "lowbit/element.hpp"
#include "lowbit/types.hpp"

namespace lowbit {
namespace {

using test::floats_from_bits;
using test::matches;
using test::show;

struct LsqCase {
  std::string name;
  std::string mode;  // per_tensor, per_element or per_channel
  LsqQuant quant;
  ChannelLayout layout;
  float grad_factor = 0.0f;  // PyTorch's, which is lowbit's g for the layout
  std::vector<float> scale, x, dy;
  std::vector<float> y, dx, d_scale;  // PyTorch's
};

const std::vector<LsqCase>& golden_cases() {
  static const std::vector<LsqCase> cases = [] {
    const auto doc = test::load_golden("lsq_golden.json");
    std::vector<LsqCase> out;
    for (const auto& c : doc.at("cases")) {
      LsqCase g;
      g.name = c.at("name").get<std::string>();
      g.mode = c.at("mode").get<std::string>();
      g.quant = LsqQuant{c.at("qmin").get<int>(), c.at("qmax").get<int>()};
      const auto shape = c.at("shape").get<std::vector<std::int64_t>>();
      g.layout = g.mode == "per_tensor" ? ChannelLayout::per_tensor(shape.at(0))
                                        : ChannelLayout::per_channel(shape, c.at("axis").get<int>());
      g.grad_factor = floats_from_bits(c.at("grad_factor_bits")).at(0);
      g.scale = floats_from_bits(c.at("scale_bits"));
      g.x = floats_from_bits(c.at("x_bits"));
      g.dy = floats_from_bits(c.at("dy_bits"));
      g.y = floats_from_bits(c.at("y_bits"));
      g.dx = floats_from_bits(c.at("dx_bits"));
      g.d_scale = floats_from_bits(c.at("d_scale_bits"));
      out.push_back(std::move(g));
    }
    return out;
  }();
  return cases;
}

LsqParams params_of(const LsqCase& g, std::size_t i) {
  const auto c = static_cast<std::size_t>(test::channel_of(g.layout, static_cast<std::int64_t>(i)));
  return make_lsq(g.scale[c], g.quant.qmin, g.quant.qmax);
}

/// PyTorch's rule: dx passes where the rounded level is inside the grid.
bool pytorch_passes(float x, const LsqParams& p) {
  const float q = round_half_even(x * p.inv_scale);
  return q >= p.qmin && q <= p.qmax;
}

/// Where PyTorch and Esser et al. disagree (the paper never passes more).
bool in_band(float x, const LsqParams& p) { return pytorch_passes(x, p) && !lsq_passes(x, p); }

/// Rounding allowance for one element's d_scale term, times g: both sides
/// round v = x·(1/s) and PyTorch forms (q·s - x)·(1/s), so the error scales
/// with |v|.
float term_tolerance(float x, float dy, const LsqParams& p, float g) {
  return 64.0f * FLT_EPSILON * (std::fabs(x * p.inv_scale) + 1.0f) * std::fabs(dy) * g;
}

struct Result {
  std::vector<float> y, dx, d_scale;
};

template <class Api>
Result run(const LsqCase& g) {
  Api api;
  const std::vector<float> poison(g.x.size(), test::float_from_bits(0x7fc0deadu));
  const std::vector<float> channel_poison(g.scale.size(), test::float_from_bits(0x7fc0deadu));
  auto x = api.upload(g.x);
  auto dy = api.upload(g.dy);
  auto scale = api.upload(g.scale);
  auto y = api.upload(poison);
  auto dx = api.upload(poison);
  auto d_scale = api.upload(channel_poison);
  auto ws = test::workspace_buffer(api, g.layout);
  api.lsq_forward(x.data(), y.data(), g.layout, scale.data(), g.quant, nullptr);
  api.lsq_backward(dy.data(), x.data(), g.layout, scale.data(), g.quant, dx.data(),
                   d_scale.data(), test::as_workspace(ws));
  return {api.download(y), api.download(dx), api.download(d_scale)};
}

::testing::AssertionResult checks_out(const LsqCase& g, const Result& got) {
  if (auto fwd = matches(g.name + " y", g.x, g.y, got.y); !fwd) return fwd;
  std::vector<float> want_dx = g.dx;
  std::vector<double> want_ds(g.scale.size(), 0.0), tolerance(g.scale.size(), 0.0);
  const bool per_element = g.mode == "per_element";
  for (std::size_t i = 0; i < g.x.size(); ++i) {
    const LsqParams p = params_of(g, i);
    const auto c = static_cast<std::size_t>(test::channel_of(g.layout, static_cast<std::int64_t>(i)));
    if (in_band(g.x[i], p)) {
      if (!per_element)
        return ::testing::AssertionFailure() << g.name << ": band input " << show(g.x[i]);
      // PyTorch passes here; the paper blocks dx and takes qmin or qmax.
      if (test::bits_of(g.dx[i]) != test::bits_of(g.dy[i]))
        return ::testing::AssertionFailure() << g.name << ": PyTorch blocked band input " << i;
      want_dx[i] = ste_gradient(g.dy[i], false);
      // One term per channel, summed from +0, times g.
      const float factor = g.x[i] * p.inv_scale <= p.qmin ? p.qmin : p.qmax;
      const float paper = (0.0f + g.dy[i] * factor) * g.grad_factor;
      if (test::bits_of(got.d_scale[c]) != test::bits_of(paper))
        return ::testing::AssertionFailure() << g.name << ": band input " << show(g.x[i])
                                             << " d_scale " << show(got.d_scale[c])
                                             << ", the paper gives " << show(paper);
      want_ds[c] = std::nan("");
      continue;
    }
    tolerance[c] += term_tolerance(g.x[i], g.dy[i], p, g.grad_factor);
  }
  if (auto dx = matches(g.name + " dx", g.x, want_dx, got.dx); !dx) return dx;
  for (std::size_t c = 0; c < g.scale.size(); ++c) {
    if (std::isnan(want_ds[c])) continue;  // a band element, checked above
    const double diff = std::fabs(double{got.d_scale[c]} - double{g.d_scale[c]});
    if (!(diff <= tolerance[c] + 1e-30))
      return ::testing::AssertionFailure()
             << g.name << ": d_scale[" << c << "] " << show(got.d_scale[c]) << ", PyTorch "
             << show(g.d_scale[c]) << " (allowed " << tolerance[c] << ")";
  }
  return ::testing::AssertionSuccess();
}

template <class Api>
void check_all() {
  for (const auto& g : golden_cases()) EXPECT_TRUE(checks_out(g, run<Api>(g)));
}

TEST(LsqGolden, DataCoversTheBandsAndZeros) {
  std::size_t band = 0, negative_zero_region = 0;
  for (const auto& g : golden_cases()) {
    ASSERT_EQ(g.layout.size(), static_cast<std::int64_t>(g.x.size())) << g.name;
    ASSERT_EQ(g.scale.size(), static_cast<std::size_t>(g.layout.channels)) << g.name;
    // lowbit's g for the layout is what PyTorch was given.
    EXPECT_EQ(g.grad_factor, detail::lsq_gradient_scale(g.layout, g.quant)) << g.name;
    for (std::size_t i = 0; i < g.x.size(); ++i) {
      const LsqParams p = params_of(g, i);
      band += in_band(g.x[i], p);
      const float v = g.x[i] * p.inv_scale;
      negative_zero_region += v > -0.5f && v <= 0.0f;  // round(v) is -0 here
    }
  }
  EXPECT_GT(band, 100u);
  EXPECT_GT(negative_zero_region, 100u);
}

TEST(LsqGolden, CpuMatchesPyTorchAndThePaperInTheBands) { check_all<test::HostOps>(); }

TEST(GpuLsqGolden, CudaMatchesPyTorchAndThePaperInTheBands) {
  LOWBIT_REQUIRE_GPU();
  check_all<test::DeviceOps>();
}

}  // namespace
}  // namespace lowbit
