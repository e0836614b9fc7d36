// Layers and networks on the CPU reference: finite-difference gradients of
// whole networks (residual Add included), fake-quant layers bit-exact against
// the kernels they run, and the forward/backward call contract.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>

#include "lowbit/error.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/ref.hpp"
#include "nn/layers/layers.hpp"
#include "nn/network.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

std::vector<float> download_floats(Backend& b, const float* p, std::int64_t n) {
  std::vector<float> host(static_cast<std::size_t>(n));
  b.download(host.data(), p, host.size() * sizeof(float));
  return host;
}

/// Random images in [-1, 1] and labels; returns nothing, fills the network's input.
void feed_random_batch(Backend& b, Network& net, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> images(static_cast<std::size_t>(net.batch() * net.example_size()));
  for (float& v : images) v = u(rng);
  std::vector<std::int32_t> labels(static_cast<std::size_t>(net.batch()));
  for (auto& l : labels) l = static_cast<std::int32_t>(rng() % static_cast<unsigned>(net.classes()));
  b.upload(net.images(), images.data(), images.size() * sizeof(float));
  b.upload(net.labels(), labels.data(), labels.size() * sizeof(std::int32_t));
}

void expect_same_reports(const std::vector<QuantizerReport>& a,
                         const std::vector<QuantizerReport>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    SCOPED_TRACE(a[i].name);
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_TRUE(test::same_bits(a[i].min, b[i].min));
    EXPECT_TRUE(test::same_bits(a[i].max, b[i].max));
    EXPECT_TRUE(test::same_bits(a[i].step, b[i].step));
    EXPECT_EQ(a[i].quantized, b[i].quantized);
    EXPECT_EQ(a[i].clipped, b[i].clipped);
  }
}

double mean_loss(Backend& b, Network& net) {
  b.fill_zero(net.totals(), sizeof(LossTotals));
  net.forward(Pass::eval);
  LossTotals t;
  b.download(&t, net.totals(), sizeof(t));
  return t.loss_sum / static_cast<double>(t.examples);
}

