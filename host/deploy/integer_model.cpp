// A trained checkpoint in integer form. The checkpoint is loaded into a CPU
// network and evaluated once, so every range, step and zero point comes from
// the code that quantized during training; the weights' codes are their
// fake-quant levels, which dequantize to the fake-quant weights bit for bit.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "lowbit/deploy.hpp"
#include "lowbit/element.hpp"
#include "lowbit/error.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/ref.hpp"
#include "nn/layers/layers.hpp"
#include "nn/network.hpp"
#include "train/checkpoint.hpp"

namespace lowbit {
namespace {

/// A grid with codes shifted to start at 0 when the quantizer's is signed.
CodeGrid unsigned_grid(int bits, float scale, std::int32_t zero_point, std::int32_t qmin,
                       std::int32_t qmax) {
  return {bits, scale, zero_point - std::min(qmin, 0), qmin - std::min(qmin, 0),
          qmax - std::min(qmin, 0)};
}

/// A quantizer's grids per channel, and each value's code on them.
struct Quantizer {
  std::vector<CodeGrid> grids;  // one per channel
  std::vector<RangeParams> range;
  std::vector<AffineParams> affine;
  RangeScaling scaling = RangeScaling::divide;

  std::uint8_t code(float x, std::size_t c) const {
    const CodeGrid& g = grids[c];
    const float level = range.empty() ? affine_code(x, affine[c]) - affine[c].zero_point
                                      : quant_level(x, range[c], scaling);
    return static_cast<std::uint8_t>(static_cast<std::int32_t>(level) + g.zero_point);
  }
};

/// The grids a quantizer with these attributes and final state quantizes on.
Quantizer quantizer_of(const FakeQuantAttrs& a, const QuantizerReport& r) {
  Quantizer q;
  const std::size_t channels = r.step.empty() ? r.min.size() : r.step.size();
  if (a.range == RangeMode::lsq) {
    const AffineQuant grid = affine_grid(a);
    for (std::size_t c = 0; c < channels; ++c) {
      const LsqParams p = make_lsq(r.step[c], grid.qmin, grid.qmax);
      q.affine.push_back({p.scale, p.inv_scale, 0.0f, p.qmin, p.qmax});
      q.grids.push_back(unsigned_grid(a.bits, p.scale, 0, grid.qmin, grid.qmax));
    }
  } else if (a.rounding == Rounding::pytorch) {
    const AffineQuant grid = affine_grid(a);
    std::vector<float> scale(channels);
    std::vector<std::int32_t> zero_point(channels);
    ref::affine_params_from_range(r.min.data(), r.max.data(), static_cast<std::int64_t>(channels),
                                  grid, a.weights && a.symmetric, scale.data(), zero_point.data());
    for (std::size_t c = 0; c < channels; ++c) {
      q.affine.push_back(make_affine(scale[c], zero_point[c], grid.qmin, grid.qmax));
      q.grids.push_back(unsigned_grid(a.bits, scale[c], zero_point[c], grid.qmin, grid.qmax));
    }
  } else {
    const RangeQuant grid{a.bits, a.weights && a.narrow_range};
    q.scaling = channels > 1 ? RangeScaling::multiply : RangeScaling::divide;
    for (std::size_t c = 0; c < channels; ++c) {
      const RangeParams p = nudge_range(r.min[c], r.max[c], grid.qmin(), grid.qmax());
      q.range.push_back(p);
      // A zero-width range quantizes everything to 0: any positive scale
      // expresses that, and keeps the bias expressible.
      const auto zero_point = static_cast<std::int32_t>(grid.qmin() + p.quant_zero);
      q.grids.push_back(
          {a.bits, p.scale > 0.0f ? p.scale : 1.0f, zero_point, grid.qmin(), grid.qmax()});
    }
  }
  return q;
}

constexpr int kInputFractionBits = 8;

const QuantizerReport& report_of(const std::vector<QuantizerReport>& reports,
                                 const std::string& name) {
  for (const QuantizerReport& r : reports)
    if (r.name == name) return r;
  throw Error("export: the network has no quantizer " + name, __FILE__, __LINE__);
}

void expect_width(int bits, const std::string& what) {
  LOWBIT_EXPECTS(bits == 2 || bits == 4 || bits == 8,
                 "export: " + what + " is " + std::to_string(bits) +
                     "-bit; the integer model takes 2, 4 or 8 bits (packed codes)");
}

/// The most fractional bits the accumulator can carry: the largest sum of
/// products, scaled by 2^shift, stays below 2^30, leaving room for the bias.
/// None for 8-bit inputs and weights, TFLite's bias scale: there one unit is
/// a few thousandths of an output step, and runtimes that fuse such layers
/// into integer kernels (onnxruntime's QLinearConv) assume that scale.
int accumulator_shift(const Quantizer& weights, const CodeGrid& input, const LayerInput& read,
                      std::int64_t taps) {
  if (input.bits == 8 && weights.grids[0].bits == 8) return 0;
  std::int64_t w_span = 0;
  for (const CodeGrid& g : weights.grids)
    w_span = std::max<std::int64_t>({w_span, g.qmax - g.zero_point, g.zero_point - g.qmin});
  const std::int64_t x_span = std::max<std::int64_t>(
      (std::int64_t{input.qmax} << read.fraction_bits) - read.zero_point,
      read.zero_point - (std::int64_t{input.qmin} << read.fraction_bits));
  const std::int64_t largest = std::max<std::int64_t>(1, taps * w_span * x_span);
  int shift = 0;
  while (shift < 16 && (largest << (shift + 1)) < (std::int64_t{1} << 30)) ++shift;
  return shift;
}

/// Builds a layer's weights and bias once its input grid is known.
class LayerBuilder {
 public:
  LayerBuilder(const Network& network, const std::vector<float>& parameters)
      : network_(network), parameters_(parameters) {}

