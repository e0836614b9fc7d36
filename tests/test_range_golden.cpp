// Range mode (docs/numerics.md) against TensorFlow's own kernels:
// tests/data/range_golden.json came from tests/data/make_range_golden.py,
// which ran tf.quantization.fake_quant_with_min_max_vars, ..._per_channel and
// ..._args and their gradient ops on ties, their ulp neighbours, range ends,
// signed zeros, subnormals, NaN and ±Inf, for bits 2..16 and narrow_range
// both ways. Outputs, input gradients and d_min/d_max must match bit for bit
// (NaN payloads aside), through every lowbit op that quantizes with a range:
//
//   vars              fake_quant_range with one channel (division), in both
//                     mask formats; ema_fake_quant; bias_relu_ema_fake_quant
//   vars_per_channel  fake_quant_range per channel (multiplication)
//   args              the element math with RangeScaling::multiply
//
// on the CPU reference and, where there is a device, on the GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "both_sides.hpp"
#include "golden.hpp"
#include "lowbit/cuda.hpp"
#include "lowbit/element.hpp"
#include "lowbit/ref.hpp"
#include "lowbit/types.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

using test::DeviceOps;
using test::floats_from_bits;
using test::HostOps;
using test::matches;

struct RangeCase {
  std::string name;
  std::string op;  // vars, vars_per_channel or args
  RangeQuant quant;
  ChannelLayout layout;
  std::vector<float> min, max, x, dy;
  std::vector<float> y, dx, d_min, d_max;  // TensorFlow's
};

RangeCase parse_case(const nlohmann::json& c) {
  RangeCase g;
  g.name = c.at("name").get<std::string>();
  g.op = c.at("op").get<std::string>();
  g.quant = RangeQuant{c.at("bits").get<int>(), c.at("narrow_range").get<bool>()};
  const auto shape = c.at("shape").get<std::vector<std::int64_t>>();
  // TensorFlow's per-channel op takes [rows, d] with one range per column.
  g.layout = g.op == "vars_per_channel" ? ChannelLayout::per_channel(shape, 1)
                                        : ChannelLayout::per_tensor(shape.at(0));
  g.min = floats_from_bits(c.at("min_bits"));
  g.max = floats_from_bits(c.at("max_bits"));
  g.x = floats_from_bits(c.at("x_bits"));
  g.y = floats_from_bits(c.at("y_bits"));
  if (c.contains("dy_bits")) {
    g.dy = floats_from_bits(c.at("dy_bits"));
    g.dx = floats_from_bits(c.at("dx_bits"));
  }
  if (c.contains("d_min_bits")) {
    g.d_min = floats_from_bits(c.at("d_min_bits"));
    g.d_max = floats_from_bits(c.at("d_max_bits"));
  }
  return g;
}

std::vector<RangeCase> parse_list(const nlohmann::json& list) {
  std::vector<RangeCase> out;
  for (const auto& c : list) out.push_back(parse_case(c));
  return out;
}

const nlohmann::json& golden_doc() {
  static const nlohmann::json doc = test::load_golden("range_golden.json");
  return doc;
}

const std::vector<RangeCase>& golden_cases() {
  static const std::vector<RangeCase> cases = parse_list(golden_doc().at("cases"));
  return cases;
}

std::vector<const RangeCase*> cases_of(const std::string& op) {
  std::vector<const RangeCase*> out;
  for (const auto& g : golden_cases())
    if (g.op == op) out.push_back(&g);
  return out;
}

/// Poison for outputs, so an element left unwritten shows.
constexpr std::uint32_t kUnwritten = 0x7fc0deadu;

std::vector<float> unwritten(std::size_t n) {
  return std::vector<float>(n, test::float_from_bits(kUnwritten));
}

struct Result {
  std::vector<float> y, dx, d_min, d_max;
};

/// fake_quant_range with a sides mask, then ste_backward_range: y, dx and
/// d_min/d_max.
template <class Api>
Result run_sides(const RangeCase& g) {
  Api api;
  const std::size_t n = g.x.size();
  const auto channels = static_cast<std::size_t>(g.layout.channels);
  auto x = api.upload(g.x);
  auto dy = api.upload(g.dy);
  auto min = api.upload(g.min);
  auto max = api.upload(g.max);
  const std::vector<float> poison = unwritten(n);
  auto y = api.upload(poison);
  auto dx = api.upload(poison);
  const std::vector<float> channel_poison = unwritten(channels);
  auto d_min = api.upload(channel_poison);
  auto d_max = api.upload(channel_poison);
  auto mask = api.upload(std::vector<std::uint32_t>(mask_words(n, MaskFormat::sides)));
  auto ws = test::workspace_buffer(api, g.layout);
  api.fake_quant_range(x.data(), y.data(), g.layout, min.data(), max.data(), g.quant,
                       mask.data(), MaskFormat::sides);
  api.ste_backward_range(dy.data(), mask.data(), g.layout, dx.data(), d_min.data(), d_max.data(),
                         test::as_workspace(ws));
  return {api.download(y), api.download(dx), api.download(d_min), api.download(d_max)};
}

