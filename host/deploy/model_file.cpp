// The integer model as safetensors. Tensors, per layer L:
//   L.weight.codes        U8  packed codes (pack_codes: first code in the low bits)
//   L.weight.scale        F32 [out]
//   L.weight.zero_point   I32 [out]
//   L.bias                I32 [out], at input scale × weight scale / 2^accumulator_shift
//   L.requant.multiplier  I32 [out]  fixed point, docs/numerics.md
//   L.requant.shift       I32 [out]
//   L.output.scale        F32 [1], L.output.zero_point I32 [1]
// and input.scale F32 [1], input.zero_point I32 [1] (rounded) and
// input.zero_point_fine I32 [1] (with input_fraction_bits). The metadata holds the
// graph ("lowbit.model": JSON with the shapes, widths, grids' code ranges,
// ReLU and pooling of each layer), the widths and the rounding family.
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "lowbit/deploy.hpp"
#include "lowbit/error.hpp"
#include "lowbit/ref.hpp"
#include "lowbit/safetensors.hpp"

namespace lowbit {
namespace {

using safetensors::DType;
using safetensors::Tensor;

constexpr const char* kFormat = "lowbit-integer-model-1";

template <class T>
Tensor make_tensor(std::string name, DType dtype, std::vector<std::int64_t> shape,
                   const std::vector<T>& values) {
  Tensor t{std::move(name), dtype, std::move(shape), {}};
  t.data.resize(values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(t.data.data(), values.data(), t.data.size());
  return t;
}

/// The elements of tensor `name` of `file`, which must have this dtype and
/// element count.
template <class T>
std::vector<T> read_tensor(const safetensors::File& file, const std::string& path,
                           const std::string& name, DType dtype, std::int64_t count) {
  for (const Tensor& t : file.tensors) {
    if (t.name != name) continue;
    LOWBIT_EXPECTS(t.dtype == dtype && t.data.size() == static_cast<std::size_t>(count) * sizeof(T),
                   path + ": " + name + " should hold " + std::to_string(count) + " elements of " +
                       (dtype == DType::F32   ? "F32"
                        : dtype == DType::I32 ? "I32"
                                              : "U8"));
    std::vector<T> values(static_cast<std::size_t>(count));
    if (count > 0) std::memcpy(values.data(), t.data.data(), t.data.size());
    return values;
  }
  throw Error(path + ": the integer model has no tensor " + name, __FILE__, __LINE__);
}

nlohmann::json grid_json(const CodeGrid& g) {
  return {{"bits", g.bits}, {"qmin", g.qmin}, {"qmax", g.qmax}};
}

void check_grid(const CodeGrid& g, const std::string& path, const std::string& what) {
  const std::int32_t top = (1 << g.bits) - 1;
  LOWBIT_EXPECTS((g.bits == 2 || g.bits == 4 || g.bits == 8) && g.qmin >= 0 && g.qmin < g.qmax &&
                     g.qmax <= top && std::isfinite(g.scale) && g.scale > 0.0f,
                 path + ": " + what +
                     " is no valid grid (2, 4 or 8 bits, 0 <= qmin < qmax < "
                     "2^bits, a positive finite scale)");
}

}  // namespace

void save_integer_model(const std::string& path, const IntegerModel& model) {
  safetensors::File file;
  nlohmann::json layers = nlohmann::json::array();
  file.tensors.push_back(
      make_tensor("input.scale", DType::F32, {1}, std::vector{model.input.scale}));
  file.tensors.push_back(
      make_tensor("input.zero_point", DType::I32, {1}, std::vector{model.input.zero_point}));
  file.tensors.push_back(make_tensor("input.zero_point_fine", DType::I32, {1},
                                     std::vector{model.input_zero_point_fine}));
  for (std::size_t index = 0; index < model.layers.size(); ++index) {
    const IntegerLayer& l = model.layers[index];
    const auto n = static_cast<std::int64_t>(l.weight_codes.size());
    std::vector<std::uint8_t> packed(static_cast<std::size_t>(packed_bytes(n, l.weight_bits)));
    ref::pack_codes(l.weight_codes.data(), n, l.weight_bits, packed.data());
    std::vector<std::int32_t> multiplier, shift;
    for (const FixedPointMultiplier& m : requantization_multipliers(model, index)) {
      multiplier.push_back(m.multiplier);
      shift.push_back(m.shift);
    }
    const std::int64_t out = l.out_channels;
    file.tensors.push_back(make_tensor(l.name + ".weight.codes", DType::U8,
                                       {static_cast<std::int64_t>(packed.size())}, packed));
    file.tensors.push_back(
        make_tensor(l.name + ".weight.scale", DType::F32, {out}, l.weight_scale));
    file.tensors.push_back(
        make_tensor(l.name + ".weight.zero_point", DType::I32, {out}, l.weight_zero_point));
    file.tensors.push_back(make_tensor(l.name + ".bias", DType::I32, {out}, l.bias));
    file.tensors.push_back(
        make_tensor(l.name + ".requant.multiplier", DType::I32, {out}, multiplier));
    file.tensors.push_back(make_tensor(l.name + ".requant.shift", DType::I32, {out}, shift));
    file.tensors.push_back(
        make_tensor(l.name + ".output.scale", DType::F32, {1}, std::vector{l.output.scale}));
    file.tensors.push_back(make_tensor(l.name + ".output.zero_point", DType::I32, {1},
                                       std::vector{l.output.zero_point}));
    layers.push_back({{"name", l.name},
                      {"kind", l.linear ? "linear" : "conv2d"},
                      {"in_channels", l.in_channels},
                      {"out_channels", l.out_channels},
                      {"kernel", l.kernel},
                      {"stride", l.stride},
                      {"padding", l.padding},
                      {"weight_bits", l.weight_bits},
                      {"accumulator_shift", l.accumulator_shift},
                      {"relu", l.relu},
                      {"output", grid_json(l.output)},
                      {"pool", l.pool}});
  }
  const nlohmann::json description = {
      {"format", kFormat},
      {"graph", "lenet5"},
      {"input_shape", model.input_shape},
      {"input", grid_json(model.input)},
      {"input_fraction_bits", model.input_fraction_bits},
      {"normalization", {{"mean", model.normalization.mean}, {"std", model.normalization.std}}},
      {"rounding", to_string(model.rounding)},
      {"range", to_string(model.range)},
      {"layers", layers}};
  file.metadata["lowbit.model"] = description.dump();
  file.metadata["lowbit.format"] = kFormat;
  file.metadata["lowbit.rounding"] = to_string(model.rounding);
  std::string widths;
  for (const IntegerLayer& l : model.layers)
    widths += (widths.empty() ? "" : ",") + l.name + "=" + std::to_string(l.weight_bits) + "/" +
              std::to_string(l.output.bits);
  file.metadata["lowbit.widths"] = widths;  // layer=weight bits/output bits
  safetensors::save(path, file);
}

bool is_integer_model_file(const std::string& path) {
  return safetensors::load(path).metadata.count("lowbit.format") != 0;
}

IntegerModel load_integer_model(const std::string& path) {
  const safetensors::File file = safetensors::load(path);
  const auto meta = file.metadata.find("lowbit.model");
  LOWBIT_EXPECTS(meta != file.metadata.end() && file.metadata.count("lowbit.format") &&
                     file.metadata.at("lowbit.format") == kFormat,
                 path + ": not a lowbit integer model (no " + kFormat + " metadata)");
  IntegerModel model;
  try {
    const nlohmann::json j = nlohmann::json::parse(meta->second);
    model.input_shape = j.at("input_shape").get<std::vector<std::int64_t>>();
    model.normalization = {j.at("normalization").at("mean").get<float>(),
                           j.at("normalization").at("std").get<float>()};
    const std::string rounding = j.at("rounding").get<std::string>();
    model.rounding = rounding == "pytorch" ? Rounding::pytorch : Rounding::tensorflow;
    const std::string range = j.at("range").get<std::string>();
    model.range = range == "lsq"      ? RangeMode::lsq
                  : range == "lagged" ? RangeMode::lagged
                                      : RangeMode::ema;
    const auto grid = [](const nlohmann::json& g) {
      return CodeGrid{g.at("bits").get<int>(), 0.0f, 0, g.at("qmin").get<std::int32_t>(),
                      g.at("qmax").get<std::int32_t>()};
    };
    model.input = grid(j.at("input"));
    model.input_fraction_bits = j.at("input_fraction_bits").get<int>();
    for (const nlohmann::json& l : j.at("layers")) {
      IntegerLayer layer;
      layer.name = l.at("name").get<std::string>();
      layer.linear = l.at("kind").get<std::string>() == "linear";
      layer.in_channels = l.at("in_channels").get<std::int64_t>();
      layer.out_channels = l.at("out_channels").get<std::int64_t>();
      layer.kernel = l.at("kernel").get<std::int64_t>();
      layer.stride = l.at("stride").get<std::int64_t>();
      layer.padding = l.at("padding").get<std::int64_t>();
      layer.weight_bits = l.at("weight_bits").get<int>();
      layer.accumulator_shift = l.at("accumulator_shift").get<int>();
      layer.relu = l.at("relu").get<bool>();
      layer.output = grid(l.at("output"));
      layer.pool = l.at("pool").get<std::int64_t>();
      model.layers.push_back(std::move(layer));
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": malformed lowbit.model metadata: " + e.what(), __FILE__, __LINE__);
  }
  LOWBIT_EXPECTS(model.input_shape.size() == 3 && !model.layers.empty(),
                 path + ": the model needs a [C, H, W] input and at least one layer");

  model.input.scale = read_tensor<float>(file, path, "input.scale", DType::F32, 1)[0];
  model.input.zero_point =
      read_tensor<std::int32_t>(file, path, "input.zero_point", DType::I32, 1)[0];
  check_grid(model.input, path, "the input grid");
  model.input_zero_point_fine =
      read_tensor<std::int32_t>(file, path, "input.zero_point_fine", DType::I32, 1)[0];
  const int fraction = model.input_fraction_bits;
  LOWBIT_EXPECTS(fraction >= 0 && fraction <= 16 && model.input_zero_point_fine >= 0 &&
                     model.input_zero_point_fine <= (255 << fraction) &&
                     std::abs(model.input_zero_point_fine - (model.input.zero_point << fraction)) <=
                         (1 << fraction),
                 path + ": the input's fine zero point does not match its grid");
  for (std::size_t index = 0; index < model.layers.size(); ++index) {
    IntegerLayer& l = model.layers[index];
    const std::string& name = l.name;
    LOWBIT_EXPECTS(l.in_channels > 0 && l.out_channels > 0 && l.kernel > 0 && l.stride > 0 &&
                       l.padding >= 0 && l.pool >= 0 && l.accumulator_shift >= 0 &&
                       l.accumulator_shift <= 30 && l.out_channels <= (1 << 20) &&
                       l.in_channels * l.kernel * l.kernel <= (1 << 20),
                   path + ": layer " + name + " has an invalid shape");
    LOWBIT_EXPECTS(l.weight_bits == 2 || l.weight_bits == 4 || l.weight_bits == 8,
                   path + ": layer " + name + " has " + std::to_string(l.weight_bits) +
                       "-bit weights; 2, 4 or 8 expected");
    const std::int64_t out = l.out_channels;
    const std::int64_t n = out * l.in_channels * l.kernel * l.kernel;
    const auto packed = read_tensor<std::uint8_t>(file, path, name + ".weight.codes", DType::U8,
                                                  packed_bytes(n, l.weight_bits));
    l.weight_codes.resize(static_cast<std::size_t>(n));
    ref::unpack_codes(packed.data(), n, l.weight_bits, l.weight_codes.data());
    l.weight_scale = read_tensor<float>(file, path, name + ".weight.scale", DType::F32, out);
    l.weight_zero_point =
        read_tensor<std::int32_t>(file, path, name + ".weight.zero_point", DType::I32, out);
    l.bias = read_tensor<std::int32_t>(file, path, name + ".bias", DType::I32, out);
    l.output.scale = read_tensor<float>(file, path, name + ".output.scale", DType::F32, 1)[0];
    l.output.zero_point =
        read_tensor<std::int32_t>(file, path, name + ".output.zero_point", DType::I32, 1)[0];
    check_grid(l.output, path, name + "'s output grid");
    for (std::int64_t c = 0; c < out; ++c) {
      const float s = l.weight_scale[static_cast<std::size_t>(c)];
      const std::int32_t z = l.weight_zero_point[static_cast<std::size_t>(c)];
      LOWBIT_EXPECTS(
          std::isfinite(s) && s > 0.0f && z >= 0 && z < (1 << l.weight_bits),
          path + ": " + name + "'s weight grid of channel " + std::to_string(c) + " is invalid");
    }
    // The stored multipliers must be the ones the scales give.
    const auto multiplier =
        read_tensor<std::int32_t>(file, path, name + ".requant.multiplier", DType::I32, out);
    const auto shift =
        read_tensor<std::int32_t>(file, path, name + ".requant.shift", DType::I32, out);
    const std::vector<FixedPointMultiplier> expected = requantization_multipliers(model, index);
    for (std::size_t c = 0; c < expected.size(); ++c)
      LOWBIT_EXPECTS(multiplier[c] == expected[c].multiplier && shift[c] == expected[c].shift,
                     path + ": " + name + "'s requantization of channel " + std::to_string(c) +
                         " does not follow from its scales");
  }
  return model;
}

}  // namespace lowbit
