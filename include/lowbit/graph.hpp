// The layer graph: a small IR of CNN nodes with explicit tensors and shapes,
// in topological order. Build one with the Graph methods (lenet5() is the
// stock model), rewrite it with quantize(), run it with a Network.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "lowbit/types.hpp"

namespace lowbit {

using TensorId = int;

enum class TensorRole {
  activation,  ///< computed per example; shape excludes the batch dimension
  label,       ///< one class index per example
  parameter,   ///< trained; its shape is the full shape
  derived,     ///< computed from a parameter once per step (fake-quantized weights)
  loss,        ///< the scalar training loss
};

struct TensorInfo {
  std::string name;
  std::vector<std::int64_t> shape;
  TensorRole role = TensorRole::activation;

  std::int64_t size() const;
};

enum class NodeKind {
  input,                  ///< outputs: images [C,H,W], labels
  conv2d,                 ///< inputs: x, weight [K,C,R,S], bias [K]
  linear,                 ///< inputs: x [F], weight [O,F], bias [O]
  relu,                   ///< inputs: x
  max_pool2d,             ///< inputs: x
  flatten,                ///< inputs: x [C,H,W] -> [C·H·W]
  add,                    ///< inputs: a, b (bypass connection)
  softmax_cross_entropy,  ///< inputs: logits [classes], labels; output: loss
  fake_quant,             ///< inputs: x (and the scale for lsq); output: y
};

const char* to_string(NodeKind kind);

struct Conv2dAttrs {
  std::int64_t out_channels = 1, kernel = 1, stride = 1, padding = 0;
};

struct Pool2dAttrs {
  std::int64_t kernel = 2, stride = 2;
};

/// How a quantizer gets its range. Weights use the current min/max of the
/// weights (TensorFlow's "last value") under ema and lagged, and learned
/// step sizes under lsq.
enum class RangeMode {
  ema,     ///< TensorFlow: EMA of batch min/max, updated then used (exact)
  lagged,  ///< EMA used before this batch's update: one pass over x
  lsq,     ///< learned step size (LSQ, Esser et al.): a trained scale per channel or tensor
};

/// Which grid and rounding a quantizer uses.
enum class Rounding {
  tensorflow,  ///< FakeQuantWithMinMaxVars: nudged range, ties round up
  pytorch,     ///< fake_quantize_*_affine: scale and zero point, ties to even
};

const char* to_string(RangeMode mode);
const char* to_string(Rounding rounding);

struct FakeQuantAttrs {
  bool weights = false;  ///< weights (last-value range) or activations
  int bits = 8;
  bool narrow_range = false;
  bool per_channel = false;  ///< weights only: one range per output channel
  /// Weights only, with per_channel: 0 for one range per output channel, or
  /// G >= 2 for one range per group of consecutive elements along each
  /// channel's row (weight_group_size() decides the size used).
  std::int64_t group = 0;
  bool symmetric = false;    ///< weights only
  bool is_signed = false;    ///< lsq / pytorch activations: signed grid (no ReLU before)
  RangeMode range = RangeMode::ema;
  Rounding rounding = Rounding::tensorflow;
  float ema_decay = 0.999f;
  std::int64_t quant_delay = 0;
  std::int64_t freeze_step = kNeverFreeze;
};

/// The group size a weight row of `row_length` elements (a channel's fan-in)
/// is quantized in when groups of `group` are asked for: the largest divisor
/// of row_length that is at most `group`, so that every group of the row has
/// the same size (LeNet-5's rows of 25, 150, 400, 120 and 84 take 25, 30, 25,
/// 30 and 28 for a group of 32). row_length itself where group >= row_length:
/// one range per channel. Throws lowbit::Error for a group below 2 or a row
/// length below 1.
std::int64_t weight_group_size(std::int64_t row_length, std::int64_t group);

/// The [outer, channels, inner] view a weight quantizer with `attrs` takes of
/// a weight of `shape` ([K, ...], rows of L = size / K elements): per tensor
/// {1, 1, K·L}; per channel {1, K, L}; in groups {1, K·L/g, g} with g =
/// weight_group_size(L, attrs.group), one range (or LSQ step) per group.
ChannelLayout weight_layout(const FakeQuantAttrs& attrs, const std::vector<std::int64_t>& shape);

struct Node {
  NodeKind kind = NodeKind::input;
  std::string name;
  std::vector<TensorId> inputs;
  std::vector<TensorId> outputs;
  std::variant<std::monostate, Conv2dAttrs, Pool2dAttrs, FakeQuantAttrs> attrs;
};

class Graph {
 public:
  /// Adds the Input node. Returns the images tensor; labels() is the other.
  TensorId input(const std::string& name, std::vector<std::int64_t> shape_chw);
  /// Conv2d with parameters name.weight [K,C,k,k] and name.bias [K].
  TensorId conv2d(const std::string& name, TensorId x, std::int64_t out_channels,
                  std::int64_t kernel, std::int64_t stride = 1, std::int64_t padding = 0);
  /// Linear with parameters name.weight [O,F] and name.bias [O].
  TensorId linear(const std::string& name, TensorId x, std::int64_t out_features);
  TensorId relu(const std::string& name, TensorId x);
  TensorId max_pool2d(const std::string& name, TensorId x, std::int64_t kernel,
                      std::int64_t stride);
  TensorId flatten(const std::string& name, TensorId x);
  TensorId add(const std::string& name, TensorId a, TensorId b);
  /// The training loss against the labels of the Input node.
  TensorId softmax_cross_entropy(const std::string& name, TensorId logits);
  /// Inserts a FakeQuant node on x and rewires the inputs of `consumers`
  /// (node indices) from x to its output, keeping topological order. An lsq
  /// quantizer adds the parameter name.scale. Returns the new output.
  TensorId insert_fake_quant(const std::string& name, TensorId x, const FakeQuantAttrs& attrs,
                             const std::vector<int>& consumers);

  const std::vector<Node>& nodes() const { return nodes_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo& tensor(TensorId id) const;
  TensorId labels() const { return labels_; }
  /// The node that produces `id`, or -1 for parameters.
  int producer(TensorId id) const;
  /// Index of the node called `name`, or -1.
  int find_node(const std::string& name) const;
  /// Indices of the nodes that read `id`, in order.
  std::vector<int> consumers(TensorId id) const;
  /// One line per node: "name kind(inputs) -> outputs [shape] attrs".
  std::string describe() const;

 private:
  TensorId add_tensor(std::string name, std::vector<std::int64_t> shape, TensorRole role);
  TensorId add_node(Node node, std::string out_name, std::vector<std::int64_t> out_shape,
                    TensorRole out_role = TensorRole::activation);
  const std::vector<std::int64_t>& shape_of(TensorId id) const;

  std::vector<TensorInfo> tensors_;
  std::vector<Node> nodes_;
  TensorId labels_ = -1;
};

/// The smallest height and width lenet5() takes: the unpadded 5×5 conv2
/// between two 2×2 poolings needs 12 (12 → 6 → 2 → 1).
inline constexpr std::int64_t kLenet5MinImageSize = 12;

/// LeNet-5 on 1×28×28 images: conv 6@5×5 pad 2, ReLU, maxpool 2, conv 16@5×5,
/// ReLU, maxpool 2, fc 120, ReLU, fc 84, ReLU, fc 10, softmax cross-entropy.
/// Other image sizes from kLenet5MinImageSize up work as well (fc1 grows).
Graph lenet5(std::int64_t channels = 1, std::int64_t height = 28, std::int64_t width = 28,
             std::int64_t classes = 10);

}  // namespace lowbit
