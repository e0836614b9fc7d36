// ONNX export of an integer model as a QDQ graph, serialized by a minimal
// protobuf encoder of its own: the model needs a handful of onnx.proto
// messages, not the protobuf and onnx libraries.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "io/atomic_file.hpp"
#include "lowbit/deploy.hpp"
#include "lowbit/error.hpp"
#include "lowbit/ref.hpp"
#include "lowbit/types.hpp"

namespace lowbit {
namespace {

// ---------------------------------------------------------------- onnx.proto

// Field numbers of the onnx.proto messages written here.
namespace model_proto {
enum : int { kIrVersion = 1, kProducerName = 2, kDocString = 6, kGraph = 7, kOpsetImport = 8 };
}
namespace opset_id_proto {
enum : int { kDomain = 1, kVersion = 2 };
}
namespace graph_proto {
enum : int { kNode = 1, kName = 2, kInitializer = 5, kInput = 11, kOutput = 12 };
}
namespace node_proto {
enum : int { kInput = 1, kOutput = 2, kName = 3, kOpType = 4, kAttribute = 5 };
}
namespace attribute_proto {
enum : int { kName = 1, kI = 3, kInts = 8, kType = 20 };
enum : int { kTypeInt = 2, kTypeInts = 7 };  // AttributeProto.AttributeType
}  // namespace attribute_proto
namespace tensor_proto {
enum : int { kDims = 1, kDataType = 2, kName = 8, kRawData = 9 };
enum : int { kFloat = 1, kUint8 = 2, kInt32 = 6, kUint4 = 21, kUint2 = 25 };  // DataType
}  // namespace tensor_proto
namespace value_info_proto {
enum : int { kName = 1, kType = 2 };
}
namespace type_proto {
enum : int { kTensorType = 1 };
enum : int { kElemType = 1, kShape = 2 };  // TypeProto.Tensor
}  // namespace type_proto
namespace tensor_shape_proto {
enum : int { kDim = 1 };
enum : int { kDimValue = 1, kDimParam = 2 };  // TensorShapeProto.Dimension
}  // namespace tensor_shape_proto

// Opset 21 is the first whose QuantizeLinear/DequantizeLinear take UINT4, 25
// the first with UINT2; each with the IR version of the ONNX release that
// introduced it (older runtimes reject a newer IR).
constexpr std::int64_t kOpset = 21, kIrVersion = 10;
constexpr std::int64_t kTwoBitOpset = 25, kTwoBitIrVersion = 13;

// ---------------------------------------------------------------- protobuf

/// One protobuf message in wire format, written field by field.
class Message {
 public:
  /// An int64, int32 or enum field (a negative value takes ten bytes, as
  /// protobuf encodes it).
  Message& integer(int field, std::int64_t value) {
    key(field, kVarint);
    varint(static_cast<std::uint64_t>(value));
    return *this;
  }
  /// A string, bytes or embedded message field.
  Message& bytes(int field, const std::string& data) {
    key(field, kLengthDelimited);
    varint(data.size());
    wire_ += data;
    return *this;
  }
  Message& message(int field, const Message& value) { return bytes(field, value.wire_); }
  const std::string& wire() const { return wire_; }

 private:
  enum WireType : int { kVarint = 0, kLengthDelimited = 2 };

  void key(int field, WireType type) { varint(static_cast<std::uint64_t>(field) << 3 | type); }
  void varint(std::uint64_t value) {
    for (; value >= 0x80; value >>= 7) wire_ += static_cast<char>((value & 0x7f) | 0x80);
    wire_ += static_cast<char>(value);
  }

