// quantize(): the tf.contrib.quantize rewrite, node by node.
#include <gtest/gtest.h>

#include "lowbit/error.hpp"
#include "lowbit/quantize.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

struct Expected {
  std::string name;
  NodeKind kind;
  std::vector<std::string> inputs;
};

void expect_nodes(const Graph& g, const std::vector<Expected>& expected) {
  ASSERT_EQ(g.nodes().size(), expected.size()) << g.describe();
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const Node& node = g.nodes()[i];
    EXPECT_EQ(node.name, expected[i].name) << "node " << i << "\n" << g.describe();
    EXPECT_EQ(node.kind, expected[i].kind) << node.name;
    std::vector<std::string> inputs;
    for (const TensorId t : node.inputs) inputs.push_back(g.tensor(t).name);
    EXPECT_EQ(inputs, expected[i].inputs) << node.name;
  }
}

const FakeQuantAttrs& quant_attrs(const Graph& g, const std::string& name) {
  const int i = g.find_node(name);
  EXPECT_GE(i, 0) << name;
  return std::get<FakeQuantAttrs>(g.nodes()[static_cast<std::size_t>(i)].attrs);
}

constexpr NodeKind FQ = NodeKind::fake_quant;

TEST(Quantize, LeNet5NodeByNode) {
  QuantizeOptions o;  // 4/4 bits, per-channel symmetric weights, EMA activations
  o.quant_delay = 7;
  const Graph g = quantize(lenet5(), o);
  expect_nodes(g, {
      {"input", NodeKind::input, {}},
      {"conv1/weight_quant", FQ, {"conv1.weight"}},
      {"conv1", NodeKind::conv2d, {"input.images", "conv1/weight_quant.out", "conv1.bias"}},
      {"relu1", NodeKind::relu, {"conv1.out"}},
      {"relu1/act_quant", FQ, {"relu1.out"}},
      {"pool1", NodeKind::max_pool2d, {"relu1/act_quant.out"}},
      {"conv2/weight_quant", FQ, {"conv2.weight"}},
      {"conv2", NodeKind::conv2d, {"pool1.out", "conv2/weight_quant.out", "conv2.bias"}},
      {"relu2", NodeKind::relu, {"conv2.out"}},
      {"relu2/act_quant", FQ, {"relu2.out"}},
      {"pool2", NodeKind::max_pool2d, {"relu2/act_quant.out"}},
      {"flatten", NodeKind::flatten, {"pool2.out"}},
      {"fc1/weight_quant", FQ, {"fc1.weight"}},
      {"fc1", NodeKind::linear, {"flatten.out", "fc1/weight_quant.out", "fc1.bias"}},
      {"relu3", NodeKind::relu, {"fc1.out"}},
      {"relu3/act_quant", FQ, {"relu3.out"}},
      {"fc2/weight_quant", FQ, {"fc2.weight"}},
      {"fc2", NodeKind::linear, {"relu3/act_quant.out", "fc2/weight_quant.out", "fc2.bias"}},
      {"relu4", NodeKind::relu, {"fc2.out"}},
      {"relu4/act_quant", FQ, {"relu4.out"}},
      {"fc3/weight_quant", FQ, {"fc3.weight"}},
      {"fc3", NodeKind::linear, {"relu4/act_quant.out", "fc3/weight_quant.out", "fc3.bias"}},
      {"fc3/act_quant", FQ, {"fc3.out"}},  // no activation follows: the layer output
      {"loss", NodeKind::softmax_cross_entropy, {"fc3/act_quant.out", "input.labels"}},
  });
  const FakeQuantAttrs& w = quant_attrs(g, "conv2/weight_quant");
  EXPECT_TRUE(w.weights && w.per_channel && w.symmetric && w.narrow_range);
  EXPECT_EQ(w.bits, 4);
  EXPECT_EQ(w.quant_delay, 7) << "TensorFlow's quant_delay holds back weights too";
  EXPECT_EQ(g.tensor(g.nodes()[6].outputs[0]).role, TensorRole::derived);
  const FakeQuantAttrs& a = quant_attrs(g, "relu1/act_quant");
  EXPECT_FALSE(a.weights);
  EXPECT_FALSE(a.is_signed);
  EXPECT_EQ(a.range, RangeMode::ema);
  EXPECT_EQ(a.quant_delay, 7);
  EXPECT_FLOAT_EQ(a.ema_decay, 0.999f);
  EXPECT_TRUE(quant_attrs(g, "fc3/act_quant").is_signed);
  EXPECT_EQ(quant_attrs(g, "fc3/act_quant").bits, 8) << "logits keep output_bits";
  EXPECT_EQ(quant_attrs(g, "relu4/act_quant").bits, 4);
  o.output_bits = -1;
  EXPECT_EQ(quant_attrs(quantize(lenet5(), o), "fc3/act_quant").bits, 4);
}

