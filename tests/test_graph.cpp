// The layer graph IR: LeNet-5's structure and shapes, and bad graphs.
#include <gtest/gtest.h>

#include "lowbit/error.hpp"
#include "lowbit/graph.hpp"

namespace lowbit {
namespace {

TEST(Graph, LeNet5NodesAndShapes) {
  const Graph g = lenet5();
  const std::vector<std::pair<std::string, NodeKind>> expected = {
      {"input", NodeKind::input},     {"conv1", NodeKind::conv2d},
      {"relu1", NodeKind::relu},      {"pool1", NodeKind::max_pool2d},
      {"conv2", NodeKind::conv2d},    {"relu2", NodeKind::relu},
      {"pool2", NodeKind::max_pool2d}, {"flatten", NodeKind::flatten},
      {"fc1", NodeKind::linear},      {"relu3", NodeKind::relu},
      {"fc2", NodeKind::linear},      {"relu4", NodeKind::relu},
      {"fc3", NodeKind::linear},      {"loss", NodeKind::softmax_cross_entropy}};
  ASSERT_EQ(g.nodes().size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(g.nodes()[i].name, expected[i].first);
    EXPECT_EQ(g.nodes()[i].kind, expected[i].second);
  }
  const auto shape = [&](const char* node) {
    return g.tensor(g.nodes()[static_cast<std::size_t>(g.find_node(node))].outputs[0]).shape;
  };
  EXPECT_EQ(shape("conv1"), (std::vector<std::int64_t>{6, 28, 28}));
  EXPECT_EQ(shape("pool1"), (std::vector<std::int64_t>{6, 14, 14}));
  EXPECT_EQ(shape("conv2"), (std::vector<std::int64_t>{16, 10, 10}));
  EXPECT_EQ(shape("pool2"), (std::vector<std::int64_t>{16, 5, 5}));
  EXPECT_EQ(shape("flatten"), (std::vector<std::int64_t>{400}));
  EXPECT_EQ(shape("fc1"), (std::vector<std::int64_t>{120}));
  EXPECT_EQ(shape("fc3"), (std::vector<std::int64_t>{10}));

  std::int64_t parameters = 0;
  for (const TensorInfo& t : g.tensors())
    if (t.role == TensorRole::parameter) parameters += t.size();
  // 156 + 2416 + 48120 + 10164 + 850: LeNet-5's well-known 61,706 weights.
  EXPECT_EQ(parameters, 61706);
  const Node& conv2 = g.nodes()[4];
  EXPECT_EQ(g.tensor(conv2.inputs[1]).shape, (std::vector<std::int64_t>{16, 6, 5, 5}));
  EXPECT_EQ(g.tensor(conv2.inputs[2]).name, "conv2.bias");
}

TEST(Graph, ProducersConsumersAndDescribe) {
  const Graph g = lenet5();
  const TensorId relu1 = g.nodes()[2].outputs[0];
  EXPECT_EQ(g.producer(relu1), 2);
  EXPECT_EQ(g.consumers(relu1), std::vector<int>{3});
  EXPECT_EQ(g.producer(g.nodes()[1].inputs[1]), -1);  // a parameter
  const std::string text = g.describe();
  EXPECT_NE(text.find("conv1 Conv2d(input.images, conv1.weight, conv1.bias) -> "
                      "conv1.out[6,28,28] k=5 s=1 p=2"),
            std::string::npos)
      << text;
}

TEST(Graph, RejectsBadGraphs) {
  Graph g;
  EXPECT_THROW(g.relu("r", 0), Error);  // no tensor yet
  const TensorId x = g.input("in", {1, 8, 8});
  EXPECT_THROW(g.input("again", {1, 8, 8}), Error);
  EXPECT_THROW(g.linear("fc", x, 10), Error);            // needs Flatten first
  EXPECT_THROW(g.conv2d("c", x, 4, 9), Error);            // kernel > input
  EXPECT_THROW(g.conv2d("c", x, 0, 3), Error);            // no channels
  EXPECT_THROW(g.max_pool2d("p", x, 0, 1), Error);
  const TensorId c = g.conv2d("c", x, 4, 3, 1, 1);
  EXPECT_THROW(g.conv2d("c", x, 4, 3), Error);            // duplicate name
  EXPECT_THROW(g.add("a", x, c), Error);                  // shape mismatch
  EXPECT_THROW(g.softmax_cross_entropy("loss", c), Error);  // logits must be flat
  FakeQuantAttrs attrs;
  attrs.bits = 1;
  EXPECT_THROW(g.insert_fake_quant("q", c, attrs, {}), Error);
  attrs.bits = 4;
  EXPECT_THROW(g.insert_fake_quant("q", c, attrs, {}), Error);  // no consumer
}

}  // namespace
}  // namespace lowbit