  std::string wire_;
};

// ---------------------------------------------------------------- tensors

/// ONNX raw_data is little-endian whatever the host is.
std::string little_endian(std::uint32_t word) {
  std::string bytes(4, '\0');
  for (int i = 0; i < 4; ++i) bytes[i] = static_cast<char>(word >> (8 * i));
  return bytes;
}

std::string raw_int32s(const std::vector<std::int32_t>& values) {
  std::string raw;
  for (const std::int32_t value : values) raw += little_endian(static_cast<std::uint32_t>(value));
  return raw;
}

std::string raw_floats(const std::vector<float>& values) {
  std::string raw;
  for (const float value : values) {
    std::uint32_t word = 0;
    std::memcpy(&word, &value, sizeof word);
    raw += little_endian(word);
  }
  return raw;
}

/// Codes one per byte as ONNX stores UINT8, UINT4 or UINT2: packed, first
/// element in the low bits.
std::string raw_codes(const std::vector<std::uint8_t>& codes, int bits) {
  const auto n = static_cast<std::int64_t>(codes.size());
  std::string raw(static_cast<std::size_t>(packed_bytes(n, bits)), '\0');
  ref::pack_codes(codes.data(), n, bits, reinterpret_cast<std::uint8_t*>(raw.data()));
  return raw;
}

int code_type(int bits) {
  return bits == 2 ? tensor_proto::kUint2 : bits == 4 ? tensor_proto::kUint4 : tensor_proto::kUint8;
}

const char* code_type_name(int bits) { return bits == 2 ? "UINT2" : bits == 4 ? "UINT4" : "UINT8"; }

// ---------------------------------------------------------------- graph

Message int_attribute(const std::string& name, std::int64_t value) {
  return Message()
      .bytes(attribute_proto::kName, name)
      .integer(attribute_proto::kType, attribute_proto::kTypeInt)
      .integer(attribute_proto::kI, value);
}

Message ints_attribute(const std::string& name, const std::vector<std::int64_t>& values) {
  Message attribute;
  attribute.bytes(attribute_proto::kName, name)
      .integer(attribute_proto::kType, attribute_proto::kTypeInts);
  for (const std::int64_t value : values) attribute.integer(attribute_proto::kInts, value);
  return attribute;
}

/// A tensor value's name, element type and shape; a dimension < 0 is the
/// symbolic batch size.
Message value_info(const std::string& name, int elem_type, const std::vector<std::int64_t>& dims) {
  Message shape;
  for (const std::int64_t dim : dims) {
    Message dimension;
    if (dim < 0)
      dimension.bytes(tensor_shape_proto::kDimParam, "batch");
    else
      dimension.integer(tensor_shape_proto::kDimValue, dim);
    shape.message(tensor_shape_proto::kDim, dimension);
  }
  const Message tensor =
      Message().integer(type_proto::kElemType, elem_type).message(type_proto::kShape, shape);
  return Message()
      .bytes(value_info_proto::kName, name)
      .message(value_info_proto::kType, Message().message(type_proto::kTensorType, tensor));
}

/// A GraphProto built in topological order.
class GraphWriter {
 public:
  explicit GraphWriter(const std::string& name) { graph_.bytes(graph_proto::kName, name); }

  /// Adds an initializer and returns its name.
  std::string constant(const std::string& name, int data_type,
                       const std::vector<std::int64_t>& dims, const std::string& raw) {
    Message tensor;
    for (const std::int64_t dim : dims) tensor.integer(tensor_proto::kDims, dim);
    tensor.integer(tensor_proto::kDataType, data_type)
        .bytes(tensor_proto::kName, name)
        .bytes(tensor_proto::kRawData, raw);
    graph_.message(graph_proto::kInitializer, tensor);
    return name;
  }
  std::string scalar(const std::string& name, float value) {
    return constant(name, tensor_proto::kFloat, {}, raw_floats({value}));
  }

  /// Adds a node named after its one output, and returns that output.
  std::string node(const std::string& op_type, const std::vector<std::string>& inputs,
                   const std::string& output, const std::vector<Message>& attributes = {}) {
    Message node;
    for (const std::string& input : inputs) node.bytes(node_proto::kInput, input);
    node.bytes(node_proto::kOutput, output)
        .bytes(node_proto::kName, output)
        .bytes(node_proto::kOpType, op_type);
    for (const Message& attribute : attributes) node.message(node_proto::kAttribute, attribute);
    graph_.message(graph_proto::kNode, node);
    return output;
  }

