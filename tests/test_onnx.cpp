// save_onnx(): the QDQ graph it writes runs in onnxruntime (tests/onnx_run.py)
// and gives the logits of a float reference of the same QDQ semantics;
// models that ONNX cannot express are refused before anything is written.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/data.hpp"
#include "lowbit/deploy.hpp"
#include "lowbit/error.hpp"
#include "test_util.hpp"
#include "train/checkpoint.hpp"
#include "train/session.hpp"
#include "trained_models.hpp"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------- reference

/// A batch of activations: `count` examples of `dims` ({C, H, W} or
/// {features}), row-major.
struct Activations {
  std::int64_t count = 0;
  std::vector<std::int64_t> dims;
  std::vector<float> values;
  /// Per value, a bound on how far another float evaluation of the same sum
  /// (any order, or an integer kernel's requantization) can be; empty: exact.
  std::vector<double> error;
  /// Per example: whether a quantizer met a value within its error of a
  /// rounding boundary, where another evaluation may take the next code.
  std::vector<bool> ambiguous;

  std::int64_t example_size() const {
    std::int64_t size = 1;
    for (const std::int64_t dim : dims) size *= dim;
    return size;
  }
};

/// DequantizeLinear: one float multiplication of the exact code difference.
float dequantize(std::int32_t code, std::int32_t zero_point, float scale) {
  return static_cast<float>(code - zero_point) * scale;
}

/// QuantizeLinear as ONNX defines it (x / scale in float, rounded half to
/// even), clamped to the grid's codes as lowbit's integer inference does.
std::int32_t quantize(float x, const CodeGrid& grid) {
  const float code = std::nearbyint(x / grid.scale) + static_cast<float>(grid.zero_point);
  return static_cast<std::int32_t>(
      std::clamp(code, static_cast<float>(grid.qmin), static_cast<float>(grid.qmax)));
}

Activations input_values(const IntegerModel& model, const std::vector<std::uint8_t>& pixels,
                         std::int64_t count) {
  Activations x{count, model.input_shape, {}, {}, std::vector<bool>(count, false)};
  for (const std::uint8_t p : pixels)
    x.values.push_back(dequantize(p, model.input.zero_point, model.input.scale));
  return x;
}

/// Conv or Gemm of the dequantized weights and bias, summed in double, then
/// ReLU: the values the layer's output grid quantizes. A float sum of n terms
/// in any order is within about n·ε·Σ|term| of the exact one; the error bound
/// is twice that and more, for the rounding of the products and of a fused
/// integer kernel's requantization multiplier.
Activations layer_values(const IntegerLayer& layer, const Activations& x, float input_scale) {
  const std::int64_t out = layer.out_channels;
  const std::int64_t taps = static_cast<std::int64_t>(layer.weight_codes.size()) / out;
  std::vector<float> weight(layer.weight_codes.size());
  std::vector<float> bias(static_cast<std::size_t>(out));
  for (std::int64_t o = 0; o < out; ++o) {
    for (std::int64_t t = 0; t < taps; ++t)
      weight[o * taps + t] = dequantize(layer.weight_codes[o * taps + t],
                                        layer.weight_zero_point[o], layer.weight_scale[o]);
    bias[o] = static_cast<float>(layer.bias[o]) *
              std::ldexp(input_scale * layer.weight_scale[o], -layer.accumulator_shift);
  }
  Activations y{x.count, {}, {}, {}, x.ambiguous};
  const auto add = [&](double sum, double magnitude) {
    y.values.push_back(static_cast<float>(sum));
    y.error.push_back(static_cast<double>(taps + 8) * std::numeric_limits<float>::epsilon() *
                      magnitude);
  };
  if (layer.linear) {
    y.dims = {out};
    for (std::int64_t n = 0; n < x.count; ++n)
      for (std::int64_t o = 0; o < out; ++o) {
        double sum = bias[o], magnitude = std::abs(bias[o]);
        for (std::int64_t i = 0; i < taps; ++i) {
          const double term = double{x.values[n * taps + i]} * weight[o * taps + i];
          sum += term;
          magnitude += std::abs(term);
        }
        add(sum, magnitude);
      }
  } else {
    const std::int64_t c_in = x.dims[0], h = x.dims[1], w = x.dims[2], k = layer.kernel;
    const std::int64_t s = layer.stride, p = layer.padding;
    y.dims = {out, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1};
    for (std::int64_t n = 0; n < x.count; ++n)
      for (std::int64_t o = 0; o < out; ++o)
        for (std::int64_t oy = 0; oy < y.dims[1]; ++oy)
          for (std::int64_t ox = 0; ox < y.dims[2]; ++ox) {
            double sum = bias[o], magnitude = std::abs(bias[o]);
            for (std::int64_t c = 0; c < c_in; ++c)
              for (std::int64_t ky = 0; ky < k; ++ky)
                for (std::int64_t kx = 0; kx < k; ++kx) {
                  const std::int64_t iy = oy * s - p + ky, ix = ox * s - p + kx;
                  if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                  const double term = double{x.values[((n * c_in + c) * h + iy) * w + ix]} *
                                      weight[((o * c_in + c) * k + ky) * k + kx];
                  sum += term;
                  magnitude += std::abs(term);
                }
            add(sum, magnitude);
          }
  }
  if (layer.relu)
    for (float& v : y.values) v = std::max(v, 0.0f);
  return y;
}