/// `forward(api, x, y, mask)` (an op that writes y and a pass mask), then
/// ste_backward: y and dx. Buffers the op needs besides those are its own.
template <class Api, class Forward>
Result run_with_pass_mask(const RangeCase& g, Forward forward) {
  Api api;
  const std::size_t n = g.x.size();
  auto x = api.upload(g.x);
  auto dy = api.upload(g.dy);
  const std::vector<float> poison = unwritten(n);
  auto y = api.upload(poison);
  auto dx = api.upload(poison);
  auto mask = api.upload(std::vector<std::uint32_t>(mask_words(n)));
  forward(api, x.data(), y.data(), mask.data());
  api.ste_backward(dy.data(), mask.data(), MaskFormat::pass, static_cast<std::int64_t>(n),
                   dx.data());
  Result r;
  r.y = api.download(y);
  r.dx = api.download(dx);
  return r;
}

/// fake_quant_range with a pass mask.
template <class Api>
Result run_pass(const RangeCase& g) {
  return run_with_pass_mask<Api>(g, [&](Api& api, const float* x, float* y, std::uint32_t* mask) {
    auto min = api.upload(g.min);
    auto max = api.upload(g.max);
    api.fake_quant_range(x, y, g.layout, min.data(), max.data(), g.quant, mask, MaskFormat::pass);
    api.download(min);  // keeps the buffers until the op has run
  });
}

/// An EMA state holding [min, max] that this call neither updates (frozen)
/// nor delays: the EMA ops then quantize with exactly that range.
EmaRangeState state_holding(float min, float max) {
  EmaRangeState s;
  s.min = min;
  s.max = max;
  s.steps = 1;
  s.updates = 1;
  return s;
}

EmaConfig frozen_config(RangeQuant quant, EmaMode mode) {
  EmaConfig config;
  config.quant = quant;
  config.mode = mode;
  config.freeze_step = 0;
  return config;
}

/// ema_fake_quant in `mode`.
template <class Api>
Result run_ema(const RangeCase& g, EmaMode mode) {
  return run_with_pass_mask<Api>(g, [&](Api& api, const float* x, float* y, std::uint32_t* mask) {
    auto state = api.upload(std::vector<EmaRangeState>{state_holding(g.min[0], g.max[0])});
    api.ema_fake_quant(x, y, g.layout.size(), state.data(), frozen_config(g.quant, mode), mask,
                       MaskFormat::pass, nullptr);
    api.download(state);
  });
}

/// bias_relu_ema_fake_quant without a bias: v = relu(x).
template <class Api>
Result run_fused(const RangeCase& g) {
  return run_with_pass_mask<Api>(g, [&](Api& api, const float* x, float* y, std::uint32_t* mask) {
    auto state = api.upload(std::vector<EmaRangeState>{state_holding(g.min[0], g.max[0])});
    api.bias_relu_ema_fake_quant(x, static_cast<const float*>(nullptr), g.layout, y, state.data(),
                                 frozen_config(g.quant, EmaMode::exact), mask, nullptr);
    api.download(state);
  });
}

/// What the fused op must give: TensorFlow's y and dx where x > 0 (there
/// relu(x) = x), and where x is NaN (NaN out, blocked gradient unless the
/// range is zero-width); the quantized 0 (+0) and a blocked gradient (dy·0)
/// where the ReLU clips.
Result fused_expectation(const RangeCase& g) {
  Result want{g.y, g.dx, {}, {}};
  for (std::size_t i = 0; i < g.x.size(); ++i) {
    if (g.x[i] > 0.0f) continue;
    if (!std::isnan(g.x[i])) want.y[i] = 0.0f;
    want.dx[i] = ste_gradient(g.dy[i], false);
  }
  return want;
}

::testing::AssertionResult same_result(const RangeCase& g, const Result& want,
                                       const Result& got) {
  for (const auto& check : {matches(g.name + " y", g.x, want.y, got.y),
                            matches(g.name + " dx", g.x, want.dx, got.dx),
                            matches(g.name + " d_min", {}, want.d_min, got.d_min),
                            matches(g.name + " d_max", {}, want.d_max, got.d_max)})
    if (!check) return check;
  return ::testing::AssertionSuccess();
}

Result tensorflow(const RangeCase& g, bool with_range_grads) {
  return {g.y, g.dx, with_range_grads ? g.d_min : std::vector<float>{},
          with_range_grads ? g.d_max : std::vector<float>{}};
}