  std::vector<float> parameter(const std::string& name) const {
    for (const ParameterSlot& s : network_.parameter_slots())
      if (s.name == name)
        return {parameters_.begin() + s.offset, parameters_.begin() + s.offset + s.count};
    throw Error("export: the checkpoint has no parameter " + name, __FILE__, __LINE__);
  }

  /// Codes, grids and the int32 bias at the accumulator's scale, for a
  /// layer that reads `read` on the grid `input`.
  void weights(IntegerLayer& layer, const Quantizer& q, const CodeGrid& input,
               const LayerInput& read) const {
    const std::vector<float> w = parameter(layer.name + ".weight");
    const std::vector<float> b = parameter(layer.name + ".bias");
    const auto channels = static_cast<std::size_t>(layer.out_channels);
    const std::size_t taps = w.size() / channels;
    layer.weight_codes.resize(w.size());
    layer.accumulator_shift = accumulator_shift(q, input, read, static_cast<std::int64_t>(taps));
    for (std::size_t c = 0; c < channels; ++c) {
      const CodeGrid& g = q.grids[q.grids.size() == 1 ? 0 : c];
      layer.weight_scale.push_back(g.scale);
      layer.weight_zero_point.push_back(g.zero_point);
      for (std::size_t t = 0; t < taps; ++t)
        layer.weight_codes[c * taps + t] = q.code(w[c * taps + t], q.grids.size() == 1 ? 0 : c);
      const double unit = static_cast<double>(read.scale) * static_cast<double>(g.scale);
      const double bias = std::nearbyint(std::ldexp(static_cast<double>(b[c]) / unit,
                                                    read.fraction_bits + layer.accumulator_shift));
      LOWBIT_EXPECTS(std::fabs(bias) <= std::numeric_limits<std::int32_t>::max(),
                     "export: " + layer.name + "'s bias of channel " + std::to_string(c) +
                         " does not fit int32 at its accumulator scale");
      layer.bias.push_back(static_cast<std::int32_t>(bias));
    }
  }