/// QuantizeLinear then DequantizeLinear on `grid`, and the max pooling after.
Activations requantized(Activations x, const CodeGrid& grid, std::int64_t pool) {
  const std::int64_t size = x.example_size();
  for (std::size_t i = 0; i < x.values.size(); ++i) {
    const double steps = static_cast<double>(x.values[i]) / grid.scale;
    const double below = std::floor(steps);
    const auto code = [&](double c) {
      return std::clamp(static_cast<std::int32_t>(c) + grid.zero_point, grid.qmin, grid.qmax);
    };
    if (code(below) != code(below + 1) && std::abs(steps - below - 0.5) <= x.error[i] / grid.scale)
      x.ambiguous[i / size] = true;
    x.values[i] = dequantize(quantize(x.values[i], grid), grid.zero_point, grid.scale);
  }
  x.error.clear();
  if (pool == 0) return x;
  const std::int64_t c_in = x.dims[0], h = x.dims[1], w = x.dims[2];
  Activations y{x.count, {c_in, h / pool, w / pool}, {}, {}, x.ambiguous};
  for (std::int64_t nc = 0; nc < x.count * c_in; ++nc)
    for (std::int64_t oy = 0; oy < y.dims[1]; ++oy)
      for (std::int64_t ox = 0; ox < y.dims[2]; ++ox) {
        float m = x.values[(nc * h + oy * pool) * w + ox * pool];
        for (std::int64_t ky = 0; ky < pool; ++ky)
          for (std::int64_t kx = 0; kx < pool; ++kx)
            m = std::max(m, x.values[(nc * h + oy * pool + ky) * w + ox * pool + kx]);
        y.values.push_back(m);
      }
  return y;
}

Activations reference_logits(const IntegerModel& model, const std::vector<std::uint8_t>& pixels,
                             std::int64_t count) {
  Activations x = input_values(model, pixels, count);
  float input_scale = model.input.scale;
  for (const IntegerLayer& layer : model.layers) {
    x = requantized(layer_values(layer, x, input_scale), layer.output, layer.pool);
    input_scale = layer.output.scale;
  }
  return x;
}

// ---------------------------------------------------------------- models

struct LayerSpec {
  std::string name;
  bool linear = false;
  std::int64_t out = 1, kernel = 1, stride = 1, padding = 0;
  int weight_bits = 8;
  bool relu = false;
  int output_bits = 8;
  std::int64_t pool = 0;
  bool narrow = false;  ///< output codes [1, 2^bits - 2] instead of the whole type
};

constexpr std::int64_t kExamples = 64;

std::vector<std::uint8_t> random_pixels(const std::vector<std::int64_t>& shape,
                                        std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> pixels(
      static_cast<std::size_t>(kExamples * shape[0] * shape[1] * shape[2]));
  for (std::uint8_t& p : pixels) p = static_cast<std::uint8_t>(rng() & 0xff);
  return pixels;
}