/// in -> c1 -> r1 -> p1 -> c2 -> add(p1, c2) -> r2 -> flatten -> fc -> loss
Graph residual_net() {
  Graph g;
  TensorId x = g.input("in", {1, 6, 6});
  const TensorId p1 = g.max_pool2d("p1", g.relu("r1", g.conv2d("c1", x, 4, 3, 1, 1)), 1, 1);
  const TensorId c2 = g.conv2d("c2", p1, 4, 3, 1, 1);
  x = g.relu("r2", g.add("add", p1, c2));
  g.softmax_cross_entropy("loss", g.linear("fc", g.flatten("flat", x), 10));
  return g;
}

TEST(Quantize, ResidualAddQuantizesBothInputsOnce) {
  const Graph g = quantize(residual_net(), {});
  expect_nodes(g, {
      {"in", NodeKind::input, {}},
      {"c1/weight_quant", FQ, {"c1.weight"}},
      {"c1", NodeKind::conv2d, {"in.images", "c1/weight_quant.out", "c1.bias"}},
      {"r1", NodeKind::relu, {"c1.out"}},
      {"r1/act_quant", FQ, {"r1.out"}},
      {"p1", NodeKind::max_pool2d, {"r1/act_quant.out"}},
      {"c2/weight_quant", FQ, {"c2.weight"}},
      {"c2", NodeKind::conv2d, {"p1.out", "c2/weight_quant.out", "c2.bias"}},
      {"c2/act_quant", FQ, {"c2.out"}},
      // p1 reaches the Add unquantized: it gets its own quantizer; c2's is reused.
      {"add/input0_quant", FQ, {"p1.out"}},
      {"add", NodeKind::add, {"add/input0_quant.out", "c2/act_quant.out"}},
      // a ReLU follows the Add, so its output is quantized after the ReLU.
      {"r2", NodeKind::relu, {"add.out"}},
      {"r2/act_quant", FQ, {"r2.out"}},
      {"flat", NodeKind::flatten, {"r2/act_quant.out"}},
      {"fc/weight_quant", FQ, {"fc.weight"}},
      {"fc", NodeKind::linear, {"flat.out", "fc/weight_quant.out", "fc.bias"}},
      {"fc/act_quant", FQ, {"fc.out"}},
      {"loss", NodeKind::softmax_cross_entropy, {"fc/act_quant.out", "in.labels"}},
  });
}

TEST(Quantize, AddWithoutActivationQuantizesItsOutput) {
  Graph g;
  const TensorId x = g.input("in", {1, 4, 4});
  const TensorId a = g.relu("ra", g.conv2d("ca", x, 2, 3, 1, 1));
  const TensorId b = g.relu("rb", g.conv2d("cb", x, 2, 3, 1, 1));
  g.softmax_cross_entropy("loss", g.linear("fc", g.flatten("flat", g.add("add", a, b)), 3));
  const Graph q = quantize(g, {});
  ASSERT_GE(q.find_node("add/act_quant"), 0) << q.describe();
  EXPECT_LT(q.find_node("add/input0_quant"), 0) << "inputs were already quantized";
  EXPECT_LT(q.find_node("add/input1_quant"), 0);
  EXPECT_TRUE(quant_attrs(q, "add/act_quant").is_signed);
}

TEST(Quantize, FloatWidthsLeaveTheGraphAlone) {
  QuantizeOptions o;
  o.weight_bits = 0;
  o.activation_bits = 0;
  EXPECT_EQ(quantize(lenet5(), o).describe(), lenet5().describe());
  o.activation_bits = 8;  // activations only
  const Graph g = quantize(lenet5(), o);
  EXPECT_LT(g.find_node("conv1/weight_quant"), 0);
  EXPECT_GE(g.find_node("relu1/act_quant"), 0);
}

TEST(Quantize, OptionsReachEveryQuantizer) {
  QuantizeOptions o;
  o.weight_bits = 2;
  o.activation_bits = 3;
  o.ema_decay = 0.9f;
  o.freeze_ranges_step = 100;
  o.range = RangeMode::lagged;
  o.per_channel = false;
  o.symmetric_weights = false;
  const Graph g = quantize(lenet5(), o);
  const FakeQuantAttrs& w = quant_attrs(g, "fc1/weight_quant");
  EXPECT_EQ(w.bits, 2);
  EXPECT_FALSE(w.per_channel || w.symmetric || w.narrow_range);
  const FakeQuantAttrs& a = quant_attrs(g, "relu3/act_quant");
  EXPECT_EQ(a.bits, 3);
  EXPECT_EQ(a.range, RangeMode::lagged);
  EXPECT_FLOAT_EQ(a.ema_decay, 0.9f);
  EXPECT_EQ(a.freeze_step, 100);
}