/// Central differences of the mean loss for a spread of parameters.
void check_gradients(const Graph& graph, std::int64_t batch) {
  const auto backend = make_cpu_backend();
  Network net(graph, *backend, batch);
  net.initialize_parameters(3);
  feed_random_batch(*backend, net, 11);
  net.forward(Pass::train);
  net.backward();
  const std::vector<float> grads =
      download_floats(*backend, net.gradients(), net.parameter_count());
  std::vector<float> params = download_floats(*backend, net.parameters(), net.parameter_count());
  const std::size_t bytes = params.size() * sizeof(float);
  int checked = 0;
  for (const ParameterSlot& slot : net.parameter_slots()) {
    for (std::int64_t k = 0; k < slot.count; k += std::max<std::int64_t>(1, slot.count / 5)) {
      const std::size_t i = static_cast<std::size_t>(slot.offset + k);
      const float saved = params[i];
      const float h = 1e-3f;
      params[i] = saved + h;
      backend->upload(net.parameters(), params.data(), bytes);
      const double plus = mean_loss(*backend, net);
      params[i] = saved - h;
      backend->upload(net.parameters(), params.data(), bytes);
      const double minus = mean_loss(*backend, net);
      params[i] = saved;
      backend->upload(net.parameters(), params.data(), bytes);
      const double numeric = (plus - minus) / (2.0 * h);
      EXPECT_NEAR(grads[i], numeric, 2e-3 + 5e-2 * std::fabs(numeric))
          << slot.name << "[" << k << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 20);
}

TEST(Layers, LeNet5GradientsMatchFiniteDifferences) { check_gradients(lenet5(1, 12, 12, 4), 3); }

TEST(Layers, ResidualGradientsSumOverConsumers) {
  Graph g;
  const TensorId x = g.input("in", {2, 5, 5});
  const TensorId r1 = g.relu("r1", g.conv2d("c1", x, 3, 3, 1, 1));
  const TensorId c2 = g.conv2d("c2", r1, 3, 3, 1, 1);  // r1 feeds c2 and the Add
  const TensorId sum = g.relu("r2", g.add("add", r1, c2));
  g.softmax_cross_entropy("loss", g.linear("fc", g.flatten("flat", sum), 4));
  check_gradients(g, 2);
}

TEST(Layers, WeightFakeQuantIsBitExactWithTheKernel) {
  const auto backend = make_cpu_backend();
  const std::vector<std::int64_t> shape{6, 3, 5, 5};
  const std::vector<float> w = test::random_values(6 * 75, 5, 0.2f);
  Buffer x = backend->allocate(w.size() * 4), y = backend->allocate(w.size() * 4);
  Buffer dy = backend->allocate(w.size() * 4), dx = backend->allocate(w.size() * 4);
  backend->upload(x.data(), w.data(), w.size() * 4);
  FakeQuantAttrs attrs;
  attrs.weights = true;
  attrs.bits = 3;
  attrs.per_channel = attrs.symmetric = attrs.narrow_range = true;
  FakeQuantLayer layer("q", *backend, attrs, shape, {x.as<float>(), dx.as<float>()},
                       {y.as<float>(), dy.as<float>()}, {}, nullptr, nullptr, nullptr);
  layer.forward(Pass::train);

  const ChannelLayout layout = ChannelLayout::per_channel(shape, 0);
  std::vector<float> expected(w.size()), min(6), max(6);
  std::vector<std::uint32_t> mask(static_cast<std::size_t>(mask_words(layout.size())));
  std::vector<float> ws;
  ref::fake_quant_weights(w.data(), expected.data(), layout, {3, true}, true, min.data(),
                          max.data(), mask.data(), test::host_workspace(ws, layout));
  EXPECT_TRUE(test::same_bits(expected, download_floats(*backend, y.as<float>(), layout.size())));

  const std::vector<float> grad = test::random_values(static_cast<std::int64_t>(w.size()), 6, 1.0f);
  backend->upload(dy.data(), grad.data(), grad.size() * 4);
  layer.backward();
  std::vector<float> expected_dx(w.size());
  ref::ste_backward(grad.data(), mask.data(), MaskFormat::pass, layout.size(),
                    expected_dx.data());
  EXPECT_TRUE(
      test::same_bits(expected_dx, download_floats(*backend, dx.as<float>(), layout.size())));
}

// Groups of 30 in rows of 150 (G = 32): each group quantized alone, with its
// own symmetric range, on TensorFlow's per-channel grid (a multiplication).
TEST(Layers, GroupedWeightFakeQuantQuantizesEachGroupOnItsOwn) {
  const auto backend = make_cpu_backend();
  const std::vector<std::int64_t> shape{4, 6, 5, 5};
  const std::int64_t n = 4 * 150, group = 30;
  std::vector<float> w = test::random_values(n, 21, 0.2f);
  w[7] = 3.0f;  // one outlier: only its group's range widens
  Buffer x = backend->allocate(n * 4), y = backend->allocate(n * 4);
  Buffer dy = backend->allocate(n * 4), dx = backend->allocate(n * 4);
  backend->upload(x.data(), w.data(), n * 4);
  FakeQuantAttrs attrs;
  attrs.weights = attrs.per_channel = attrs.symmetric = attrs.narrow_range = true;
  attrs.bits = 4;
  attrs.group = 32;
  FakeQuantLayer layer("q", *backend, attrs, shape, {x.as<float>(), dx.as<float>()},
                       {y.as<float>(), dy.as<float>()}, {}, nullptr, nullptr, nullptr);
  layer.forward(Pass::train);
  const std::vector<float> got = download_floats(*backend, y.as<float>(), n);

  std::vector<float> expected(static_cast<std::size_t>(n)), ws;
  std::vector<float> group_min(static_cast<std::size_t>(n / group));
  std::vector<float> group_max(group_min.size());
  for (std::int64_t g = 0; g < n / group; ++g) {
    const float* first = w.data() + g * group;
    float min = 0.0f, max = 0.0f;
    const ChannelLayout alone = ChannelLayout::per_tensor(group);
    ref::weight_range(first, alone, true, &min, &max, test::host_workspace(ws, alone));
    const RangeParams p = nudge_range(min, max, 1, 15);
    for (std::int64_t i = 0; i < group; ++i)
      expected[static_cast<std::size_t>(g * group + i)] =
          fake_quant(first[i], p, RangeScaling::multiply);
    group_min[static_cast<std::size_t>(g)] = min;
    group_max[static_cast<std::size_t>(g)] = max;
  }
  EXPECT_TRUE(test::same_bits(expected, got));
  const std::vector<float> ranges = download_floats(*backend, layer.weight_range(), 2 * n / group);
  EXPECT_TRUE(
      test::same_bits(group_min, std::vector<float>(ranges.begin(), ranges.begin() + n / group)));
  EXPECT_TRUE(
      test::same_bits(group_max, std::vector<float>(ranges.begin() + n / group, ranges.end())));

  // Per channel, the outlier coarsens all of row 0: the groups must differ there.
  std::vector<float> per_channel(static_cast<std::size_t>(n)), min(4), max(4);
  std::vector<std::uint32_t> mask(static_cast<std::size_t>(mask_words(n)));
  const ChannelLayout rows = ChannelLayout::per_channel(shape, 0);
  ref::fake_quant_weights(w.data(), per_channel.data(), rows, {4, true}, true, min.data(),
                          max.data(), mask.data(), test::host_workspace(ws, rows));
  EXPECT_FALSE(test::same_bits(per_channel, got));
}

TEST(Layers, GroupedLsqWeightsLearnOneStepPerGroup) {
  const auto backend = make_cpu_backend();
  const std::vector<std::int64_t> shape{3, 84};  // rows of 84 in groups of 28 (G = 32)
  const std::int64_t n = 3 * 84, group = 28, groups = n / group;
  std::vector<float> w = test::random_values(n, 22, 0.2f);
  for (std::int64_t i = 0; i < group; ++i) w[static_cast<std::size_t>(group + i)] *= 10.0f;
  Buffer x = backend->allocate(n * 4), y = backend->allocate(n * 4);
  Buffer dy = backend->allocate(n * 4), dx = backend->allocate(n * 4);
  Buffer scale = backend->allocate(groups * 4), d_scale = backend->allocate(groups * 4);
  backend->upload(x.data(), w.data(), n * 4);
  FakeQuantAttrs attrs;
  attrs.weights = attrs.per_channel = attrs.symmetric = true;
  attrs.range = RangeMode::lsq;
  attrs.bits = 2;
  attrs.group = 32;
  FakeQuantLayer layer("q", *backend, attrs, shape, {x.as<float>(), dx.as<float>()},
                       {y.as<float>(), dy.as<float>()}, {scale.as<float>(), d_scale.as<float>()},
                       nullptr, nullptr, nullptr);
  layer.forward(Pass::calibrate);
  const std::vector<float> steps = download_floats(*backend, scale.as<float>(), groups);
  const std::vector<float> got = download_floats(*backend, y.as<float>(), n);
  const LsqQuant grid = LsqQuant::signed_bits(2);
  for (std::int64_t g = 0; g < groups; ++g) {
    float sum = 0.0f;
    for (std::int64_t i = 0; i < group; ++i)
      sum += std::fabs(w[static_cast<std::size_t>(g * group + i)]);
    EXPECT_FLOAT_EQ(steps[static_cast<std::size_t>(g)], lsq_initial_scale(sum, group, grid.qmax))
        << "group " << g;
    const LsqParams p = make_lsq(steps[static_cast<std::size_t>(g)], grid.qmin, grid.qmax);
    for (std::int64_t i = 0; i < group; ++i) {
      const std::size_t k = static_cast<std::size_t>(g * group + i);
      EXPECT_EQ(got[k], fake_quant(w[k], p)) << "element " << k;
    }
  }
  EXPECT_GT(steps[1], 5.0f * steps[0]) << "the scaled group must take its own step";
}

TEST(Layers, PyTorchWeightFakeQuantIsBitExactWithTheKernels) {
  const auto backend = make_cpu_backend();
  const std::vector<std::int64_t> shape{4, 30};
  const std::vector<float> w = test::random_values(120, 8, 0.3f);
  Buffer x = backend->allocate(w.size() * 4), y = backend->allocate(w.size() * 4);
  Buffer dy = backend->allocate(w.size() * 4);
  backend->upload(x.data(), w.data(), w.size() * 4);
  FakeQuantAttrs attrs;
  attrs.weights = attrs.per_channel = attrs.symmetric = true;
  attrs.bits = 4;
  attrs.rounding = Rounding::pytorch;
  FakeQuantLayer layer("q", *backend, attrs, shape, {x.as<float>(), nullptr},
                       {y.as<float>(), dy.as<float>()}, {}, nullptr, nullptr, nullptr);
  layer.forward(Pass::train);

  // PyTorch's per-channel symmetric qint4: scale from max|w|, zero point 0.
  const ChannelLayout layout = ChannelLayout::per_channel(shape, 0);
  std::vector<float> min(4), max(4), scale(4), expected(w.size()), ws;
  std::vector<std::int32_t> zero_point(4);
  ref::weight_range(w.data(), layout, true, min.data(), max.data(), test::host_workspace(ws, layout));
  const AffineQuant grid = AffineQuant::signed_bits(4);
  ref::affine_params_from_range(min.data(), max.data(), 4, grid, true, scale.data(),
                                zero_point.data());
  ref::fake_quant_affine(w.data(), expected.data(), layout, scale.data(), zero_point.data(), grid,
                         nullptr);
  EXPECT_TRUE(test::same_bits(expected, download_floats(*backend, y.as<float>(), 120)));
}

// TensorFlow's quant_delay holds back the weights too: they pass through, and
// so does their gradient, until the step count reaches the delay.
TEST(Layers, DelayedWeightFakeQuantPassesWeightsThroughUntilTheDelay) {
  const auto backend = make_cpu_backend();
  const std::vector<std::int64_t> shape{4, 3, 5, 5};
  const std::int64_t n = 4 * 75;
  const std::vector<float> w = test::random_values(n, 12, 0.3f);
  const std::vector<float> grad = test::random_values(n, 13, 1.0f);
  Buffer x = backend->allocate(n * 4), y = backend->allocate(n * 4);
  Buffer dy = backend->allocate(n * 4), dx = backend->allocate(n * 4);
  Buffer steps = backend->allocate(sizeof(std::int64_t));
  backend->upload(x.data(), w.data(), n * 4);
  backend->upload(dy.data(), grad.data(), n * 4);
  FakeQuantAttrs attrs;
  attrs.weights = attrs.per_channel = attrs.symmetric = attrs.narrow_range = true;
  attrs.bits = 2;
  attrs.quant_delay = 2;
  FakeQuantLayer layer("q", *backend, attrs, shape, {x.as<float>(), dx.as<float>()},
                       {y.as<float>(), dy.as<float>()}, {}, nullptr, steps.as<std::int64_t>(),
                       nullptr);
  const ChannelLayout layout = ChannelLayout::per_channel(shape, 0);
  std::vector<float> quantized(w.size()), min(4), max(4), ws;
  std::vector<std::uint32_t> mask(static_cast<std::size_t>(mask_words(n)));
  ref::fake_quant_weights(w.data(), quantized.data(), layout, {2, true}, true, min.data(),
                          max.data(), mask.data(), test::host_workspace(ws, layout));
  std::vector<float> quantized_dx(w.size());
  ref::ste_backward(grad.data(), mask.data(), MaskFormat::pass, n, quantized_dx.data());
  ASSERT_FALSE(test::same_bits(quantized, w)) << "2-bit weights must differ from float ones";

  for (const std::int64_t done : {0, 1, 2, 7}) {
    backend->upload(steps.data(), &done, sizeof done);
    layer.forward(Pass::train);
    layer.backward();
    const bool delayed = done < attrs.quant_delay;
    EXPECT_TRUE(
        test::same_bits(delayed ? w : quantized, download_floats(*backend, y.as<float>(), n)))
        << done << " steps done";
    EXPECT_TRUE(test::same_bits(delayed ? grad : quantized_dx,
                                download_floats(*backend, dx.as<float>(), n)))
        << done << " steps done";
  }
}

// Until the quant delay ends, a quantized network computes exactly what the
// float one does, weights included, in training and in evaluation; the steps
// it counts end the delay.
TEST(Layers, QuantizedNetworkEqualsTheFloatOneDuringTheDelay) {
  const auto backend = make_cpu_backend();
  QuantizeOptions o;
  o.quant_delay = 2;
  Network quantized(quantize(lenet5(1, 12, 12, 5), o), *backend, 3);
  Network plain(lenet5(1, 12, 12, 5), *backend, 3);
  const auto loss_of = [&](Network& net, std::uint32_t seed, Pass pass) {
    net.initialize_parameters(4);  // the same weights every step: only the delay differs
    feed_random_batch(*backend, net, seed);
    backend->fill_zero(net.totals(), sizeof(LossTotals));
    net.forward(pass);
    LossTotals t;
    backend->download(&t, net.totals(), sizeof(t));
    return t.loss_sum;
  };
  EXPECT_EQ(loss_of(quantized, 49, Pass::eval), loss_of(plain, 49, Pass::eval));
  for (std::uint32_t step = 0; step < 3; ++step) {
    const double q = loss_of(quantized, 50 + step, Pass::train);
    const double f = loss_of(plain, 50 + step, Pass::train);
    if (step < 2)
      EXPECT_EQ(q, f) << "step " << step << " is within the delay";
    else
      EXPECT_NE(q, f) << "step " << step << " quantizes";
  }
  EXPECT_NE(loss_of(quantized, 60, Pass::eval), loss_of(plain, 60, Pass::eval));
}

// ... and counts what its training passes clip, and nothing in evaluation.
TEST(Layers, EmaFakeQuantTracksTrainingAndFreezesInEvaluation) {
  const auto backend = make_cpu_backend();
  const std::int64_t n = 4 * 37;
  Buffer x = backend->allocate(n * 4), y = backend->allocate(n * 4), dy = backend->allocate(n * 4);
  Buffer state = backend->allocate(sizeof(EmaRangeState));
  Buffer clips = backend->allocate(sizeof(ClipCount));
  backend->ema_state_init(state.as<EmaRangeState>());
  backend->fill_zero(clips.data(), sizeof(ClipCount));
  FakeQuantAttrs attrs;
  attrs.bits = 4;
  attrs.ema_decay = 0.9f;
  attrs.quant_delay = 1;
  FakeQuantLayer layer("q", *backend, attrs, {4, 37}, {x.as<float>(), nullptr},
                       {y.as<float>(), dy.as<float>()}, {}, state.as<EmaRangeState>(), nullptr,
                       clips.as<ClipCount>());
  EmaRangeState expected_state;
  ref::ema_state_init(&expected_state);
  ClipCount expected_clips;
  EmaConfig config;
  config.quant = {4, false};
  config.decay = 0.9f;
  config.quant_delay = 1;
  for (std::uint32_t step = 0; step < 3; ++step) {
    const std::vector<float> batch = test::random_values(n, 20 + step, 2.0f);
    backend->upload(x.data(), batch.data(), n * 4);
    layer.forward(Pass::train);
    std::vector<float> expected(static_cast<std::size_t>(n));
    ref::ema_fake_quant(batch.data(), expected.data(), n, &expected_state, config, nullptr,
                        MaskFormat::pass, &expected_clips);
    EXPECT_TRUE(test::same_bits(expected, download_floats(*backend, y.as<float>(), n))) << step;
  }
  // Steps 1 and 2 quantized (step 0 was the delay); the EMA lags the batch extremes.
  EXPECT_EQ(expected_clips.quantized, static_cast<unsigned long long>(2 * n));
  EXPECT_GT(expected_clips.clipped, 0u);
  EmaRangeState before;
  backend->download(&before, state.data(), sizeof(before));
  const std::vector<float> batch = test::random_values(n, 99, 9.0f);
  backend->upload(x.data(), batch.data(), n * 4);
  layer.forward(Pass::eval);
  EmaRangeState after;
  backend->download(&after, state.data(), sizeof(after));
  EXPECT_EQ(std::memcmp(&before, &after, sizeof(before)), 0) << "eval changed the range";
  EXPECT_EQ(after.min, expected_state.min);
  EXPECT_EQ(after.max, expected_state.max);
  EXPECT_EQ(after.steps, 3);
  ClipCount counted;  // the 9.0-wide eval batch would have clipped much
  backend->download(&counted, clips.data(), sizeof(counted));
  EXPECT_EQ(counted.quantized, expected_clips.quantized);
  EXPECT_EQ(counted.clipped, expected_clips.clipped);
}

/// Fused layers (Conv2d/Linear + ReLU + EMA fake quant in one kernel) give the
/// same bits as running every node on its own: losses, gradients, ranges.
TEST(Layers, FusedLayersEqualSeparateNodes) {
  for (const RangeMode mode : {RangeMode::ema, RangeMode::lagged}) {
    QuantizeOptions o;
    o.range = mode;
    o.quant_delay = 2;
    const Graph graph = quantize(lenet5(1, 12, 12, 5), o);
    const auto backend = make_cpu_backend();
    Network fused(graph, *backend, 3, true), separate(graph, *backend, 3, false);
    fused.initialize_parameters(9);
    separate.initialize_parameters(9);
    for (std::uint32_t step = 0; step < 4; ++step) {
      for (Network* net : {&fused, &separate}) {
        feed_random_batch(*backend, *net, 40 + step);
        backend->fill_zero(net->totals(), sizeof(LossTotals));
        net->forward(Pass::train);
        net->backward();
      }
      EXPECT_TRUE(test::same_bits(
          download_floats(*backend, separate.gradients(), separate.parameter_count()),
          download_floats(*backend, fused.gradients(), fused.parameter_count())))
          << to_string(mode) << " step " << step;
      LossTotals a, b;
      backend->download(&a, separate.totals(), sizeof(a));
      backend->download(&b, fused.totals(), sizeof(b));
      EXPECT_EQ(a.loss_sum, b.loss_sum);
      const std::size_t states = fused.ema_state_names().size();
      std::vector<EmaRangeState> sa(states), sb(states);
      backend->download(sa.data(), separate.ema_states(), states * sizeof(EmaRangeState));
      backend->download(sb.data(), fused.ema_states(), states * sizeof(EmaRangeState));
      EXPECT_EQ(std::memcmp(sa.data(), sb.data(), states * sizeof(EmaRangeState)), 0);
      expect_same_reports(separate.quantizer_reports(), fused.quantizer_reports());
    }
  }
}

// quantizer_reports() reads each quantizer's own state: weight ranges are
// those of the weights, LSQ steps the scale parameters, and the clip counts
// take training passes only, until reset.
TEST(Layers, QuantizerReportsReadTheQuantizersState) {
  const auto backend = make_cpu_backend();
  for (const RangeMode mode : {RangeMode::ema, RangeMode::lsq}) {
    SCOPED_TRACE(to_string(mode));
    QuantizeOptions o;
    o.range = mode;
    o.quant_delay = 0;
    const Graph graph = quantize(lenet5(1, 12, 12, 5), o);
    Network net(graph, *backend, 3);
    net.initialize_parameters(5);
    feed_random_batch(*backend, net, 7);
    net.forward(mode == RangeMode::lsq ? Pass::calibrate : Pass::eval);
    net.reset_clip_counts();
    net.forward(Pass::train);
    net.forward(Pass::train);
    net.forward(Pass::eval);

    const std::vector<float> params =
        download_floats(*backend, net.parameters(), net.parameter_count());
    const auto slot = [&](const std::string& name) {
      for (const ParameterSlot& s : net.parameter_slots())
        if (s.name == name) return s;
      ADD_FAILURE() << "no parameter " << name;
      return ParameterSlot{};
    };
    const std::vector<QuantizerReport> reports = net.quantizer_reports();
    std::size_t count = 0;
    for (const Node& node : graph.nodes()) {
      if (node.kind != NodeKind::fake_quant) continue;
      ASSERT_LT(count, reports.size());
      const QuantizerReport& r = reports[count++];
      SCOPED_TRACE(node.name);
      EXPECT_EQ(r.name, node.name);
      if (mode == RangeMode::lsq) {
        const ParameterSlot s = slot(node.name + ".scale");
        EXPECT_TRUE(test::same_bits(
            r.step, {params.begin() + s.offset, params.begin() + s.offset + s.count}));
        EXPECT_TRUE(r.min.empty());
      } else if (r.weights) {  // symmetric per channel: ±max|w| of each output channel
        const std::string layer = node.name.substr(0, node.name.find('/'));
        const ParameterSlot w = slot(layer + ".weight");
        const std::int64_t per_channel = w.count / w.shape[0];
        ASSERT_EQ(r.max.size(), static_cast<std::size_t>(w.shape[0]));
        for (std::int64_t c = 0; c < w.shape[0]; ++c) {
          float biggest = 0.0f;
          for (std::int64_t k = 0; k < per_channel; ++k)
            biggest = std::max(biggest, std::fabs(params[w.offset + c * per_channel + k]));
          EXPECT_EQ(r.max[c], biggest) << "channel " << c;
          EXPECT_EQ(r.min[c], -biggest) << "channel " << c;
        }
      } else {
        ASSERT_EQ(r.min.size(), 1u);
        EXPECT_LE(r.min[0], 0.0f);
        EXPECT_GT(r.max[0], 0.0f);
      }
      if (r.weights) {
        EXPECT_EQ(r.quantized, 0u);
      } else {
        const auto elements = 2 * net.batch() * graph.tensor(node.outputs[0]).size();
        EXPECT_EQ(r.quantized, static_cast<unsigned long long>(elements));
        EXPECT_LE(r.clipped, r.quantized);
      }
    }
    EXPECT_EQ(count, reports.size());
    net.reset_clip_counts();
    for (const QuantizerReport& r : net.quantizer_reports()) EXPECT_EQ(r.quantized, 0u);
  }
}

TEST(Layers, GroupedWeightReportsHoldOneRangeOrStepPerGroup) {
  const auto backend = make_cpu_backend();
  // lenet5 on 12x12 images: rows of 25, 150, 16, 120 and 84 weights.
  const std::map<std::string, std::int64_t> group = {
      {"conv1", 25}, {"conv2", 30}, {"fc1", 16}, {"fc2", 30}, {"fc3", 28}};
  for (const RangeMode mode : {RangeMode::ema, RangeMode::lsq}) {
    SCOPED_TRACE(to_string(mode));
    QuantizeOptions o;
    o.range = mode;
    o.quant_delay = 0;
    o.weight_group = 32;
    const Graph graph = quantize(lenet5(1, 12, 12, 5), o);
    Network net(graph, *backend, 3);
    net.initialize_parameters(5);
    feed_random_batch(*backend, net, 7);
    net.forward(mode == RangeMode::lsq ? Pass::calibrate : Pass::eval);
    const std::vector<float> params =
        download_floats(*backend, net.parameters(), net.parameter_count());
    std::size_t weight_reports = 0;
    for (const QuantizerReport& r : net.quantizer_reports()) {
      SCOPED_TRACE(r.name);
      if (!r.weights) {
        EXPECT_EQ(r.group, 0);
        continue;
      }
      ++weight_reports;
      const std::string layer = r.name.substr(0, r.name.find('/'));
      const std::int64_t size = group.at(layer);
      EXPECT_EQ(r.group, size);
      ParameterSlot w;
      for (const ParameterSlot& s : net.parameter_slots())
        if (s.name == layer + ".weight") w = s;
      const std::size_t groups = static_cast<std::size_t>(w.count / size);
      if (mode == RangeMode::lsq) {
        EXPECT_EQ(r.step.size(), groups);
        continue;
      }
      ASSERT_EQ(r.max.size(), groups);
      for (std::size_t g = 0; g < groups; ++g) {
        float biggest = 0.0f;
        for (std::int64_t k = 0; k < size; ++k)
          biggest = std::max(biggest, std::fabs(params[w.offset + g * size + k]));
        EXPECT_EQ(r.max[g], biggest) << "group " << g;
        EXPECT_EQ(r.min[g], -biggest) << "group " << g;
      }
    }
    EXPECT_EQ(weight_reports, 5u);
  }
}

TEST(Layers, BackwardNeedsATrainingForward) {
  const auto backend = make_cpu_backend();
  Network net(quantize(lenet5(1, 12, 12, 3), {}), *backend, 2);
  net.initialize_parameters(1);
  EXPECT_THROW(net.backward(), Error);
  net.forward(Pass::eval);
  EXPECT_THROW(net.backward(), Error);
  net.forward(Pass::train);
  EXPECT_NO_THROW(net.backward());
  EXPECT_THROW(net.backward(), Error);  // once per forward
}

TEST(Layers, ParametersAreFlatWithScalesLast) {
  const auto backend = make_cpu_backend();
  QuantizeOptions o;
  o.range = RangeMode::lsq;
  Network net(quantize(lenet5(), o), *backend, 1);
  EXPECT_EQ(net.decayed_count(), 61706);
  // One step size per activation quantizer and per output channel of the weights.
  EXPECT_EQ(net.parameter_count(), 61706 + 5 + (6 + 16 + 120 + 84 + 10));
  EXPECT_EQ(net.parameter_slots().back().name, "fc3/act_quant.scale");
  EXPECT_TRUE(net.ema_state_names().empty());
  Network ema(quantize(lenet5(), {}), *backend, 1);
  EXPECT_EQ(ema.ema_state_names().size(), 5u);
  EXPECT_EQ(ema.parameter_count(), 61706);
}

TEST(Layers, InitializationFollowsPyTorchBounds) {
  const auto backend = make_cpu_backend();
  Network net(lenet5(), *backend, 1);
  net.initialize_parameters(42);
  const std::vector<float> p = download_floats(*backend, net.parameters(), net.parameter_count());
  for (const ParameterSlot& slot : net.parameter_slots()) {
    const std::int64_t fan_in = slot.name.rfind("conv1", 0) == 0 ? 25
                                : slot.name.rfind("conv2", 0) == 0 ? 150
                                : slot.name.rfind("fc1", 0) == 0   ? 400
                                : slot.name.rfind("fc2", 0) == 0   ? 120
                                                                   : 84;
    const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
    float largest = 0.0f;
    for (std::int64_t k = 0; k < slot.count; ++k)
      largest = std::max(largest, std::fabs(p[static_cast<std::size_t>(slot.offset + k)]));
    EXPECT_LE(largest, bound) << slot.name;
    if (slot.count > 100) {
      EXPECT_GT(largest, 0.9f * bound) << slot.name;
    }
  }
  Network again(lenet5(), *backend, 1);
  again.initialize_parameters(42);
  EXPECT_TRUE(test::same_bits(p, download_floats(*backend, again.parameters(), again.parameter_count())));
}

}  // namespace
}  // namespace lowbit