/// A model of seeded random codes whose output grids are calibrated, like a
/// trained model's, on the reference's values for `pixels`: a range near
/// theirs, not equal to it (a ReLU output's top a little clipped, so that
/// saturation occurs). A scale that is their span over the levels would be a
/// rational multiple of the lattice that sums of codes take, and put many
/// values on exact ties.
IntegerModel random_model(const std::vector<std::int64_t>& input_shape,
                          const std::vector<LayerSpec>& specs,
                          const std::vector<std::uint8_t>& pixels, std::uint32_t seed) {
  std::mt19937 rng(seed);
  const auto uniform = [&](float lo, float hi) {
    return std::uniform_real_distribution<float>(lo, hi)(rng);
  };
  const auto integer = [&](std::int32_t lo, std::int32_t hi) {
    return std::uniform_int_distribution<std::int32_t>(lo, hi)(rng);
  };
  IntegerModel model;
  model.input_shape = input_shape;
  const Normalization norm;
  model.input = {8, 1.0f / (255.0f * norm.std),
                 static_cast<std::int32_t>(std::lround(255.0f * norm.mean)), 0, 255};
  model.input_zero_point_fine = model.input.zero_point;  // an integer zero point
  Activations x = input_values(model, pixels, kExamples);
  float input_scale = model.input.scale;
  for (const LayerSpec& spec : specs) {
    IntegerLayer layer;
    layer.name = spec.name;
    layer.linear = spec.linear;
    layer.in_channels = spec.linear ? x.example_size() : x.dims[0];
    layer.out_channels = spec.out;
    layer.kernel = spec.kernel;
    layer.stride = spec.stride;
    layer.padding = spec.padding;
    layer.weight_bits = spec.weight_bits;
    layer.relu = spec.relu;
    layer.pool = spec.pool;
    const std::int32_t top = (1 << spec.weight_bits) - 1;
    const std::int64_t fan_in = layer.in_channels * spec.kernel * spec.kernel;
    for (std::int64_t i = 0; i < spec.out * fan_in; ++i)
      layer.weight_codes.push_back(static_cast<std::uint8_t>(integer(0, top)));
    for (std::int64_t o = 0; o < spec.out; ++o) {
      layer.weight_zero_point.push_back(integer(top / 4, top - top / 4));
      layer.weight_scale.push_back(uniform(1.4f, 2.6f) /
                                   (top * std::sqrt(static_cast<float>(fan_in))));
      layer.bias.push_back(static_cast<std::int32_t>(
          std::lround(uniform(-0.3f, 0.3f) / (input_scale * layer.weight_scale.back()))));
    }
    const Activations v = layer_values(layer, x, input_scale);
    const auto [lo, hi] = std::minmax_element(v.values.begin(), v.values.end());
    CodeGrid& grid = layer.output;
    grid.bits = spec.output_bits;
    grid.qmin = spec.narrow ? 1 : 0;
    grid.qmax = (1 << spec.output_bits) - 1 - grid.qmin;
    if (spec.relu) {
      grid.scale = uniform(0.8f, 1.0f) * *hi / static_cast<float>(grid.qmax - grid.qmin);
      grid.zero_point = grid.qmin;
    } else {
      grid.scale = uniform(0.9f, 1.1f) * (*hi - *lo) / static_cast<float>(grid.qmax - grid.qmin);
      grid.zero_point =
          std::clamp(grid.qmin + static_cast<std::int32_t>(std::lround(-*lo / grid.scale)),
                     grid.qmin, grid.qmax);
    }
    x = requantized(v, grid, spec.pool);
    input_scale = grid.scale;
    model.layers.push_back(std::move(layer));
  }
  return model;
}

/// Input 1×6×6; conv1 2@3×3 pad 1, ReLU, max pool 2; fc2 18 → 4, no ReLU.
std::vector<LayerSpec> small_cnn(int bits) {
  LayerSpec conv{"conv1", false, 2, 3, 1, 1, bits, true, bits, 2};
  LayerSpec fc{"fc2", true, 4, 1, 1, 0, bits, false, bits, 0};
  return {conv, fc};
}