  void input(const Message& value) { graph_.message(graph_proto::kInput, value); }
  void output(const Message& value) { graph_.message(graph_proto::kOutput, value); }
  const Message& proto() const { return graph_; }

 private:
  Message graph_;
};

/// QuantizeLinear and DequantizeLinear of `x` ([N, channels, ...]) on `grid`.
/// ONNX saturates at the type's range, so a grid narrower than that is
/// clipped to its own range first. A 2- or 4-bit grid is written per axis 1,
/// the same value for every channel: the same arithmetic, but onnxruntime
/// (1.32) rewrites per-tensor UINT4/UINT2 quantizers next to MaxPool or Clip
/// into graphs that it then cannot run.
std::string requantize(GraphWriter& graph, const std::string& x, const CodeGrid& grid,
                       std::int64_t channels, const std::string& prefix,
                       const std::string& output) {
  const bool per_axis = grid.bits < 8;
  const std::vector<std::int64_t> dims =
      per_axis ? std::vector<std::int64_t>{channels} : std::vector<std::int64_t>{};
  const auto count = static_cast<std::size_t>(per_axis ? channels : 1);
  const std::string scale = graph.constant(prefix + ".scale", tensor_proto::kFloat, dims,
                                           raw_floats(std::vector<float>(count, grid.scale)));
  const std::string zero_point = graph.constant(
      prefix + ".zero_point", code_type(grid.bits), dims,
      raw_codes(std::vector<std::uint8_t>(count, static_cast<std::uint8_t>(grid.zero_point)),
                grid.bits));
  const std::vector<Message> axis =
      per_axis ? std::vector<Message>{int_attribute("axis", 1)} : std::vector<Message>{};
  std::string value = x;
  if (grid.qmin > 0 || grid.qmax < (1 << grid.bits) - 1) {
    const auto bound = [&](std::int32_t code) {
      return static_cast<float>(code - grid.zero_point) * grid.scale;
    };
    value = graph.node("Clip",
                       {value, graph.scalar(prefix + ".min", bound(grid.qmin)),
                        graph.scalar(prefix + ".max", bound(grid.qmax))},
                       prefix + ".clipped");
  }
  value = graph.node("QuantizeLinear", {value, scale, zero_point}, prefix + ".quantized", axis);
  return graph.node("DequantizeLinear", {value, scale, zero_point}, output, axis);
}

// ---------------------------------------------------------------- checks

bool expressible(int bits) { return bits == 2 || bits == 4 || bits == 8; }

void check_width(int bits, const std::string& what) {
  LOWBIT_EXPECTS(expressible(bits), what + " is " + std::to_string(bits) +
                                        " bits wide; ONNX has unsigned 2-, 4- and 8-bit types "
                                        "(UINT2, UINT4, UINT8) only");
}

void check_grid(const CodeGrid& grid, const std::string& what) {
  check_width(grid.bits, what);
  const std::int32_t top = (1 << grid.bits) - 1;
  LOWBIT_EXPECTS(std::isfinite(grid.scale) && grid.scale > 0.0f,
                 what + " has scale " + std::to_string(grid.scale) + "; it must be positive");
  LOWBIT_EXPECTS(grid.zero_point >= 0 && grid.zero_point <= top,
                 what + " has zero point " + std::to_string(grid.zero_point) + " outside [0, " +
                     std::to_string(top) + "]");
  LOWBIT_EXPECTS(0 <= grid.qmin && grid.qmin <= grid.qmax && grid.qmax <= top,
                 what + " has codes [" + std::to_string(grid.qmin) + ", " +
                     std::to_string(grid.qmax) + "], not within [0, " + std::to_string(top) + "]");
}

/// Checks one layer against the per-example shape that reaches it ({C, H, W}
/// or {features}) and returns the shape it gives.
std::vector<std::int64_t> check_layer(const IntegerLayer& layer, const std::string& what,
                                      const std::vector<std::int64_t>& shape) {
  check_width(layer.weight_bits, what + " weight");
  check_grid(layer.output, what + " output grid");
  const std::int64_t out = layer.out_channels;
  LOWBIT_EXPECTS(out > 0 && layer.in_channels > 0,
                 what + " has " + std::to_string(layer.in_channels) + " inputs and " +
                     std::to_string(out) + " outputs");
  std::vector<std::int64_t> result;
  std::int64_t weights = out * layer.in_channels;
  if (layer.linear) {
    std::int64_t features = 1;
    for (const std::int64_t dim : shape) features *= dim;
    LOWBIT_EXPECTS(layer.in_channels == features,
                   what + " has " + std::to_string(layer.in_channels) + " inputs but receives " +
                       std::to_string(features) + " features");
    LOWBIT_EXPECTS(layer.pool == 0, what + " is linear and cannot pool");
    result = {out};
  } else {
    LOWBIT_EXPECTS(shape.size() == 3, what + " is a convolution after a linear layer");
    LOWBIT_EXPECTS(layer.in_channels == shape[0],
                   what + " has " + std::to_string(layer.in_channels) +
                       " input channels but receives " + std::to_string(shape[0]));
    LOWBIT_EXPECTS(layer.kernel > 0 && layer.stride > 0 && layer.padding >= 0 &&
                       shape[1] + 2 * layer.padding >= layer.kernel &&
                       shape[2] + 2 * layer.padding >= layer.kernel,
                   what + " has kernel " + std::to_string(layer.kernel) + ", stride " +
                       std::to_string(layer.stride) + " and padding " +
                       std::to_string(layer.padding) + ", which do not fit its input");
    weights *= layer.kernel * layer.kernel;
    result = {out, (shape[1] + 2 * layer.padding - layer.kernel) / layer.stride + 1,
              (shape[2] + 2 * layer.padding - layer.kernel) / layer.stride + 1};
    LOWBIT_EXPECTS(layer.pool >= 0 && result[1] >= layer.pool && result[2] >= layer.pool,
                   what + " pools " + std::to_string(layer.pool) + "x" +
                       std::to_string(layer.pool) + " over a smaller output");
    if (layer.pool > 0) result = {out, result[1] / layer.pool, result[2] / layer.pool};
  }
  LOWBIT_EXPECTS(static_cast<std::int64_t>(layer.weight_codes.size()) == weights,
                 what + " has " + std::to_string(layer.weight_codes.size()) +
                     " weight codes; its shape needs " + std::to_string(weights));
  for (const std::uint8_t code : layer.weight_codes)
    LOWBIT_EXPECTS(code >> layer.weight_bits == 0,
                   what + " has weight code " + std::to_string(code) + ", not a " +
                       std::to_string(layer.weight_bits) + "-bit code");
  const auto per_channel = [&](std::size_t size, const char* name) {
    LOWBIT_EXPECTS(static_cast<std::int64_t>(size) == out,
                   what + " has " + std::to_string(size) + " " + name + " entries for " +
                       std::to_string(out) + " output channels");
  };
  per_channel(layer.weight_scale.size(), "weight scale");
  per_channel(layer.weight_zero_point.size(), "weight zero point");
  per_channel(layer.bias.size(), "bias");
  for (std::int64_t c = 0; c < out; ++c) {
    const float scale = layer.weight_scale[c];
    const std::int32_t zero_point = layer.weight_zero_point[c];
    LOWBIT_EXPECTS(std::isfinite(scale) && scale > 0.0f,
                   what + " has weight scale " + std::to_string(scale) + " in channel " +
                       std::to_string(c) + "; it must be positive");
    LOWBIT_EXPECTS(zero_point >= 0 && zero_point >> layer.weight_bits == 0,
                   what + " has weight zero point " + std::to_string(zero_point) + " in channel " +
                       std::to_string(c) + ", not a " + std::to_string(layer.weight_bits) +
                       "-bit code");
  }
  return result;
}

/// Everything save_onnx() can reject, checked before it writes anything;
/// returns the per-example shape of the logits.
std::vector<std::int64_t> check_model(const IntegerModel& model, const std::string& where) {
  LOWBIT_EXPECTS(!model.layers.empty(), where + "the model has no layers");
  LOWBIT_EXPECTS(model.input_shape.size() == 3 && model.input_shape[0] > 0 &&
                     model.input_shape[1] > 0 && model.input_shape[2] > 0,
                 where + "the input shape is not [channels, height, width]");
  check_grid(model.input, where + "the input grid");
  LOWBIT_EXPECTS(model.input.bits == 8, where + "the input grid is " +
                                            std::to_string(model.input.bits) +
                                            " bits wide; \"pixels\" are 8-bit codes (UINT8)");
  std::set<std::string> names;
  std::vector<std::int64_t> shape = model.input_shape;
  for (std::size_t i = 0; i < model.layers.size(); ++i) {
    const IntegerLayer& layer = model.layers[i];
    const std::string what = where + "layer " + std::to_string(i) + " \"" + layer.name + "\"";
    // Layer names prefix the graph's value names, which must be unique.
    LOWBIT_EXPECTS(!layer.name.empty() && layer.name != "pixels" && names.insert(layer.name).second,
                   what + ": layer names must be non-empty, unique and not \"pixels\"");
    shape = check_layer(layer, what, shape);
  }
  return shape;
}

std::string doc_string(const IntegerModel& model, bool two_bit) {
  std::set<int> widths{model.input.bits};
  for (const IntegerLayer& layer : model.layers)
    widths.insert({layer.weight_bits, layer.output.bits});
  std::string types;
  for (auto bits = widths.rbegin(); bits != widths.rend(); ++bits)
    types += std::string(types.empty() ? "" : ", ") + code_type_name(*bits);
  return "lowbit quantized model as a QDQ graph: \"pixels\" (raw uint8 [N, C, H, W]; the "
         "normalization is folded into the input grid) to \"logits\" (float, the last grid's "
         "values). Code types: " +
         types + ". " +
         (two_bit ? "Opset 25 (IR 13): the first whose QuantizeLinear/DequantizeLinear take "
                    "UINT2."
                  : "Opset 21 (IR 10): the first whose QuantizeLinear/DequantizeLinear take "
                    "UINT4; 2-bit codes would need opset 25.");
}

}  // namespace

void save_onnx(const std::string& path, const IntegerModel& model) {
  const std::string where = "save_onnx " + path + ": ";
  const std::vector<std::int64_t> logits_shape = check_model(model, where);
  bool two_bit = false;
  for (const IntegerLayer& layer : model.layers)
    two_bit = two_bit || layer.weight_bits == 2 || layer.output.bits == 2;

  GraphWriter graph("lowbit");
  std::vector<std::int64_t> pixels_dims{-1};
  pixels_dims.insert(pixels_dims.end(), model.input_shape.begin(), model.input_shape.end());
  graph.input(value_info("pixels", tensor_proto::kUint8, pixels_dims));
  std::string x = graph.node(
      "DequantizeLinear",
      {"pixels", graph.scalar("pixels.scale", model.input.scale),
       graph.constant("pixels.zero_point", tensor_proto::kUint8, {},
                      raw_codes({static_cast<std::uint8_t>(model.input.zero_point)}, 8))},
      "pixels.dequantized");
  // The zero point's fraction (255·mean is no integer): added once, in float.
  const double fraction =
      model.input.zero_point -
      std::ldexp(static_cast<double>(model.input_zero_point_fine), -model.input_fraction_bits);
  if (fraction != 0.0)
    x = graph.node("Add",
                   {x, graph.scalar("pixels.zero_point_fraction",
                                    static_cast<float>(fraction * model.input.scale))},
                   "pixels.normalized");
  bool flat = false;
  for (std::size_t i = 0; i < model.layers.size(); ++i) {
    const IntegerLayer& layer = model.layers[i];
    const std::string& name = layer.name;
    const std::int64_t out = layer.out_channels;
    const bool last = i + 1 == model.layers.size();

    const std::vector<std::int64_t> weight_dims =
        layer.linear
            ? std::vector<std::int64_t>{out, layer.in_channels}
            : std::vector<std::int64_t>{out, layer.in_channels, layer.kernel, layer.kernel};
    std::vector<std::uint8_t> weight_zero_point(layer.weight_zero_point.begin(),
                                                layer.weight_zero_point.end());
    const std::string weight =
        graph.node("DequantizeLinear",
                   {graph.constant(name + ".weight", code_type(layer.weight_bits), weight_dims,
                                   raw_codes(layer.weight_codes, layer.weight_bits)),
                    graph.constant(name + ".weight.scale", tensor_proto::kFloat, {out},
                                   raw_floats(layer.weight_scale)),
                    graph.constant(name + ".weight.zero_point", code_type(layer.weight_bits), {out},
                                   raw_codes(weight_zero_point, layer.weight_bits))},
                   name + ".weight.dequantized", {int_attribute("axis", 0)});

    // The bias is in the integer accumulator's unit, input scale × weight
    // scale / 2^accumulator_shift, each product rounded to float once. (An
    // 8-bit layer has no fractional bits: onnxruntime fuses it into an
    // integer kernel that takes the unit to be input scale × weight scale.)
    std::vector<float> bias_scale(static_cast<std::size_t>(out));
    const LayerInput read = layer_input(model, i);
    for (std::int64_t c = 0; c < out; ++c)
      bias_scale[c] = std::ldexp(read.scale * layer.weight_scale[c],
                                 -(read.fraction_bits + layer.accumulator_shift));
    const std::string bias_name = graph.node(
        "DequantizeLinear",
        {graph.constant(name + ".bias", tensor_proto::kInt32, {out}, raw_int32s(layer.bias)),
         graph.constant(name + ".bias.scale", tensor_proto::kFloat, {out}, raw_floats(bias_scale)),
         graph.constant(name + ".bias.zero_point", tensor_proto::kInt32, {out},
                        raw_int32s(std::vector<std::int32_t>(bias_scale.size(), 0)))},
        name + ".bias.dequantized", {int_attribute("axis", 0)});

    if (layer.linear) {
      if (!flat) x = graph.node("Flatten", {x}, name + ".flattened", {int_attribute("axis", 1)});
      flat = true;
      x = graph.node("Gemm", {x, weight, bias_name}, name + ".gemm", {int_attribute("transB", 1)});
    } else {
      const std::int64_t p = layer.padding, s = layer.stride, k = layer.kernel;
      x = graph.node("Conv", {x, weight, bias_name}, name + ".conv",
                     {ints_attribute("kernel_shape", {k, k}), ints_attribute("pads", {p, p, p, p}),
                      ints_attribute("strides", {s, s})});
    }
    if (layer.relu) x = graph.node("Relu", {x}, name + ".relu");
    x = requantize(graph, x, layer.output, out, name + ".output",
                   last && layer.pool == 0 ? "logits" : name + ".output");
    if (layer.pool > 0) {
      const std::vector<std::int64_t> window{layer.pool, layer.pool};
      x = graph.node("MaxPool", {x}, last ? "logits" : name + ".pooled",
                     {ints_attribute("kernel_shape", window), ints_attribute("strides", window)});
    }
  }
  std::vector<std::int64_t> logits_dims{-1};
  logits_dims.insert(logits_dims.end(), logits_shape.begin(), logits_shape.end());
  graph.output(value_info("logits", tensor_proto::kFloat, logits_dims));

  const Message opset = Message()
                            .bytes(opset_id_proto::kDomain, "")
                            .integer(opset_id_proto::kVersion, two_bit ? kTwoBitOpset : kOpset);
  const Message onnx =
      Message()
          .integer(model_proto::kIrVersion, two_bit ? kTwoBitIrVersion : kIrVersion)
          .bytes(model_proto::kProducerName, "lowbit")
          .bytes(model_proto::kDocString, doc_string(model, two_bit))
          .message(model_proto::kGraph, graph.proto())
          .message(model_proto::kOpsetImport, opset);
  write_file(path, {{onnx.wire().data(), onnx.wire().size()}});
}

}  // namespace lowbit