namespace lowbit {
namespace {

/// The whole float network on the GPU against the CPU: cuDNN and cuBLAS sum in
/// other orders than the CPU's loops, so losses and gradients agree to a
/// stated tolerance (1e-4 relative), not bit for bit.
TEST(GpuLayers, FloatNetworkMatchesTheCpu) {
  LOWBIT_REQUIRE_GPU();
  const auto cpu = make_cpu_backend();
  const auto gpu = make_cuda_backend();
  const Graph graph = lenet5();
  Network a(graph, *cpu, 16), b(graph, *gpu, 16);
  a.initialize_parameters(5);
  b.initialize_parameters(5);
  for (auto [backend, net] : {std::pair{cpu.get(), &a}, std::pair{gpu.get(), &b}}) {
    feed_random_batch(*backend, *net, 77);
    backend->fill_zero(net->totals(), sizeof(LossTotals));
    net->forward(Pass::train);
    net->backward();
  }
  LossTotals ta, tb;
  cpu->download(&ta, a.totals(), sizeof(ta));
  gpu->download(&tb, b.totals(), sizeof(tb));
  EXPECT_NEAR(ta.loss_sum, tb.loss_sum, 1e-4 * std::fabs(ta.loss_sum));
  const std::vector<float> ga = download_floats(*cpu, a.gradients(), a.parameter_count());
  const std::vector<float> gb = download_floats(*gpu, b.gradients(), b.parameter_count());
  double scale = 0.0;
  for (const float g : ga) scale = std::max(scale, static_cast<double>(std::fabs(g)));
  for (std::size_t i = 0; i < ga.size(); ++i)
    ASSERT_NEAR(ga[i], gb[i], 1e-4 * scale) << "gradient " << i;
}

// Per-group weights run the per-channel kernels on the group layout: the GPU
// gives the CPU's bits, forward and backward, for ranges and learned steps.
TEST(GpuLayers, GroupedWeightFakeQuantMatchesTheCpu) {
  LOWBIT_REQUIRE_GPU();
  const auto cpu = make_cpu_backend();
  const auto gpu = make_cuda_backend();
  const std::vector<std::int64_t> shape{16, 6, 5, 5};  // rows of 150 in groups of 30
  const std::int64_t n = 16 * 150, groups = n / 30;
  const std::vector<float> w = test::random_values(n, 31, 0.2f);
  const std::vector<float> grad = test::random_values(n, 32, 1.0f);
  for (const RangeMode mode : {RangeMode::ema, RangeMode::lsq}) {
    SCOPED_TRACE(to_string(mode));
    FakeQuantAttrs attrs;
    attrs.weights = attrs.per_channel = attrs.symmetric = true;
    attrs.narrow_range = mode != RangeMode::lsq;
    attrs.range = mode;
    attrs.bits = 4;
    attrs.group = 32;
    std::vector<std::vector<float>> results[2];
    int side = 0;
    for (Backend* b : {cpu.get(), gpu.get()}) {
      Buffer x = b->allocate(n * 4), y = b->allocate(n * 4);
      Buffer dy = b->allocate(n * 4), dx = b->allocate(n * 4);
      Buffer scale = b->allocate(groups * 4), d_scale = b->allocate(groups * 4);
      b->upload(x.data(), w.data(), n * 4);
      b->upload(dy.data(), grad.data(), n * 4);
      const Binding steps =
          mode == RangeMode::lsq ? Binding{scale.as<float>(), d_scale.as<float>()} : Binding{};
      FakeQuantLayer layer("q", *b, attrs, shape, {x.as<float>(), dx.as<float>()},
                           {y.as<float>(), dy.as<float>()}, steps, nullptr, nullptr, nullptr);
      layer.forward(mode == RangeMode::lsq ? Pass::calibrate : Pass::eval);
      layer.forward(Pass::train);
      layer.backward();
      results[side].push_back(download_floats(*b, y.as<float>(), n));
      results[side].push_back(download_floats(*b, dx.as<float>(), n));
      if (mode == RangeMode::lsq) {
        results[side].push_back(download_floats(*b, scale.as<float>(), groups));
        results[side].push_back(download_floats(*b, d_scale.as<float>(), groups));
      }
      ++side;
    }
    ASSERT_EQ(results[0].size(), results[1].size());
    for (std::size_t k = 0; k < results[0].size(); ++k)
      EXPECT_TRUE(test::same_bits(results[0][k], results[1][k])) << "output " << k;
  }
}

}  // namespace
}  // namespace lowbit