const std::vector<std::int64_t> kSmallInput{1, 6, 6};

// ---------------------------------------------------------------- running

std::string quoted(const std::string& arg) {
  std::string text = "'";
  for (const char c : arg) text += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return text + "'";
}

/// The python3 that imports onnxruntime and numpy (scripts/python-with.sh),
/// or "" when there is none.
std::string onnxruntime_python() {
  static const std::string python = [] {
    const std::string command =
        quoted(std::string(LOWBIT_SOURCE_DIR) + "/scripts/python-with.sh") + " onnxruntime numpy";
    FILE* pipe = ::popen(command.c_str(), "r");
    if (pipe == nullptr) return std::string();
    std::string out;
    char buffer[256];
    while (std::fgets(buffer, sizeof buffer, pipe) != nullptr) out += buffer;
    const int status = ::pclose(pipe);
    if (status != 0) return std::string();
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
    return out;
  }();
  return python;
}

/// Runs the ONNX file `model_path` in onnxruntime on `examples` of `pixels`.
::testing::AssertionResult run_onnxruntime(const std::string& model_path, const IntegerModel& model,
                                           const std::vector<std::uint8_t>& pixels,
                                           std::int64_t examples, const fs::path& dir,
                                           std::vector<float>* logits) {
  const std::string python = onnxruntime_python();
  if (python.empty())
    return ::testing::AssertionFailure()
           << "no python3 that imports onnxruntime and numpy (scripts/python-with.sh found none): "
              "run `python3 -m pip install onnxruntime` (scripts/setup.sh does)";
  const fs::path pixels_path = dir / "pixels.u8", logits_path = dir / "logits.f32";
  const fs::path err_path = dir / "stderr.txt";
  std::ofstream(pixels_path, std::ios::binary)
      .write(reinterpret_cast<const char*>(pixels.data()),
             static_cast<std::streamsize>(pixels.size()));
  std::string command =
      quoted(python) + " " + quoted(std::string(LOWBIT_SOURCE_DIR) + "/tests/onnx_run.py") + " " +
      quoted(model_path) + " " + quoted(pixels_path.string()) + " " + std::to_string(examples);
  for (const std::int64_t dim : model.input_shape) command += " " + std::to_string(dim);
  command += " " + quoted(logits_path.string()) + " 2>" + quoted(err_path.string());
  const int status = std::system(command.c_str());
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return ::testing::AssertionFailure() << "onnxruntime failed (" << command << "):\n"
                                         << test::read_file(err_path);
  const std::string bytes = test::read_file(logits_path);
  logits->resize(bytes.size() / sizeof(float));
  std::memcpy(logits->data(), bytes.data(), logits->size() * sizeof(float));
  return ::testing::AssertionSuccess();
}

/// Saves `model`, runs it in onnxruntime and compares its logits with the
/// reference's, as codes of the last grid. onnxruntime sums in float in an
/// order of its own, or in integers where it fuses a QDQ group into an
/// integer kernel; the reference sums in double. Where the bound on that
/// difference keeps every value of an example off the rounding boundaries,
/// all evaluations take the same codes: its logits must be equal. Elsewhere
/// a code can differ by one, and that step carries on through the layers
/// after it, scaled by their weights (6 steps of an 8-bit output, seen with
/// 4-bit activations before it), so those examples are only counted.
void expect_onnxruntime_matches_reference(const IntegerModel& model,
                                          const std::vector<std::uint8_t>& pixels) {
  const test::ScratchDirectory dir;
  const std::string path = (dir.path() / "model.onnx").string();
  save_onnx(path, model);
  std::vector<float> got;
  ASSERT_TRUE(run_onnxruntime(path, model, pixels, kExamples, dir.path(), &got));
  const Activations expected = reference_logits(model, pixels, kExamples);
  ASSERT_EQ(got.size(), expected.values.size());

  const CodeGrid& grid = model.layers.back().output;
  const std::int64_t classes = expected.example_size();
  std::int64_t equal = 0, compared = 0, max_steps = 0;
  std::set<std::int32_t> codes;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const std::int32_t want = quantize(expected.values[i], grid);
    const std::int32_t have = quantize(got[i], grid);
    // DequantizeLinear's output: exactly a value of the grid.
    ASSERT_EQ(got[i], dequantize(have, grid.zero_point, grid.scale)) << "logit " << i;
    equal += want == have;
    max_steps = std::max<std::int64_t>(max_steps, std::abs(want - have));
    codes.insert(want);
    if (expected.ambiguous[i / classes]) continue;
    ++compared;
    EXPECT_EQ(have, want) << "logit " << i % classes << " of example " << i / classes;
  }
  const auto ambiguous = std::count(expected.ambiguous.begin(), expected.ambiguous.end(), true);
  std::printf(
      "[ onnxruntime ] %lld of %zu logits equal the reference (max difference %lld steps); "
      "%lld compared, the rest in %lld examples that met a rounding boundary within float "
      "error; %zu distinct codes\n",
      static_cast<long long>(equal), got.size(), static_cast<long long>(max_steps),
      static_cast<long long>(compared), static_cast<long long>(ambiguous), codes.size());
  // The data exercise the grid and the comparison covers most examples.
  EXPECT_GE(codes.size(), 3u);
  EXPECT_LE(ambiguous, kExamples / 8);
}