TEST(Quantize, PerLayerOverridesGiveMixedPrecision) {
  QuantizeOptions o;
  o.weight_bits = 2;
  o.activation_bits = 2;
  o.layer_bits["conv1"] = {8, 8};
  o.layer_bits["fc3"] = {8, -1};
  o.layer_bits["fc2"] = {0, 0};
  const Graph g = quantize(lenet5(), o);
  EXPECT_EQ(quant_attrs(g, "conv1/weight_quant").bits, 8);
  EXPECT_EQ(quant_attrs(g, "relu1/act_quant").bits, 8);  // through the ReLU
  EXPECT_EQ(quant_attrs(g, "conv2/weight_quant").bits, 2);
  EXPECT_EQ(quant_attrs(g, "fc3/weight_quant").bits, 8);
  EXPECT_EQ(quant_attrs(g, "fc3/act_quant").bits, 8);  // -1 keeps output_bits for logits
  EXPECT_LT(g.find_node("fc2/weight_quant"), 0);
  EXPECT_LT(g.find_node("relu4/act_quant"), 0);
}

TEST(Quantize, LsqAddsStepSizeParameters) {
  QuantizeOptions o;
  o.range = RangeMode::lsq;
  const Graph g = quantize(lenet5(), o);
  const auto scale_of = [&](const char* quantizer) {
    const Node& node = g.nodes()[static_cast<std::size_t>(g.find_node(quantizer))];
    EXPECT_EQ(node.inputs.size(), 2u) << quantizer;
    return g.tensor(node.inputs.back());
  };
  EXPECT_EQ(scale_of("relu1/act_quant").name, "relu1/act_quant.scale");
  EXPECT_EQ(scale_of("relu1/act_quant").shape, std::vector<std::int64_t>{1});
  EXPECT_EQ(scale_of("relu1/act_quant").role, TensorRole::parameter);
  // Weights learn one step per output channel, on a full signed grid.
  EXPECT_EQ(scale_of("conv2/weight_quant").shape, std::vector<std::int64_t>{16});
  EXPECT_EQ(quant_attrs(g, "conv2/weight_quant").range, RangeMode::lsq);
  EXPECT_FALSE(quant_attrs(g, "conv2/weight_quant").narrow_range);
}

TEST(WeightGroups, TheGroupSizeIsTheLargestDivisorOfTheRowUpToG) {
  // LeNet-5's rows (fan-ins) of 25, 150, 400, 120 and 84 weights at G = 32.
  EXPECT_EQ(weight_group_size(25, 32), 25);
  EXPECT_EQ(weight_group_size(150, 32), 30);
  EXPECT_EQ(weight_group_size(400, 32), 25);
  EXPECT_EQ(weight_group_size(120, 32), 30);
  EXPECT_EQ(weight_group_size(84, 32), 28);
  EXPECT_EQ(weight_group_size(256, 32), 32);  // G divides the row
  EXPECT_EQ(weight_group_size(400, 256), 200);
  EXPECT_EQ(weight_group_size(84, 128), 84);  // G >= L: one group per row
  EXPECT_EQ(weight_group_size(84, 84), 84);
  EXPECT_EQ(weight_group_size(7, 2), 1);  // a prime row has no group below it
  EXPECT_THROW(weight_group_size(84, 1), Error);
  EXPECT_THROW(weight_group_size(84, 0), Error);
  EXPECT_THROW(weight_group_size(0, 32), Error);
}

TEST(WeightGroups, LayoutsOfConvAndLinearWeights) {
  FakeQuantAttrs a;
  a.weights = a.per_channel = true;
  const auto layout = [&](std::int64_t group, const std::vector<std::int64_t>& shape) {
    a.group = group;
    const ChannelLayout l = weight_layout(a, shape);
    return std::vector<std::int64_t>{l.outer, l.channels, l.inner};
  };
  using V = std::vector<std::int64_t>;
  // Divisible: a conv [8,4,3,3] (rows of 36) in groups of 12, a linear [5,64] in 16s.
  EXPECT_EQ(layout(12, {8, 4, 3, 3}), (V{1, 24, 12}));
  EXPECT_EQ(layout(16, {5, 64}), (V{1, 20, 16}));
  // Not divisible: rows of 150 in groups of 30 for G = 32, rows of 84 in 28s.
  EXPECT_EQ(layout(32, {16, 6, 5, 5}), (V{1, 80, 30}));
  EXPECT_EQ(layout(32, {10, 84}), (V{1, 30, 28}));
  // G at or beyond the row: per channel.
  EXPECT_EQ(layout(200, {16, 6, 5, 5}), (V{1, 16, 150}));
  EXPECT_EQ(layout(0, {16, 6, 5, 5}), (V{1, 16, 150}));
  a.per_channel = false;
  EXPECT_EQ(layout(0, {16, 6, 5, 5}), (V{1, 1, 2400}));
}

