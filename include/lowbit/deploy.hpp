// Deployment of a trained quantized model: its integer form (codes, scales,
// zero points, int32 biases and fixed-point requantization), saved packed as
// safetensors or as an ONNX QDQ graph, and run with integer arithmetic only.
//
// Codes are unsigned integers in [0, 2^bits) held one per byte; a code c of a
// grid stands for (c - zero_point)·scale. The fake-quant weights of training
// are exactly these values, bit for bit; see docs/numerics.md for the
// arithmetic of integer inference and where it can differ from fake quant.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lowbit/backend.hpp"
#include "lowbit/graph.hpp"
#include "lowbit/integer_element.hpp"
#include "lowbit/types.hpp"

namespace lowbit {

/// An integer grid: codes in [qmin, qmax] ⊆ [0, 2^bits - 1], value
/// (code - zero_point)·scale.
struct CodeGrid {
  int bits = 8;
  float scale = 1.0f;
  std::int32_t zero_point = 0;
  std::int32_t qmin = 0;
  std::int32_t qmax = 255;
};

/// A Conv2d (or a Linear: kernel 1 on [N, features, 1, 1]) with integer
/// weights, its ReLU if any, the quantizer of its output and the max pooling
/// after that quantizer, if any.
struct IntegerLayer {
  std::string name;  ///< the graph's layer name: "conv1", "fc3"
  bool linear = false;
  std::int64_t in_channels = 1, out_channels = 1, kernel = 1, stride = 1, padding = 0;
  int weight_bits = 8;
  /// [out, in, kernel, kernel] codes in [0, 2^weight_bits).
  std::vector<std::uint8_t> weight_codes;
  std::vector<float> weight_scale;              ///< per output channel
  std::vector<std::int32_t> weight_zero_point;  ///< per output channel
  /// The accumulator's fractional bits: each sum of products is scaled by
  /// 2^accumulator_shift before the bias is added, so the bias keeps that
  /// much of its fraction (at 4 bits one unit of input scale × weight scale
  /// can be a third of an output step). As large as int32 allows.
  int accumulator_shift = 0;
  /// Per output channel, in units of input scale × weight_scale[c] /
  /// 2^(input fraction bits + accumulator_shift): the accumulator's scale.
  std::vector<std::int32_t> bias;
  bool relu = false;
  CodeGrid output;        ///< the activation quantizer's grid
  std::int64_t pool = 0;  ///< max pooling window (= stride) after it; 0: none
};

/// A sequential quantized CNN in integer form: the input grid, then layers
/// in order (a Linear after a Conv2d reads its input flattened, C·H·W).
struct IntegerModel {
  /// One example: [channels, height, width].
  std::vector<std::int64_t> input_shape;
  /// Input codes are raw 8-bit pixels p; the trained model saw
  /// (p/255 - mean)/std = (p - 255·mean)·scale with scale 1/(255·std).
  Normalization normalization;
  /// The input grid, with the zero point 255·mean rounded (for formats that
  /// need an integer: ONNX's DequantizeLinear).
  CodeGrid input;
  /// The zero point 255·mean in fixed point, input_zero_point_fine /
  /// 2^input_fraction_bits: the first layer subtracts it from each pixel
  /// shifted left by input_fraction_bits (integer_conv2d's x_fraction_bits).
  std::int32_t input_zero_point_fine = 0;
  int input_fraction_bits = 0;
  std::vector<IntegerLayer> layers;
  Rounding rounding = Rounding::tensorflow;
  RangeMode range = RangeMode::ema;
};

/// The integer form of a checkpoint trained by `lowbit train`: each weight's
/// fake-quant value as a code, each activation quantizer's final range (EMA)
/// or step (LSQ) as a grid. Throws lowbit::Error when the model cannot be
/// expressed: float weights or activations, a layer still in its quant delay,
/// a width other than 2, 4 or 8 bits, or a graph that is not sequential.
IntegerModel integer_model(const std::string& checkpoint_path);

/// Writes `model` as safetensors: weights as packed codes (pack_codes), grids
/// and int32 biases, and metadata naming the graph, widths and rounding.
/// Written as safetensors::save() writes (atomic for a regular file).
void save_integer_model(const std::string& path, const IntegerModel& model);

/// Reads what save_integer_model() wrote, verifying every field.
IntegerModel load_integer_model(const std::string& path);

/// Whether the safetensors file at `path` is one save_integer_model() wrote
/// (rather than a training checkpoint). Throws for an unreadable file.
bool is_integer_model_file(const std::string& path);

/// Writes `model` as a standard ONNX QDQ graph that onnxruntime runs: input
/// "pixels" (uint8 [N, C, H, W]) through DequantizeLinear with the input
/// grid; each weight as an initializer of codes (UINT8, UINT4 or UINT2, the
/// sub-byte types packed as ONNX packs them) with per-output-channel scale
/// and zero point through DequantizeLinear; each bias as int32 through
/// DequantizeLinear (scale input scale × weight scale); Conv or Gemm; Relu;
/// QuantizeLinear and DequantizeLinear of each output grid; MaxPool; Flatten
/// before the first Gemm; output "logits", the dequantized last codes
/// (float [N, classes]). A grid narrower than its type ([qmin, qmax] inside
/// [0, 2^bits - 1]) is clipped to its range before QuantizeLinear, which
/// only saturates at the type's. 2- and 4-bit grids are written per axis 1
/// with one value per channel, the same arithmetic: onnxruntime 1.32 cannot
/// run the per-tensor UINT4/UINT2 form next to MaxPool or Clip. Opset 21
/// (IR 10; UINT4, UINT8), 25 (IR 13) where a 2-bit type is needed; the doc
/// string says which. QuantizeLinear rounds ties to even, in float: a value
/// on or within float error of a rounding boundary can take the
/// neighbouring code of integer_inference(). Throws lowbit::Error, before
/// writing anything, for an empty model, a width other than 2, 4 or 8 bits
/// (an input grid other than 8), or inconsistent shapes or sizes. Written as
/// write_file() writes.
void save_onnx(const std::string& path, const IntegerModel& model);

/// What layer `index` of `model` reads: the codes' scale, and their zero
/// point with its fractional bits (only the first layer's has any).
struct LayerInput {
  float scale = 1.0f;
  std::int32_t zero_point = 0;
  int fraction_bits = 0;
};
LayerInput layer_input(const IntegerModel& model, std::size_t index);

/// Each output channel's requantization of layer `index`:
/// fixed_point_multiplier(input scale·weight_scale[c]/(output.scale·
/// 2^(input fraction_bits + accumulator_shift))), taken in double.
std::vector<FixedPointMultiplier> requantization_multipliers(const IntegerModel& model,
                                                             std::size_t index);

/// Runs `model` on `count` examples of 8-bit pixels (input_shape each) with
/// integer arithmetic only, on `backend`; returns the output codes,
/// [count, classes]. The prediction is the first maximum code.
std::vector<std::uint8_t> integer_inference(const IntegerModel& model,
                                            const std::vector<std::uint8_t>& pixels,
                                            std::int64_t count, Backend& backend);

/// Integer inference on a test set, beside the fake-quant model it came from.
struct IntegerEvalReport {
  std::string device;
  std::int64_t examples = 0;
  double accuracy = 0.0;  ///< of integer inference
  /// From a training checkpoint only: its fake-quant eval (lowbit eval) on
  /// the same images, and where the two give the same top-1.
  bool compared = false;
  double fake_quant_accuracy = 0.0;
  std::int64_t agreeing = 0;
  std::vector<std::int64_t> disagreeing;  ///< test indices whose top-1s differ
};

/// Integer-only inference on the test split of `data_dir` (t10k-*; the first
/// `limit_test`, 0: all) on `backend`, of a file save_integer_model() wrote
/// or of a training checkpoint, which is converted with integer_model() and
/// also evaluated with fake quant for the comparison.
IntegerEvalReport evaluate_integer(const std::string& path, const std::string& data_dir,
                                   std::int64_t limit_test, Backend& backend);

}  // namespace lowbit