/// The fake-quant model's top-1 on `test`: lowbit eval's.
std::vector<std::int32_t> fake_quant_top1(const std::string& checkpoint_path, const Dataset& test) {
  const Checkpoint checkpoint = read_checkpoint(checkpoint_path);
  DatasetSplits data;
  data.test = test;
  const auto cpu = make_cpu_backend();
  Session session(checkpoint.options, *cpu, data);
  restore_checkpoint(checkpoint, session.network(), *cpu, nullptr);
  session.network().set_steps_done(checkpoint.progress.steps_done);
  return session.predict();
}

// Trained checkpoints exported to ONNX give, in onnxruntime, the fake-quant
// model's top-1 on at least 99.9% of 2,000 test images. Their logits are
// those of lowbit's integer inference (the same grid) except where a value
// lands on the other side of a rounding boundary: onnxruntime sums 2- and
// 4-bit layers in float (measured: every logit equal), and runs 8-bit ones
// as QLinearConv/QGemm, which requantize with a float multiplier and ties to
// even where lowbit uses fixed point (measured: 97.8% equal, the rest one
// step). A step carries on through later layers, scaled by their weights, so
// the bound is on the share of equal logits, not on the size of a difference.
TEST(Onnx, TrainedModelsRunInOnnxRuntimeLikeFakeQuant) {
  LOWBIT_REQUIRE_FASHION_MNIST();
  const Dataset test = load_mnist_test_split(test::fashion_mnist_dir(), 2000);
  const auto cpu = make_cpu_backend();
  for (const int bits : {2, 4, 8}) {
    SCOPED_TRACE(std::to_string(bits) + " bits");
    const std::string& checkpoint = test::trained_checkpoint(bits);
    const IntegerModel model = integer_model(checkpoint);
    const test::ScratchDirectory dir;
    const std::string path = (dir.path() / "model.onnx").string();
    save_onnx(path, model);
    std::vector<float> logits;
    ASSERT_TRUE(run_onnxruntime(path, model, test.images, test.count, dir.path(), &logits));
    const std::vector<std::uint8_t> codes = integer_inference(model, test.images, test.count, *cpu);
    ASSERT_EQ(logits.size(), codes.size());
    const CodeGrid& grid = model.layers.back().output;
    const std::size_t classes = codes.size() / static_cast<std::size_t>(test.count);
    const std::vector<std::int32_t> fake_quant = fake_quant_top1(checkpoint, test);
    std::int64_t agreeing = 0, equal = 0, max_steps = 0;
    for (std::size_t n = 0; n < static_cast<std::size_t>(test.count); ++n) {
      const float* row = logits.data() + n * classes;
      agreeing += std::max_element(row, row + classes) - row == fake_quant[n];
      for (std::size_t c = 0; c < classes; ++c) {
        const std::int32_t steps = std::abs(quantize(row[c], grid) - codes[n * classes + c]);
        equal += steps == 0;
        max_steps = std::max<std::int64_t>(max_steps, steps);
      }
    }
    std::printf(
        "[ onnxruntime ] %d bits: top-1 of fake quant on %lld of %lld; %lld of %zu logits "
        "equal the integer path's (max %lld steps)\n",
        bits, static_cast<long long>(agreeing), static_cast<long long>(test.count),
        static_cast<long long>(equal), codes.size(), static_cast<long long>(max_steps));
    EXPECT_GE(agreeing * 1000, test.count * 999);
    EXPECT_GE(equal * 100, static_cast<std::int64_t>(codes.size()) * (bits == 8 ? 95 : 99));
  }
}

