#include "nn/network.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "nn/layers/layers.hpp"
#include "lowbit/error.hpp"

namespace lowbit {
namespace {

std::size_t float_bytes(std::int64_t n) { return static_cast<std::size_t>(n) * sizeof(float); }

const Node& node_at(const Graph& g, int index) { return g.nodes()[static_cast<std::size_t>(index)]; }

/// The single consumer of `node`'s output, or -1.
int sole_consumer(const Graph& g, const Node& node) {
  const std::vector<int> consumers = g.consumers(node.outputs[0]);
  return consumers.size() == 1 ? consumers[0] : -1;
}

/// The nodes a Conv2d/Linear layer absorbs: the ReLU its output feeds alone,
/// then the EMA activation quantizer (TensorFlow rounding) that ReLU feeds alone.
std::vector<int> fused_chain(const Graph& g, const Node& node) {
  if (node.kind != NodeKind::conv2d && node.kind != NodeKind::linear) return {};
  const int relu = sole_consumer(g, node);
  if (relu < 0 || node_at(g, relu).kind != NodeKind::relu) return {};
  const int quant = sole_consumer(g, node_at(g, relu));
  if (quant < 0 || node_at(g, quant).kind != NodeKind::fake_quant) return {relu};
  const auto& a = std::get<FakeQuantAttrs>(node_at(g, quant).attrs);
  if (a.range == RangeMode::lsq || a.rounding != Rounding::tensorflow) return {relu};
  return {relu, quant};
}

bool is_lsq_scale(const Graph& g, TensorId id) {
  for (const Node& node : g.nodes())
    if (node.kind == NodeKind::fake_quant && node.inputs.size() > 1 && node.inputs[1] == id)
      return true;
  return false;
}

}  // namespace

Network::Network(const Graph& graph, Backend& backend, std::int64_t batch, bool fuse)
    : backend_(backend), batch_(batch) {
  LOWBIT_EXPECTS(batch > 0, "network: batch must be positive");
  const std::vector<Node>& nodes = graph.nodes();
  LOWBIT_EXPECTS(!nodes.empty() && nodes[0].kind == NodeKind::input,
                 "network: the graph must start with an Input node");
  const std::vector<TensorInfo>& tensors = graph.tensors();

  // Parameters: weights and biases first (they take weight decay), then LSQ scales.
  for (const bool scales : {false, true})
    for (std::size_t t = 0; t < tensors.size(); ++t) {
      if (tensors[t].role != TensorRole::parameter) continue;
      if (is_lsq_scale(graph, static_cast<TensorId>(t)) != scales) continue;
      LOWBIT_EXPECTS(graph.consumers(static_cast<TensorId>(t)).size() == 1,
                     "network: parameter '" + tensors[t].name + "' must have one consumer");
      slots_.push_back({tensors[t].name, tensors[t].shape, parameter_count_, tensors[t].size()});
      parameter_count_ += tensors[t].size();
      if (!scales) decayed_count_ = parameter_count_;
    }
  parameters_ = backend.allocate(float_bytes(parameter_count_));
  gradients_ = backend.allocate(float_bytes(parameter_count_));

  std::vector<Binding> bind(tensors.size());
  for (const ParameterSlot& slot : slots_) {
    for (std::size_t t = 0; t < tensors.size(); ++t)
      if (tensors[t].name == slot.name)
        bind[t] = {parameters() + slot.offset, gradients() + slot.offset};
  }
  const auto allocate_floats = [&](std::int64_t n) {
    tensors_.push_back(backend.allocate(float_bytes(n)));
    return tensors_.back().as<float>();
  };
  const auto chain_of = [&](const Node& node) {
    return fuse ? fused_chain(graph, node) : std::vector<int>{};
  };
  const auto elements = [&](TensorId id) {
    const TensorInfo& t = graph.tensor(id);
    return t.role == TensorRole::activation ? batch * t.size() : t.size();
  };
  // Per (consumer, input) gradient where a tensor has several consumers.
  std::map<std::pair<int, TensorId>, float*> grad_part;
  std::map<int, int> fused;  // a node absorbed by a layer -> that layer's node

  labels_ = backend.allocate(static_cast<std::size_t>(batch) * sizeof(std::int32_t));
  totals_ = backend.allocate(sizeof(LossTotals));
  steps_done_ = backend.allocate(sizeof(std::int64_t));
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const Node& node = nodes[i];
    for (const TensorId out : node.outputs) {
      const TensorInfo& info = graph.tensor(out);
      if (info.role == TensorRole::label || info.role == TensorRole::loss) continue;
      if (node.kind == NodeKind::flatten) {
        bind[static_cast<std::size_t>(out)] = bind[static_cast<std::size_t>(node.inputs[0])];
      } else if (fused.count(static_cast<int>(i)) || !chain_of(node).empty()) {
        continue;  // a fused layer writes straight into the output of its chain
      } else {
        const std::int64_t n = elements(out);
        Binding& b = bind[static_cast<std::size_t>(out)];
        b.value = allocate_floats(n);
        if (node.kind != NodeKind::input) b.grad = allocate_floats(n);
      }
    }
    if (const std::vector<int> chain = chain_of(node); !chain.empty()) {
      for (const int c : chain) fused[c] = static_cast<int>(i);
      const TensorId out = node_at(graph, chain.back()).outputs[0];
      const std::int64_t n = elements(out);
      bind[static_cast<std::size_t>(out)] = {allocate_floats(n), allocate_floats(n)};
    }
    // Several consumers: each writes its own part, summed before this node's backward.
    for (const TensorId out : node.outputs) {
      const std::vector<int> consumers = graph.consumers(out);
      if (consumers.size() < 2 || bind[static_cast<std::size_t>(out)].grad == nullptr) continue;
      GradientSum sum{0, bind[static_cast<std::size_t>(out)].grad, {}, elements(out)};
      for (const int c : consumers) {
        grad_part[{c, out}] = allocate_floats(elements(out));
        sum.parts.push_back(grad_part[{c, out}]);
      }
      sum.before_layer = i;  // node index for now; mapped to a layer index below
      gradient_sums_.push_back(std::move(sum));
    }
  }
  images_ = bind[static_cast<std::size_t>(nodes[0].outputs[0])].value;
  const std::vector<std::int64_t>& image_shape = graph.tensor(nodes[0].outputs[0]).shape;
  input_shape_ = image_shape;
  example_size_ = graph.tensor(nodes[0].outputs[0]).size();