template <class Api>
void check_fake_quant_range() {
  int checked = 0;
  for (const auto& op : {"vars", "vars_per_channel"}) {
    for (const RangeCase* g : cases_of(op)) {
      EXPECT_TRUE(same_result(*g, tensorflow(*g, true), run_sides<Api>(*g)));
      EXPECT_TRUE(same_result(*g, tensorflow(*g, false), run_pass<Api>(*g)));
      ++checked;
    }
  }
  EXPECT_GT(checked, 150);
}

template <class Api>
void check_ema_ops() {
  int checked = 0;
  for (const RangeCase* g : cases_of("vars")) {
    for (EmaMode mode : {EmaMode::exact, EmaMode::lagged})
      EXPECT_TRUE(same_result(*g, tensorflow(*g, false), run_ema<Api>(*g, mode)));
    EXPECT_TRUE(same_result(*g, fused_expectation(*g), run_fused<Api>(*g)));
    ++checked;
  }
  EXPECT_GT(checked, 100);
}

// ---------------------------------------------------------------------------

TEST(RangeGolden, DataCoversTheContract) {
  const auto& cases = golden_cases();
  std::vector<bool> widths(kMaxBits + 1, false), narrow(2, false);
  std::size_t ties_or_special = 0;
  for (const auto& g : cases) {
    ASSERT_EQ(g.layout.size(), static_cast<std::int64_t>(g.x.size())) << g.name;
    ASSERT_EQ(g.min.size(), static_cast<std::size_t>(g.layout.channels)) << g.name;
    ASSERT_EQ(g.y.size(), g.x.size()) << g.name;
    ASSERT_EQ(g.dx.size(), g.x.size()) << g.name;
    if (g.op != "args") {
      ASSERT_EQ(g.d_min.size(), g.min.size()) << g.name;
    }
    widths[g.quant.bits] = true;
    narrow[g.quant.narrow_range] = true;
    for (float v : g.x) ties_or_special += !std::isfinite(v) || (v != 0.0f && std::fabs(v) < FLT_MIN);
  }
  for (int bits = kMinBits; bits <= kMaxBits; ++bits) EXPECT_TRUE(widths[bits]) << bits;
  EXPECT_TRUE(narrow[0] && narrow[1]);
  EXPECT_GT(ties_or_special, 1000u);
  EXPECT_NE(golden_doc().at("generator").get<std::string>().find("tensorflow"), std::string::npos);
}

TEST(RangeGolden, CpuFakeQuantRangeMatchesTensorFlow) { check_fake_quant_range<HostOps>(); }

TEST(RangeGolden, CpuEmaOpsMatchTensorFlowPerTensor) { check_ema_ops<HostOps>(); }

// FakeQuantWithMinMaxArgs multiplies, as the per-channel kernel does.
TEST(RangeGolden, ElementMathMatchesTensorFlowArgs) {
  int checked = 0;
  for (const RangeCase* g : cases_of("args")) {
    const RangeParams p = nudge_range(g->min[0], g->max[0], g->quant.qmin(), g->quant.qmax());
    Result got{std::vector<float>(g->x.size()), std::vector<float>(g->x.size()), {}, {}};
    for (std::size_t i = 0; i < g->x.size(); ++i) {
      got.y[i] = fake_quant(g->x[i], p, RangeScaling::multiply);
      got.dx[i] = ste_gradient(g->dy[i], ste_pass(g->x[i], p));
    }
    EXPECT_TRUE(same_result(*g, tensorflow(*g, false), got));
    ++checked;
  }
  EXPECT_GT(checked, 50);
}

// The one documented difference in the outputs: for min == max != 0
// TensorFlow divides by a zero scale and returns NaN; lowbit returns +0.
TEST(RangeGolden, MinEqualsMaxIsTheDocumentedDifference) {
  const auto deviations = parse_list(golden_doc().at("deviations"));
  ASSERT_FALSE(deviations.empty());
  for (const auto& g : deviations) {
    ASSERT_NE(g.min[0], 0.0f);
    ASSERT_EQ(g.min[0], g.max[0]);
    std::vector<float> y(g.x.size());
    ref::fake_quant_range(g.x.data(), y.data(), g.layout, g.min.data(), g.max.data(), g.quant,
                          nullptr);
    for (std::size_t i = 0; i < g.x.size(); ++i) {
      EXPECT_TRUE(std::isnan(g.y[i])) << g.name << " TensorFlow [" << i << "]";
      EXPECT_EQ(test::bits_of(y[i]), 0u) << g.name << " lowbit [" << i << "]";
    }
  }
}

TEST(GpuRangeGolden, CudaFakeQuantRangeMatchesTensorFlow) {
  LOWBIT_REQUIRE_GPU();
  check_fake_quant_range<DeviceOps>();
}

TEST(GpuRangeGolden, CudaEmaOpsMatchTensorFlowPerTensor) {
  LOWBIT_REQUIRE_GPU();
  check_ema_ops<DeviceOps>();
}

}  // namespace
}  // namespace lowbit