// ---------------------------------------------------------------- header

/// What a ModelProto says about itself (its top-level fields other than the
/// graph), read with a protobuf parser of its own.
struct ModelHeader {
  std::int64_t ir_version = -1;
  std::vector<std::pair<std::string, std::int64_t>> opsets;  ///< domain, version
  std::string producer;
  std::string doc;
};

/// The fields of one message: number → varint value or bytes; false when
/// `bytes` is not a message of varint and length-delimited fields.
bool parse_fields(const std::string& bytes,
                  std::vector<std::pair<int, std::string>>* length_delimited,
                  std::vector<std::pair<int, std::uint64_t>>* varints) {
  std::size_t at = 0;
  const auto varint = [&](std::uint64_t* value) {
    *value = 0;
    for (int shift = 0; at < bytes.size() && shift < 64; shift += 7) {
      const auto byte = static_cast<std::uint8_t>(bytes[at++]);
      *value |= static_cast<std::uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) return true;
    }
    return false;
  };
  while (at < bytes.size()) {
    std::uint64_t key = 0, value = 0;
    if (!varint(&key) || !varint(&value)) return false;
    const int field = static_cast<int>(key >> 3);
    if ((key & 7) == 0) {
      varints->emplace_back(field, value);
    } else if ((key & 7) == 2 && value <= bytes.size() - at) {
      length_delimited->emplace_back(field, bytes.substr(at, value));
      at += value;
    } else {
      return false;
    }
  }
  return true;
}