  const auto input = [&](int node_index, std::size_t slot) {
    const TensorId id = node_at(graph, node_index).inputs[slot];
    Binding b = bind[static_cast<std::size_t>(id)];
    if (const auto it = grad_part.find({node_index, id}); it != grad_part.end()) b.grad = it->second;
    return b;
  };
  const auto output = [&](int node_index) {
    const std::vector<int> chain = chain_of(node_at(graph, node_index));
    const TensorId id = node_at(graph, chain.empty() ? node_index : chain.back()).outputs[0];
    return bind[static_cast<std::size_t>(id)];
  };
  const auto with_batch = [&](const std::vector<std::int64_t>& shape) {
    std::vector<std::int64_t> full{batch};
    full.insert(full.end(), shape.begin(), shape.end());
    return full;
  };

  std::int64_t ema_count = 0;
  for (const Node& node : nodes)
    if (const auto* a = std::get_if<FakeQuantAttrs>(&node.attrs))
      if (!a->weights && a->range != RangeMode::lsq) {
        ema_names_.push_back(node.name);
        ++ema_count;
      }
  ema_states_ = backend.allocate(static_cast<std::size_t>(ema_count) * sizeof(EmaRangeState));
  for (std::int64_t k = 0; k < ema_count; ++k) backend.ema_state_init(ema_states() + k);

  const auto ema_state_of = [&](const std::string& quantizer) {
    const auto it = std::find(ema_names_.begin(), ema_names_.end(), quantizer);
    return ema_states() + (it - ema_names_.begin());
  };
  std::vector<std::string> activation_quantizers;
  for (const Node& node : nodes)
    if (const auto* a = std::get_if<FakeQuantAttrs>(&node.attrs); a && !a->weights)
      activation_quantizers.push_back(node.name);
  clip_counts_ = backend.allocate(activation_quantizers.size() * sizeof(ClipCount));
  reset_clip_counts();
  const auto clips_of = [&](const std::string& quantizer) {
    const auto it =
        std::find(activation_quantizers.begin(), activation_quantizers.end(), quantizer);
    return clip_counts_.as<ClipCount>() + (it - activation_quantizers.begin());
  };
  const auto epilogue = [&](const Node& node) {
    const std::vector<int> chain = chain_of(node);
    Epilogue e;
    e.relu = !chain.empty();
    if (chain.size() == 2) {
      const Node& quant = node_at(graph, chain[1]);
      e.quant = &std::get<FakeQuantAttrs>(quant.attrs);
      e.state = ema_state_of(quant.name);
      e.clips = clips_of(quant.name);
    }
    return e;
  };