TEST(WeightGroups, QuantizeGivesEveryWeightQuantizerTheGroupSize) {
  QuantizeOptions o;
  o.weight_group = 32;
  Graph g = quantize(lenet5(), o);
  for (const char* layer : {"conv1", "conv2", "fc1", "fc2", "fc3"}) {
    const FakeQuantAttrs& w = quant_attrs(g, std::string(layer) + "/weight_quant");
    EXPECT_EQ(w.group, 32) << layer;
    EXPECT_TRUE(w.per_channel) << layer;
  }
  EXPECT_EQ(quant_attrs(g, "relu1/act_quant").group, 0);
  EXPECT_NE(g.describe().find("group=32"), std::string::npos) << g.describe();

  // lsq learns one step per group: K·L/g of them.
  o.range = RangeMode::lsq;
  g = quantize(lenet5(), o);
  const std::vector<std::pair<const char*, std::int64_t>> steps = {
      {"conv1", 6}, {"conv2", 80}, {"fc1", 1920}, {"fc2", 336}, {"fc3", 30}};
  for (const auto& [layer, count] : steps) {
    const Node& node =
        g.nodes()[static_cast<std::size_t>(g.find_node(std::string(layer) + "/weight_quant"))];
    ASSERT_EQ(node.inputs.size(), 2u) << layer;
    EXPECT_EQ(g.tensor(node.inputs[1]).shape, std::vector<std::int64_t>{count}) << layer;
  }
}

TEST(WeightGroups, BadGroupSizesAreRefusedSayingWhy) {
  const Graph g = lenet5();
  QuantizeOptions o;
  o.weight_group = 1;
  EXPECT_TRUE(test::throws_mentioning([&] { quantize(g, o); }, "weight_group must be 0"));
  o.weight_group = -32;
  EXPECT_TRUE(test::throws_mentioning([&] { quantize(g, o); }, "weight_group must be 0"));
  o.weight_group = 32;
  o.per_channel = false;
  EXPECT_TRUE(test::throws_mentioning([&] { quantize(g, o); }, "it needs per_channel"));
  // conv1's rows of 25 have no divisor in 2..4.
  o = {};
  o.weight_group = 4;
  EXPECT_TRUE(test::throws_mentioning(
      [&] { quantize(g, o); },
      "weight_group 4 leaves the rows of conv1 (25 weights) no group size"));
  o.layer_bits["conv1"] = {0, 4};  // float conv1 weights need no groups; the rest take 3 or 4
  EXPECT_NO_THROW(quantize(g, o));
  o = {};
  o.weight_group = 5;  // 25, 150, 400 and 120 take 5; 84 takes 4
  EXPECT_NO_THROW(quantize(g, o));

  // Groups belong to weights of a per-channel quantizer.
  Graph direct = lenet5();
  FakeQuantAttrs a;
  a.group = 32;
  EXPECT_THROW(direct.insert_fake_quant("q", direct.nodes()[0].outputs[0], a,
                                        direct.consumers(direct.nodes()[0].outputs[0])),
               Error);
}

TEST(Quantize, RejectsBadOptions) {
  const Graph g = lenet5();
  const auto rejects = [&](const QuantizeOptions& o) { EXPECT_THROW(quantize(g, o), Error); };
  QuantizeOptions o;
  o.weight_bits = 1;
  rejects(o);
  o = {};
  o.activation_bits = 17;
  rejects(o);
  o = {};
  o.ema_decay = 1.0f;
  rejects(o);
  o = {};
  o.quant_delay = -1;
  rejects(o);
  o = {};
  o.layer_bits["relu1"] = {8, 8};  // not a Conv2d/Linear layer
  rejects(o);
  o = {};
  o.layer_bits["nope"] = {8, 8};
  rejects(o);
  o = {};
  o.layer_bits["conv1"] = {1, 8};
  rejects(o);
  o = {};
  o.output_bits = 17;
  rejects(o);
  o = {};
  o.rounding = Rounding::pytorch;
  o.quant_delay = 10;
  rejects(o);
  o = {};
  o.range = RangeMode::lsq;  // learned steps start at the first batch
  o.quant_delay = 10;
  rejects(o);
  EXPECT_THROW(quantize(quantize(g, {}), {}), Error);  // already quantized
}

}  // namespace
}  // namespace lowbit