 private:
  const Network& network_;
  const std::vector<float>& parameters_;
};

}  // namespace

IntegerModel integer_model(const std::string& checkpoint_path) {
  const Checkpoint checkpoint = read_checkpoint(checkpoint_path);
  const QuantizeOptions& options = checkpoint.options.quantize;
  LOWBIT_EXPECTS(options.weight_bits != 0 && options.activation_bits != 0,
                 "export: " + checkpoint_path +
                     " holds a model with float weights or activations; the integer model "
                     "needs both quantized (train with --weight-bits and --act-bits)");
  // The integer model, its file and ONNX's DequantizeLinear all hold one
  // weight scale per output channel.
  LOWBIT_EXPECTS(options.weight_group == 0,
                 "export: " + checkpoint_path +
                     " quantizes its weights in groups (--weight-group " +
                     std::to_string(options.weight_group) +
                     "), and the integer model holds one weight scale per output channel: a "
                     "grouped model cannot be exported or run in integer arithmetic (lowbit eval "
                     "without --integer measures it)");
  LOWBIT_EXPECTS(checkpoint.progress.steps_done > options.quant_delay,
                 "export: " + checkpoint_path + " was trained " +
                     std::to_string(checkpoint.progress.steps_done) +
                     " steps, not past its quant delay of " + std::to_string(options.quant_delay) +
                     ": it has never quantized");

  // The checkpoint in a CPU network, evaluated once so that the weight
  // quantizers hold their ranges.
  const std::vector<std::int64_t>& shape = checkpoint.input_shape;
  const Graph graph = quantize(lenet5(shape[0], shape[1], shape[2]), options);
  const std::unique_ptr<Backend> cpu = make_cpu_backend();
  Network network(graph, *cpu, 1);
  restore_checkpoint(checkpoint, network, *cpu, nullptr);
  network.set_steps_done(checkpoint.progress.steps_done);
  cpu->fill_zero(network.images(), static_cast<std::size_t>(network.example_size()) * 4);
  cpu->fill_zero(network.labels(), sizeof(std::int32_t));
  network.forward(Pass::eval);
  const std::vector<QuantizerReport> reports = network.quantizer_reports();
  std::vector<float> parameters(static_cast<std::size_t>(network.parameter_count()));
  cpu->download(parameters.data(), network.parameters(), parameters.size() * sizeof(float));
  const LayerBuilder builder(network, parameters);

  IntegerModel model;
  model.input_shape = shape;
  model.normalization = checkpoint.options.normalization;
  const double pixel_scale = 1.0 / (255.0 * model.normalization.std);
  const double real_zero = 255.0 * static_cast<double>(model.normalization.mean);
  LOWBIT_EXPECTS(real_zero >= 0.0 && real_zero <= 255.0,
                 "export: the input normalisation's mean must lie in [0, 1]");
  model.input = {8, static_cast<float>(pixel_scale),
                 static_cast<std::int32_t>(std::lround(real_zero)), 0, 255};
  model.rounding = options.rounding;
  model.range = options.range;

  // A sequential walk: each Conv2d/Linear opens a layer; its ReLU, output
  // quantizer and max pooling complete it.
  TensorId current = graph.nodes()[0].outputs[0];
  bool quantized_output = true;
  for (const Node& node : graph.nodes()) {
    if (node.kind == NodeKind::input || node.kind == NodeKind::softmax_cross_entropy) continue;
    const auto* quant = std::get_if<FakeQuantAttrs>(&node.attrs);
    if (quant != nullptr && quant->weights) continue;  // read with its layer
    LOWBIT_EXPECTS(node.inputs[0] == current,
                   "export: node " + node.name + " does not continue a sequential model");
    current = node.outputs[0];
    if (node.kind == NodeKind::flatten) continue;
    if (node.kind == NodeKind::conv2d || node.kind == NodeKind::linear) {
      LOWBIT_EXPECTS(quantized_output, "export: the output of layer " + model.layers.back().name +
                                           " is not quantized");
      IntegerLayer layer;
      layer.name = node.name;
      const std::vector<std::int64_t>& w_shape = graph.tensor(node.inputs[1]).shape;
      layer.linear = node.kind == NodeKind::linear;
      layer.out_channels = w_shape[0];
      layer.in_channels = w_shape[1];
      if (const auto* conv = std::get_if<Conv2dAttrs>(&node.attrs)) {
        layer.kernel = conv->kernel;
        layer.stride = conv->stride;
        layer.padding = conv->padding;
      }
      const std::string weight_quant = node.name + "/weight_quant";
      const int index = graph.find_node(weight_quant);
      LOWBIT_EXPECTS(index >= 0, "export: layer " + node.name + " has float weights");
      const auto& attrs =
          std::get<FakeQuantAttrs>(graph.nodes()[static_cast<std::size_t>(index)].attrs);
      expect_width(attrs.bits, node.name + "'s weight");
      layer.weight_bits = attrs.bits;
      if (model.layers.empty()) {
        // The zero point 255·mean to within 2^-9 of a pixel, as the first
        // layer's int32 sums allow (integer_conv2d's bound).
        const std::int64_t taps = layer.in_channels * layer.kernel * layer.kernel;
        int bits = kInputFractionBits;
        while (bits > 0 && taps * (std::int64_t{255} << bits) * 255 > INT32_MAX) --bits;
        model.input_fraction_bits = bits;
        model.input_zero_point_fine =
            static_cast<std::int32_t>(std::lround(std::ldexp(real_zero, bits)));
      }
      const CodeGrid& input = model.layers.empty() ? model.input : model.layers.back().output;
      builder.weights(layer, quantizer_of(attrs, report_of(reports, weight_quant)), input,
                      layer_input(model, model.layers.size()));
      model.layers.push_back(std::move(layer));
      quantized_output = false;
      continue;
    }
    LOWBIT_EXPECTS(!model.layers.empty(),
                   "export: node " + node.name + " comes before the first Conv2d/Linear");
    IntegerLayer& layer = model.layers.back();
    if (node.kind == NodeKind::relu && !quantized_output) {
      layer.relu = true;
    } else if (quant != nullptr && !quantized_output) {
      expect_width(quant->bits, node.name);
      const Quantizer q = quantizer_of(*quant, report_of(reports, node.name));
      layer.output = q.grids[0];
      quantized_output = true;
    } else if (node.kind == NodeKind::max_pool2d && quantized_output && layer.pool == 0) {
      const auto& pool = std::get<Pool2dAttrs>(node.attrs);
      LOWBIT_EXPECTS(pool.kernel == pool.stride,
                     "export: " + node.name + " has a window unlike its stride");
      layer.pool = pool.kernel;
    } else {
      throw Error("export: node " + node.name +
                      " does not fit the integer model's sequence (Conv2d/Linear, ReLU, "
                      "output quantizer, MaxPool2d)",
                  __FILE__, __LINE__);
    }
  }
  LOWBIT_EXPECTS(!model.layers.empty() && quantized_output,
                 "export: the model's output is not quantized");
  return model;
}

LayerInput layer_input(const IntegerModel& model, std::size_t index) {
  if (index == 0) return {model.input.scale, model.input_zero_point_fine, model.input_fraction_bits};
  const CodeGrid& g = model.layers[index - 1].output;
  return {g.scale, g.zero_point, 0};
}

std::vector<FixedPointMultiplier> requantization_multipliers(const IntegerModel& model,
                                                             std::size_t index) {
  const IntegerLayer& layer = model.layers[index];
  const LayerInput read = layer_input(model, index);
  std::vector<FixedPointMultiplier> m;
  for (const float w : layer.weight_scale)
    m.push_back(fixed_point_multiplier(
        std::ldexp(static_cast<double>(read.scale) * w / static_cast<double>(layer.output.scale),
                   -(read.fraction_bits + layer.accumulator_shift))));
  return m;
}

}  // namespace lowbit