  std::map<int, std::size_t> layer_of_node;
  for (int i = 0; i < static_cast<int>(nodes.size()); ++i) {
    const Node& node = nodes[static_cast<std::size_t>(i)];
    const std::vector<std::int64_t>& in_shape = graph.tensor(node.inputs.empty() ? 0 : node.inputs[0]).shape;
    std::unique_ptr<Layer> layer;
    switch (node.kind) {
      case NodeKind::input:
      case NodeKind::flatten:
        break;
      case NodeKind::conv2d: {
        const auto& a = std::get<Conv2dAttrs>(node.attrs);
        const Conv2dShape s{batch, in_shape[0], in_shape[1], in_shape[2],
                            a.out_channels, a.kernel, a.stride, a.padding};
        layer = std::make_unique<WeightedLayer>(node.name, backend, s, input(i, 0), input(i, 1),
                                                input(i, 2), output(i), epilogue(node));
        break;
      }
      case NodeKind::linear: {
        const LinearShape s{batch, in_shape[0], graph.tensor(node.outputs[0]).shape[0]};
        layer = std::make_unique<WeightedLayer>(node.name, backend, s, input(i, 0), input(i, 1),
                                                input(i, 2), output(i), epilogue(node));
        break;
      }
      case NodeKind::relu:
        if (fused.count(i)) break;
        layer = std::make_unique<ReluLayer>(node.name, backend, elements(node.inputs[0]),
                                            input(i, 0), output(i));
        break;
      case NodeKind::max_pool2d: {
        const auto& a = std::get<Pool2dAttrs>(node.attrs);
        const Pool2dShape s{batch, in_shape[0], in_shape[1], in_shape[2], a.kernel, a.stride};
        layer = std::make_unique<MaxPool2dLayer>(node.name, backend, s, input(i, 0), output(i));
        break;
      }
      case NodeKind::add:
        layer = std::make_unique<AddLayer>(node.name, backend, elements(node.inputs[0]),
                                           input(i, 0), input(i, 1), output(i));
        break;
      case NodeKind::softmax_cross_entropy:
        classes_ = static_cast<int>(in_shape[0]);
        logits_ = input(i, 0).value;
        layer = std::make_unique<SoftmaxCrossEntropyLayer>(node.name, backend, batch, classes_,
                                                           input(i, 0), labels(), totals());
        break;
      case NodeKind::fake_quant: {
        const auto& a = std::get<FakeQuantAttrs>(node.attrs);
        const bool lsq = a.range == RangeMode::lsq;
        QuantizerProbe probe{node.name, a};
        if (lsq) {
          probe.step = input(i, 1).value;
          probe.channels = graph.tensor(node.inputs[1]).size();
        } else if (a.weights) {
          probe.channels = weight_layout(a, in_shape).channels;
        }
        if (a.weights && a.group > 0) probe.group = weight_layout(a, in_shape).inner;
        EmaRangeState* state = a.weights || lsq ? nullptr : ema_state_of(node.name);
        ClipCount* clips = a.weights ? nullptr : clips_of(node.name);
        probe.state = state;
        probe.clips = clips;
        if (!fused.count(i)) {
          counts_steps_ = counts_steps_ || (a.weights && a.quant_delay > 0);
          auto quant = std::make_unique<FakeQuantLayer>(
              node.name, backend, a, a.weights ? in_shape : with_batch(in_shape), input(i, 0),
              output(i), node.inputs.size() > 1 ? input(i, 1) : Binding{}, state,
              steps_done_.as<std::int64_t>(), clips);
          if (a.weights && !lsq) probe.range = quant->weight_range();
          layer = std::move(quant);
        }
        probes_.push_back(probe);
        break;
      }
    }
    if (layer) {
      layer_of_node[i] = layers_.size();
      layers_.push_back(std::move(layer));
    }
  }
  LOWBIT_EXPECTS(classes_ > 0, "network: the graph has no SoftmaxCrossEntropy node");
  LOWBIT_EXPECTS(image_shape.size() == 3, "network: the input must be [C, H, W]");
  for (const auto& [absorbed, layer] : fused) layer_of_node[absorbed] = layer_of_node.at(layer);
  for (GradientSum& sum : gradient_sums_) {
    const auto it = layer_of_node.find(static_cast<int>(sum.before_layer));
    LOWBIT_EXPECTS(it != layer_of_node.end(),
                   "network: a tensor with several consumers must come from a layer");
    sum.before_layer = it->second;
  }
}