::testing::AssertionResult read_header(const std::string& path, ModelHeader* header) {
  std::vector<std::pair<int, std::string>> strings;
  std::vector<std::pair<int, std::uint64_t>> varints;
  if (!parse_fields(test::read_file(path), &strings, &varints))
    return ::testing::AssertionFailure() << path << " is not a protobuf message";
  for (const auto& [field, value] : varints)
    if (field == 1) header->ir_version = static_cast<std::int64_t>(value);
  for (const auto& [field, value] : strings) {
    if (field == 2) header->producer = value;
    if (field == 6) header->doc = value;
    if (field != 8) continue;
    std::vector<std::pair<int, std::string>> domain;
    std::vector<std::pair<int, std::uint64_t>> version;
    if (!parse_fields(value, &domain, &version) || domain.size() != 1 || version.size() != 1)
      return ::testing::AssertionFailure() << "an opset_import is not {domain, version}";
    header->opsets.emplace_back(domain[0].second, static_cast<std::int64_t>(version[0].second));
  }
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------- tests

TEST(Onnx, EightBitModelMatchesTheQdqReferenceInOnnxRuntime) {
  const auto pixels = random_pixels(kSmallInput, 1);
  expect_onnxruntime_matches_reference(random_model(kSmallInput, small_cnn(8), pixels, 11), pixels);
}

TEST(Onnx, FourBitModelMatchesTheQdqReferenceInOnnxRuntime) {
  const auto pixels = random_pixels(kSmallInput, 2);
  expect_onnxruntime_matches_reference(random_model(kSmallInput, small_cnn(4), pixels, 12), pixels);
}

TEST(Onnx, TwoBitModelMatchesTheQdqReferenceInOnnxRuntime) {
  const auto pixels = random_pixels(kSmallInput, 3);
  expect_onnxruntime_matches_reference(random_model(kSmallInput, small_cnn(2), pixels, 13), pixels);
}

// Every width in one graph, a strided conv, a Gemm after a Gemm (no second
// Flatten) and a grid narrower than its type (a Clip before QuantizeLinear).
TEST(Onnx, MixedWidthModelMatchesTheQdqReferenceInOnnxRuntime) {
  const std::vector<std::int64_t> input{2, 7, 7};
  const std::vector<LayerSpec> specs{{"conv1", false, 3, 3, 2, 1, 8, true, 4, 2},
                                     {"fc2", true, 6, 1, 1, 0, 2, true, 4, 0, true},
                                     {"fc3", true, 3, 1, 1, 0, 4, false, 8, 0}};
  const auto pixels = random_pixels(input, 4);
  expect_onnxruntime_matches_reference(random_model(input, specs, pixels, 14), pixels);
}

TEST(Onnx, DeclaresOpset21AndIr10WithoutTwoBitTypes) {
  const test::ScratchDirectory dir;
  const auto pixels = random_pixels(kSmallInput, 5);
  std::vector<LayerSpec> specs = small_cnn(8);
  specs[1].weight_bits = 4;
  const std::string path = (dir.path() / "model.onnx").string();
  save_onnx(path, random_model(kSmallInput, specs, pixels, 15));
  ModelHeader header;
  ASSERT_TRUE(read_header(path, &header));
  EXPECT_EQ(header.ir_version, 10);
  EXPECT_EQ(header.opsets, (std::vector<std::pair<std::string, std::int64_t>>{{"", 21}}));
  EXPECT_EQ(header.producer, "lowbit");
  EXPECT_NE(header.doc.find("Opset 21"), std::string::npos) << header.doc;
  EXPECT_NE(header.doc.find("UINT8, UINT4."), std::string::npos) << header.doc;
}

TEST(Onnx, DeclaresOpset25AndIr13ForTwoBitTypes) {
  const test::ScratchDirectory dir;
  const auto pixels = random_pixels(kSmallInput, 6);
  std::vector<LayerSpec> specs = small_cnn(8);
  specs[0].output_bits = 2;
  const std::string path = (dir.path() / "model.onnx").string();
  save_onnx(path, random_model(kSmallInput, specs, pixels, 16));
  ModelHeader header;
  ASSERT_TRUE(read_header(path, &header));
  EXPECT_EQ(header.ir_version, 13);
  EXPECT_EQ(header.opsets, (std::vector<std::pair<std::string, std::int64_t>>{{"", 25}}));
  EXPECT_NE(header.doc.find("Opset 25"), std::string::npos) << header.doc;
  EXPECT_NE(header.doc.find("UINT8, UINT2."), std::string::npos) << header.doc;
}

/// Expects save_onnx() of `model` to throw a lowbit::Error that mentions
/// `needle`, and to leave its directory empty.
void expect_refused(const IntegerModel& model, const std::string& needle) {
  const test::ScratchDirectory dir;
  const std::string path = (dir.path() / "model.onnx").string();
  EXPECT_TRUE(test::throws_mentioning([&] { save_onnx(path, model); }, needle));
  EXPECT_EQ(dir.names(), std::vector<std::string>{});
}

TEST(Onnx, RefusesThreeBitWeightsWithoutWriting) {
  const auto pixels = random_pixels(kSmallInput, 7);
  IntegerModel model = random_model(kSmallInput, small_cnn(4), pixels, 17);
  model.layers[0].weight_bits = 3;  // its 4-bit codes would not fit either: the width comes first
  expect_refused(model, "layer 0 \"conv1\" weight is 3 bits wide");
}

TEST(Onnx, RefusesASixteenBitOutputGridWithoutWriting) {
  const auto pixels = random_pixels(kSmallInput, 8);
  IntegerModel model = random_model(kSmallInput, small_cnn(8), pixels, 18);
  model.layers[1].output.bits = 16;
  expect_refused(model, "layer 1 \"fc2\" output grid is 16 bits wide");
}

TEST(Onnx, RefusesAnEmptyModelWithoutWriting) {
  IntegerModel model;
  model.input_shape = kSmallInput;
  expect_refused(model, "the model has no layers");
}

}  // namespace
}  // namespace lowbit
