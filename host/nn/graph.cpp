#include "lowbit/graph.hpp"

#include <algorithm>
#include <sstream>
#include <utility>

#include "lowbit/error.hpp"

namespace lowbit {

std::int64_t TensorInfo::size() const {
  std::int64_t n = 1;
  for (const std::int64_t d : shape) n *= d;
  return n;
}

const char* to_string(NodeKind kind) {
  switch (kind) {
    case NodeKind::input: return "Input";
    case NodeKind::conv2d: return "Conv2d";
    case NodeKind::linear: return "Linear";
    case NodeKind::relu: return "ReLU";
    case NodeKind::max_pool2d: return "MaxPool2d";
    case NodeKind::flatten: return "Flatten";
    case NodeKind::add: return "Add";
    case NodeKind::softmax_cross_entropy: return "SoftmaxCrossEntropy";
    case NodeKind::fake_quant: return "FakeQuant";
  }
  return "?";
}

const char* to_string(RangeMode mode) {
  switch (mode) {
    case RangeMode::ema: return "ema";
    case RangeMode::lagged: return "lagged";
    case RangeMode::lsq: return "lsq";
  }
  return "?";
}

const char* to_string(Rounding rounding) {
  return rounding == Rounding::tensorflow ? "tensorflow" : "pytorch";
}

TensorId Graph::add_tensor(std::string name, std::vector<std::int64_t> shape, TensorRole role) {
  for (const TensorInfo& t : tensors_)
    LOWBIT_EXPECTS(t.name != name, "graph: duplicate tensor name '" + name + "'");
  for (const std::int64_t d : shape)
    LOWBIT_EXPECTS(d > 0, "graph: tensor '" + name + "' has a non-positive dimension");
  tensors_.push_back({std::move(name), std::move(shape), role});
  return static_cast<TensorId>(tensors_.size() - 1);
}

TensorId Graph::add_node(Node node, std::string out_name, std::vector<std::int64_t> out_shape,
                         TensorRole out_role) {
  for (const Node& other : nodes_)
    LOWBIT_EXPECTS(other.name != node.name, "graph: duplicate node name '" + node.name + "'");
  const TensorId out = add_tensor(std::move(out_name), std::move(out_shape), out_role);
  node.outputs.push_back(out);
  nodes_.push_back(std::move(node));
  return out;
}

const TensorInfo& Graph::tensor(TensorId id) const {
  LOWBIT_EXPECTS(id >= 0 && id < static_cast<TensorId>(tensors_.size()),
                 "graph: no tensor " + std::to_string(id));
  return tensors_[static_cast<std::size_t>(id)];
}

const std::vector<std::int64_t>& Graph::shape_of(TensorId id) const {
  const TensorInfo& t = tensor(id);
  LOWBIT_EXPECTS(t.role == TensorRole::activation,
                 "graph: '" + t.name + "' is not an activation tensor");
  return t.shape;
}

TensorId Graph::input(const std::string& name, std::vector<std::int64_t> shape_chw) {
  LOWBIT_EXPECTS(nodes_.empty(), "graph: the Input node must come first");
  LOWBIT_EXPECTS(shape_chw.size() == 3, "graph: input shape must be [C, H, W]");
  Node node{NodeKind::input, name, {}, {}, {}};
  const TensorId images = add_node(std::move(node), name + ".images", std::move(shape_chw));
  labels_ = add_tensor(name + ".labels", {1}, TensorRole::label);
  nodes_.back().outputs.push_back(labels_);
  return images;
}

TensorId Graph::conv2d(const std::string& name, TensorId x, std::int64_t out_channels,
                       std::int64_t kernel, std::int64_t stride, std::int64_t padding) {
  const std::vector<std::int64_t> in = shape_of(x);
  LOWBIT_EXPECTS(in.size() == 3, "graph: conv2d '" + name + "' needs a [C, H, W] input");
  LOWBIT_EXPECTS(out_channels > 0 && kernel > 0 && stride > 0 && padding >= 0,
                 "graph: conv2d '" + name + "' has a bad channel count, kernel, stride or padding");
  const std::int64_t oh = (in[1] + 2 * padding - kernel) / stride + 1;
  const std::int64_t ow = (in[2] + 2 * padding - kernel) / stride + 1;
  LOWBIT_EXPECTS(in[1] + 2 * padding >= kernel && in[2] + 2 * padding >= kernel,
                 "graph: conv2d '" + name + "' kernel is larger than its padded input");
  const TensorId w =
      add_tensor(name + ".weight", {out_channels, in[0], kernel, kernel}, TensorRole::parameter);
  const TensorId b = add_tensor(name + ".bias", {out_channels}, TensorRole::parameter);
  Node node{NodeKind::conv2d, name, {x, w, b}, {}, Conv2dAttrs{out_channels, kernel, stride, padding}};
  return add_node(std::move(node), name + ".out", {out_channels, oh, ow});
}

TensorId Graph::linear(const std::string& name, TensorId x, std::int64_t out_features) {
  const std::vector<std::int64_t> in = shape_of(x);
  LOWBIT_EXPECTS(in.size() == 1, "graph: linear '" + name + "' needs a flat input (Flatten first)");
  LOWBIT_EXPECTS(out_features > 0, "graph: linear '" + name + "' needs out_features > 0");
  const TensorId w = add_tensor(name + ".weight", {out_features, in[0]}, TensorRole::parameter);
  const TensorId b = add_tensor(name + ".bias", {out_features}, TensorRole::parameter);
  Node node{NodeKind::linear, name, {x, w, b}, {}, {}};
  return add_node(std::move(node), name + ".out", {out_features});
}

TensorId Graph::relu(const std::string& name, TensorId x) {
  std::vector<std::int64_t> shape = shape_of(x);
  return add_node({NodeKind::relu, name, {x}, {}, {}}, name + ".out", std::move(shape));
}

TensorId Graph::max_pool2d(const std::string& name, TensorId x, std::int64_t kernel,
                           std::int64_t stride) {
  const std::vector<std::int64_t> in = shape_of(x);
  LOWBIT_EXPECTS(in.size() == 3, "graph: max_pool2d '" + name + "' needs a [C, H, W] input");
  LOWBIT_EXPECTS(kernel > 0 && stride > 0 && in[1] >= kernel && in[2] >= kernel,
                 "graph: max_pool2d '" + name + "' has a bad kernel or stride");
  Node node{NodeKind::max_pool2d, name, {x}, {}, Pool2dAttrs{kernel, stride}};
  return add_node(std::move(node), name + ".out",
                  {in[0], (in[1] - kernel) / stride + 1, (in[2] - kernel) / stride + 1});
}

TensorId Graph::flatten(const std::string& name, TensorId x) {
  std::int64_t n = 1;
  for (const std::int64_t d : shape_of(x)) n *= d;
  return add_node({NodeKind::flatten, name, {x}, {}, {}}, name + ".out", {n});
}

TensorId Graph::add(const std::string& name, TensorId a, TensorId b) {
  std::vector<std::int64_t> shape = shape_of(a);
  LOWBIT_EXPECTS(shape == shape_of(b), "graph: add '" + name + "' inputs differ in shape");
  return add_node({NodeKind::add, name, {a, b}, {}, {}}, name + ".out", std::move(shape));
}

TensorId Graph::softmax_cross_entropy(const std::string& name, TensorId logits) {
  LOWBIT_EXPECTS(shape_of(logits).size() == 1,
                 "graph: softmax_cross_entropy '" + name + "' needs [classes] logits");
  LOWBIT_EXPECTS(labels_ >= 0, "graph: softmax_cross_entropy needs an Input node first");
  return add_node({NodeKind::softmax_cross_entropy, name, {logits, labels_}, {}, {}},
                  name + ".loss", {1}, TensorRole::loss);
}

TensorId Graph::insert_fake_quant(const std::string& name, TensorId x,
                                  const FakeQuantAttrs& attrs, const std::vector<int>& consumers) {
  const TensorInfo in = tensor(x);
  LOWBIT_EXPECTS(attrs.bits >= kMinBits && attrs.bits <= kMaxBits,
                 "graph: fake_quant '" + name + "' bits must be in 2..16");
  LOWBIT_EXPECTS(attrs.weights == (in.role == TensorRole::parameter),
                 "graph: fake_quant '" + name + "' weights flag does not match its input");
  LOWBIT_EXPECTS(in.role == TensorRole::parameter || in.role == TensorRole::activation,
                 "graph: fake_quant '" + name + "' needs a weight or activation input");
  LOWBIT_EXPECTS(!attrs.weights || attrs.range != RangeMode::lagged,
                 "graph: fake_quant '" + name + "': weights use last-value or lsq ranges");
  LOWBIT_EXPECTS(attrs.group == 0 || (attrs.group >= 2 && attrs.weights && attrs.per_channel),
                 "graph: fake_quant '" + name +
                     "': group must be 0 or >= 2, on a per-channel weight quantizer");
  LOWBIT_EXPECTS(!consumers.empty(), "graph: fake_quant '" + name + "' has no consumer");
  int position = static_cast<int>(nodes_.size());
  for (const int c : consumers) {
    LOWBIT_EXPECTS(c >= 0 && c < static_cast<int>(nodes_.size()),
                   "graph: fake_quant '" + name + "' names a missing consumer");
    position = std::min(position, c);
  }
  for (const Node& other : nodes_)
    LOWBIT_EXPECTS(other.name != name, "graph: duplicate node name '" + name + "'");

  Node node{NodeKind::fake_quant, name, {x}, {}, attrs};
  if (attrs.range == RangeMode::lsq) {  // one step size per group, channel (weights) or tensor
    const std::int64_t steps = attrs.weights ? weight_layout(attrs, in.shape).channels : 1;
    node.inputs.push_back(add_tensor(name + ".scale", {steps}, TensorRole::parameter));
  }
  const TensorId y = add_tensor(name + ".out", in.shape,
                                attrs.weights ? TensorRole::derived : TensorRole::activation);
  node.outputs.push_back(y);
  for (const int c : consumers)
    for (TensorId& input : nodes_[static_cast<std::size_t>(c)].inputs)
      if (input == x) input = y;
  nodes_.insert(nodes_.begin() + position, std::move(node));
  return y;
}

std::int64_t weight_group_size(std::int64_t row_length, std::int64_t group) {
  LOWBIT_EXPECTS(group >= 2,
                 "weight_group_size: the group must be >= 2, got " + std::to_string(group));
  LOWBIT_EXPECTS(row_length >= 1, "weight_group_size: the row length must be >= 1, got " +
                                      std::to_string(row_length));
  std::int64_t size = std::min(group, row_length);
  while (row_length % size != 0) --size;
  return size;
}

ChannelLayout weight_layout(const FakeQuantAttrs& attrs, const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (const std::int64_t d : shape) n *= d;
  if (!attrs.per_channel) return ChannelLayout::per_tensor(n);
  const ChannelLayout rows = ChannelLayout::per_channel(shape, 0);
  if (attrs.group == 0 || rows.size() == 0) return rows;
  const std::int64_t size = weight_group_size(rows.inner, attrs.group);
  return {1, rows.size() / size, size};
}

int Graph::find_node(const std::string& name) const {
  for (std::size_t i = 0; i < nodes_.size(); ++i)
    if (nodes_[i].name == name) return static_cast<int>(i);
  return -1;
}

int Graph::producer(TensorId id) const {
  for (std::size_t i = 0; i < nodes_.size(); ++i)
    for (const TensorId out : nodes_[i].outputs)
      if (out == id) return static_cast<int>(i);
  return -1;
}

std::vector<int> Graph::consumers(TensorId id) const {
  std::vector<int> result;
  for (std::size_t i = 0; i < nodes_.size(); ++i)
    for (const TensorId in : nodes_[i].inputs)
      if (in == id) {
        result.push_back(static_cast<int>(i));
        break;
      }
  return result;
}

namespace {

std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string attrs_string(const Node& node) {
  std::ostringstream out;
  if (const auto* c = std::get_if<Conv2dAttrs>(&node.attrs)) {
    out << " k=" << c->kernel << " s=" << c->stride << " p=" << c->padding;
  } else if (const auto* p = std::get_if<Pool2dAttrs>(&node.attrs)) {
    out << " k=" << p->kernel << " s=" << p->stride;
  } else if (const auto* q = std::get_if<FakeQuantAttrs>(&node.attrs)) {
    out << " bits=" << q->bits << (q->weights ? " weights" : " activations")
        << " " << to_string(q->rounding);
    if (q->weights) {
      out << (q->per_channel ? " per-channel" : " per-tensor")
          << (q->group > 0 ? " group=" + std::to_string(q->group) : "")
          << (q->symmetric ? " symmetric" : " asymmetric") << (q->narrow_range ? " narrow" : "");
    } else {
      out << " range=" << to_string(q->range) << (q->is_signed ? " signed" : "");
    }
  }
  return out.str();
}

}  // namespace

std::string Graph::describe() const {
  std::ostringstream out;
  for (const Node& node : nodes_) {
    out << node.name << " " << to_string(node.kind) << "(";
    for (std::size_t i = 0; i < node.inputs.size(); ++i)
      out << (i ? ", " : "") << tensor(node.inputs[i]).name;
    out << ") ->";
    for (const TensorId o : node.outputs)
      out << " " << tensor(o).name << shape_string(tensor(o).shape);
    out << attrs_string(node) << "\n";
  }
  return out.str();
}

Graph lenet5(std::int64_t channels, std::int64_t height, std::int64_t width,
             std::int64_t classes) {
  LOWBIT_EXPECTS(height >= kLenet5MinImageSize && width >= kLenet5MinImageSize,
                 "lenet5: " + std::to_string(height) + "x" + std::to_string(width) +
                     " images are smaller than the " + std::to_string(kLenet5MinImageSize) + "x" +
                     std::to_string(kLenet5MinImageSize) + " LeNet-5 needs");
  Graph g;
  TensorId x = g.input("input", {channels, height, width});
  x = g.relu("relu1", g.conv2d("conv1", x, 6, 5, 1, 2));
  x = g.max_pool2d("pool1", x, 2, 2);
  x = g.relu("relu2", g.conv2d("conv2", x, 16, 5));
  x = g.max_pool2d("pool2", x, 2, 2);
  x = g.flatten("flatten", x);
  x = g.relu("relu3", g.linear("fc1", x, 120));
  x = g.relu("relu4", g.linear("fc2", x, 84));
  x = g.linear("fc3", x, classes);
  g.softmax_cross_entropy("loss", x);
  return g;
}

}  // namespace lowbit
