#include "lowbit/quantize.hpp"

#include <string>
#include <vector>

#include "lowbit/error.hpp"

namespace lowbit {
namespace {

void check_bits(int bits, const std::string& what) {
  LOWBIT_EXPECTS(bits == 0 || (bits >= kMinBits && bits <= kMaxBits),
                 "quantize: " + what + " must be 0 (float) or 2..16, got " + std::to_string(bits));
}

bool is_layer(NodeKind kind) { return kind == NodeKind::conv2d || kind == NodeKind::linear; }

void check_options(const Graph& graph, const QuantizeOptions& o) {
  check_bits(o.weight_bits, "weight_bits");
  check_bits(o.activation_bits, "activation_bits");
  if (o.output_bits != -1) check_bits(o.output_bits, "output_bits");
  LOWBIT_EXPECTS(o.ema_decay >= 0.0f && o.ema_decay < 1.0f,
                 "quantize: ema_decay must be in [0, 1)");
  LOWBIT_EXPECTS(o.quant_delay >= 0, "quantize: quant_delay must be >= 0");
  LOWBIT_EXPECTS(o.freeze_ranges_step >= 0, "quantize: freeze_ranges_step must be >= 0");
  LOWBIT_EXPECTS(o.rounding == Rounding::tensorflow || o.range != RangeMode::lsq,
                 "quantize: lsq ranges use their own grid; choose the tensorflow rounding");
  // LSQ sets its step sizes from the first batch and learns them from there:
  // a delay would leave them unlearned, set from weights that have moved since.
  LOWBIT_EXPECTS(o.range != RangeMode::lsq || o.quant_delay == 0,
                 "quantize: lsq ranges quantize from the first step; quant_delay must be 0");
  // PyTorch's observers update, then quantize: there is no lagged or delayed form.
  LOWBIT_EXPECTS(o.rounding == Rounding::tensorflow ||
                     (o.range == RangeMode::ema && o.quant_delay == 0),
                 "quantize: the pytorch rounding supports ema ranges without quant_delay only");
  LOWBIT_EXPECTS(o.weight_group == 0 || o.weight_group >= 2,
                 "quantize: weight_group must be 0 (per channel) or a group size >= 2, got " +
                     std::to_string(o.weight_group));
  LOWBIT_EXPECTS(o.weight_group == 0 || o.per_channel,
                 "quantize: weight_group splits each output channel's row into groups; it needs "
                 "per_channel");
  for (const auto& [name, bits] : o.layer_bits) {
    const int index = graph.find_node(name);
    LOWBIT_EXPECTS(index >= 0 && is_layer(graph.nodes()[static_cast<std::size_t>(index)].kind),
                   "quantize: layer_bits names '" + name + "', which is no Conv2d or Linear layer");
    if (bits.weight_bits != -1) check_bits(bits.weight_bits, "layer_bits[" + name + "].weight_bits");
    if (bits.activation_bits != -1)
      check_bits(bits.activation_bits, "layer_bits[" + name + "].activation_bits");
  }
  for (const Node& node : graph.nodes())
    LOWBIT_EXPECTS(node.kind != NodeKind::fake_quant,
                   "quantize: the graph is already quantized (node '" + node.name + "')");
}

/// Whether `t` feeds the loss (it is the logits).
bool feeds_loss(const Graph& g, TensorId t) {
  for (const int c : g.consumers(t))
    if (g.nodes()[static_cast<std::size_t>(c)].kind == NodeKind::softmax_cross_entropy) return true;
  return false;
}

LayerBits resolve_bits(const QuantizeOptions& o, const std::string& layer, bool logits) {
  LayerBits bits{o.weight_bits, o.activation_bits};
  if (logits && o.activation_bits > 0 && o.output_bits != -1) bits.activation_bits = o.output_bits;
  if (const auto it = o.layer_bits.find(layer); it != o.layer_bits.end()) {
    if (it->second.weight_bits != -1) bits.weight_bits = it->second.weight_bits;
    if (it->second.activation_bits != -1) bits.activation_bits = it->second.activation_bits;
  }
  return bits;
}

FakeQuantAttrs weight_attrs(const QuantizeOptions& o, int bits) {
  FakeQuantAttrs a;
  a.weights = true;
  a.bits = bits;
  a.per_channel = o.per_channel;
  a.group = o.weight_group;
  a.symmetric = o.symmetric_weights;
  a.narrow_range = o.symmetric_weights && o.range != RangeMode::lsq;
  a.rounding = o.rounding;
  a.quant_delay = o.quant_delay;  // TensorFlow delays weights and activations alike
  if (o.range == RangeMode::lsq) a.range = RangeMode::lsq;  // LSQ learns weight steps too
  return a;
}

FakeQuantAttrs activation_attrs(const QuantizeOptions& o, int bits, bool after_relu) {
  FakeQuantAttrs a;
  a.bits = bits;
  a.is_signed = !after_relu;
  a.range = o.range;
  a.rounding = o.rounding;
  a.ema_decay = o.ema_decay;
  a.quant_delay = o.quant_delay;
  a.freeze_step = o.freeze_ranges_step;
  return a;
}

/// A group size of 1 would give every weight its own range: no quantization.
void check_groups(const Graph& g, const std::string& layer, TensorId weight,
                  const FakeQuantAttrs& attrs) {
  if (attrs.group == 0) return;
  const std::vector<std::int64_t>& shape = g.tensor(weight).shape;
  const std::int64_t row = g.tensor(weight).size() / shape[0];
  LOWBIT_EXPECTS(row == 1 || weight_group_size(row, attrs.group) > 1,
                 "quantize: weight_group " + std::to_string(attrs.group) + " leaves the rows of " +
                     layer + " (" + std::to_string(row) +
                     " weights) no group size: no divisor of " + std::to_string(row) +
                     " lies in 2.." + std::to_string(attrs.group));
}

/// The single consumer of `t` when it is a ReLU, else -1.
int following_relu(const Graph& g, TensorId t) {
  const std::vector<int> consumers = g.consumers(t);
  if (consumers.size() != 1) return -1;
  return g.nodes()[static_cast<std::size_t>(consumers[0])].kind == NodeKind::relu ? consumers[0]
                                                                                  : -1;
}

bool made_by_fake_quant(const Graph& g, TensorId t) {
  const int p = g.producer(t);
  return p >= 0 && g.nodes()[static_cast<std::size_t>(p)].kind == NodeKind::fake_quant;
}

/// Quantizes the output of the node called `name` for all its consumers.
void quantize_output(Graph& g, const std::string& name, TensorId t, const FakeQuantAttrs& attrs) {
  const std::vector<int> consumers = g.consumers(t);
  if (!consumers.empty()) g.insert_fake_quant(name + "/act_quant", t, attrs, consumers);
}

}  // namespace

Graph quantize(const Graph& graph, const QuantizeOptions& options) {
  check_options(graph, options);
  Graph g = graph;
  // Node names are stable while indices shift with every insertion.
  std::vector<std::string> names;
  for (const Node& node : graph.nodes()) names.push_back(node.name);

  // Activation bits that reach a ReLU from the layer before it.
  std::vector<std::pair<std::string, int>> relu_bits;
  for (const std::string& name : names) {
    const Node node = g.nodes()[static_cast<std::size_t>(g.find_node(name))];
    const TensorId out = node.outputs[0];
    if (is_layer(node.kind)) {
      const LayerBits bits = resolve_bits(options, name, feeds_loss(g, out));
      if (bits.weight_bits > 0) {
        const FakeQuantAttrs attrs = weight_attrs(options, bits.weight_bits);
        check_groups(g, name, node.inputs[1], attrs);
        g.insert_fake_quant(name + "/weight_quant", node.inputs[1], attrs, {g.find_node(name)});
      }
      const int relu = following_relu(g, out);
      if (relu >= 0) {
        relu_bits.emplace_back(g.nodes()[static_cast<std::size_t>(relu)].name,
                               bits.activation_bits);
      } else if (bits.activation_bits > 0) {
        quantize_output(g, name, out, activation_attrs(options, bits.activation_bits, false));
      }
    } else if (node.kind == NodeKind::relu) {
      int bits = options.activation_bits;
      for (const auto& [relu, b] : relu_bits)
        if (relu == name) bits = b;
      if (bits > 0) quantize_output(g, name, out, activation_attrs(options, bits, true));
    } else if (node.kind == NodeKind::add && options.activation_bits > 0) {
      const FakeQuantAttrs attrs = activation_attrs(options, options.activation_bits, false);
      for (std::size_t i = 0; i < node.inputs.size(); ++i) {
        if (made_by_fake_quant(g, node.inputs[i])) continue;
        g.insert_fake_quant(name + "/input" + std::to_string(i) + "_quant", node.inputs[i], attrs,
                            {g.find_node(name)});
      }
      if (following_relu(g, out) < 0) quantize_output(g, name, out, attrs);
    }
  }
  return g;
}

}  // namespace lowbit