void Network::forward(Pass pass) {
  for (const auto& layer : layers_) layer->forward(pass);
  if (pass == Pass::train && counts_steps_)
    backend_.advance_cursor(steps_done_.as<std::int64_t>());
}

void Network::reset_clip_counts() {
  if (clip_counts_.bytes() > 0) backend_.fill_zero(clip_counts_.data(), clip_counts_.bytes());
}

std::vector<QuantizerReport> Network::quantizer_reports() const {
  const auto floats = [&](const float* from, std::int64_t n) {
    std::vector<float> host(static_cast<std::size_t>(n));
    backend_.download(host.data(), from, float_bytes(n));
    return host;
  };
  std::vector<QuantizerReport> reports;
  for (const QuantizerProbe& probe : probes_) {
    QuantizerReport r;
    r.name = probe.name;
    r.weights = probe.attrs.weights;
    r.bits = probe.attrs.bits;
    r.range = probe.attrs.range;
    r.group = probe.group;
    if (probe.range != nullptr) {
      r.min = floats(probe.range, probe.channels);
      r.max = floats(probe.range + probe.channels, probe.channels);
    }
    if (probe.state != nullptr) {
      EmaRangeState s;
      backend_.download(&s, probe.state, sizeof s);
      r.min = {s.min};
      r.max = {s.max};
    }
    if (probe.step != nullptr) r.step = floats(probe.step, probe.channels);
    if (probe.clips != nullptr) {
      ClipCount c;
      backend_.download(&c, probe.clips, sizeof c);
      r.quantized = c.quantized;
      r.clipped = c.clipped;
    }
    reports.push_back(std::move(r));
  }
  return reports;
}

void Network::set_steps_done(std::int64_t steps) {
  backend_.upload(steps_done_.data(), &steps, sizeof steps);
}

std::string Network::first_nonfinite_parameter() const {
  std::vector<float> host(static_cast<std::size_t>(parameter_count_));
  backend_.download(host.data(), parameters(), float_bytes(parameter_count_));
  for (const ParameterSlot& slot : slots_) {
    const float* p = host.data() + slot.offset;
    if (!std::all_of(p, p + slot.count, [](float v) { return std::isfinite(v); }))
      return slot.name;
  }
  return "";
}

void Network::backward() {
  for (std::size_t i = layers_.size(); i-- > 0;) {
    for (const GradientSum& sum : gradient_sums_) {
      if (sum.before_layer != i) continue;
      backend_.add(sum.parts[0], sum.parts[1], sum.n, sum.target);
      for (std::size_t p = 2; p < sum.parts.size(); ++p)
        backend_.add(sum.target, sum.parts[p], sum.n, sum.target);
    }
    layers_[i]->backward();
  }
}

void Network::initialize_parameters(std::uint64_t seed) {
  std::vector<float> host(static_cast<std::size_t>(parameter_count_));
  std::mt19937_64 rng(seed);
  std::map<std::string, std::int64_t> fan_in;  // layer name -> inputs per output
  for (const ParameterSlot& slot : slots_) {
    const std::string layer = slot.name.substr(0, slot.name.rfind('.'));
    if (slot.name.size() > 7 && slot.name.compare(slot.name.size() - 7, 7, ".weight") == 0)
      fan_in[layer] = slot.count / slot.shape[0];
  }
  for (const ParameterSlot& slot : slots_) {
    const std::string layer = slot.name.substr(0, slot.name.rfind('.'));
    float* p = host.data() + slot.offset;
    const auto it = fan_in.find(layer);
    if (it == fan_in.end()) {  // an LSQ step size, set from data before training
      std::fill(p, p + slot.count, 1.0f);
      continue;
    }
    const double bound = 1.0 / std::sqrt(static_cast<double>(it->second));
    for (std::int64_t k = 0; k < slot.count; ++k) {
      const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // [0, 1)
      p[k] = static_cast<float>((2.0 * u - 1.0) * bound);
    }
  }
  backend_.upload(parameters(), host.data(), float_bytes(parameter_count_));
}

}  // namespace lowbit
