#include "train/checkpoint.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "lowbit/error.hpp"
#include "lowbit/graph.hpp"
#include "lowbit/lr_schedule.hpp"
#include "lowbit/quantize.hpp"

namespace lowbit {
namespace {

using nlohmann::json;
using safetensors::DType;

constexpr const char* kFormat = "lowbit-checkpoint-1";
constexpr const char* kModel = "lenet5";
constexpr int kClasses = 10;

template <class T>
safetensors::Tensor make_tensor(std::string name, DType dtype, std::vector<std::int64_t> shape,
                                const T* values, std::size_t count) {
  safetensors::Tensor t{std::move(name), dtype, std::move(shape), {}};
  t.data.resize(count * sizeof(T));
  if (count > 0) std::memcpy(t.data.data(), values, t.data.size());
  return t;
}

json to_json(const TrainOptions& o) {
  const QuantizeOptions& q = o.quantize;
  json layers = json::object();
  for (const auto& [name, bits] : q.layer_bits)
    layers[name] = {{"weight_bits", bits.weight_bits}, {"activation_bits", bits.activation_bits}};
  return {{"model", kModel},
          {"weight_bits", q.weight_bits},
          {"activation_bits", q.activation_bits},
          {"output_bits", q.output_bits},
          {"ema_decay", q.ema_decay},
          {"quant_delay", q.quant_delay},
          {"freeze_ranges_step", q.freeze_ranges_step},
          {"range", to_string(q.range)},
          {"rounding", to_string(q.rounding)},
          {"per_channel", q.per_channel},
          {"weight_group", q.weight_group},
          {"symmetric_weights", q.symmetric_weights},
          {"layer_bits", layers},
          {"epochs", o.epochs},
          {"batch", o.batch},
          {"learning_rate", o.sgd.learning_rate},
          {"momentum", o.sgd.momentum},
          {"weight_decay", o.sgd.weight_decay},
          {"lr_schedule",
           {{"kind", to_string(o.lr_schedule.kind)},
            {"milestones", o.lr_schedule.milestones},
            {"factor", o.lr_schedule.factor}}},
          {"seed", o.seed},
          {"limit_train", o.limit_train},
          {"limit_test", o.limit_test},
          {"normalization_mean", o.normalization.mean},
          {"normalization_std", o.normalization.std},
          {"data_dir", o.data_dir}};
}

Rounding rounding_from(const std::string& s) {
  for (const Rounding r : {Rounding::tensorflow, Rounding::pytorch})
    if (s == to_string(r)) return r;
  throw std::runtime_error("unknown rounding '" + s + "'");
}

RangeMode range_from(const std::string& s) {
  for (const RangeMode m : {RangeMode::ema, RangeMode::lagged, RangeMode::lsq})
    if (s == to_string(m)) return m;
  throw std::runtime_error("unknown range mode '" + s + "'");
}

TrainOptions from_json(const json& j) {
  TrainOptions o;
  QuantizeOptions& q = o.quantize;
  q.weight_bits = j.at("weight_bits").get<int>();
  q.activation_bits = j.at("activation_bits").get<int>();
  q.output_bits = j.at("output_bits").get<int>();
  q.ema_decay = j.at("ema_decay").get<float>();
  q.quant_delay = j.at("quant_delay").get<std::int64_t>();
  q.freeze_ranges_step = j.at("freeze_ranges_step").get<std::int64_t>();
  q.range = range_from(j.at("range").get<std::string>());
  q.rounding = rounding_from(j.at("rounding").get<std::string>());
  q.per_channel = j.at("per_channel").get<bool>();
  // Checkpoints from before lowbit had weight groups quantized per channel.
  if (j.contains("weight_group")) q.weight_group = j.at("weight_group").get<std::int64_t>();
  q.symmetric_weights = j.at("symmetric_weights").get<bool>();
  for (const auto& [name, bits] : j.at("layer_bits").items())
    q.layer_bits[name] = {bits.at("weight_bits").get<int>(), bits.at("activation_bits").get<int>()};
  o.epochs = j.at("epochs").get<std::int64_t>();
  o.batch = j.at("batch").get<std::int64_t>();
  o.sgd = {j.at("learning_rate").get<float>(), j.at("momentum").get<float>(),
           j.at("weight_decay").get<float>()};
  // Checkpoints from before lowbit had schedules trained at a constant rate.
  if (j.contains("lr_schedule")) {
    const json& schedule = j.at("lr_schedule");
    o.lr_schedule = {lr_schedule_kind_from_name(schedule.at("kind").get<std::string>()),
                     schedule.at("milestones").get<std::vector<std::int64_t>>(),
                     schedule.at("factor").get<float>()};
  }
  o.seed = j.at("seed").get<std::uint64_t>();
  o.limit_train = j.at("limit_train").get<std::int64_t>();
  o.limit_test = j.at("limit_test").get<std::int64_t>();
  o.normalization = {j.at("normalization_mean").get<float>(),
                     j.at("normalization_std").get<float>()};
  o.data_dir = j.at("data_dir").get<std::string>();
  return o;
}

template <class T>
std::vector<T> download(Backend& backend, const void* src, std::size_t count) {
  std::vector<T> host(count);
  if (count > 0) backend.download(host.data(), src, count * sizeof(T));
  return host;
}

std::string number_text(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", value);
  return text;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i)
    text += (i > 0 ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

/// Checks one field of a checkpoint: the error names the file, the field,
/// its value and what it should be.
void expect_field(bool valid, const std::string& path, const std::string& field,
                  const std::string& value, const std::string& requirement) {
  LOWBIT_EXPECTS(valid, path + ": " + field + " is " + value + ", expected " + requirement);
}

/// The model must be a LeNet-5 on images it can take; its quantization
/// options are checked by quantize() itself, on that model; the rest are the
/// options training and evaluation use as they are.
void check_model_and_options(const Checkpoint& c, const std::string& model) {
  const std::string& path = c.path;
  const TrainOptions& o = c.options;
  expect_field(model == kModel, path, "the model", "\"" + model + "\"",
               std::string("\"") + kModel + "\" (the model lowbit trains)");
  const std::vector<std::int64_t>& shape = c.input_shape;
  const std::string min = std::to_string(kLenet5MinImageSize);
  expect_field(shape.size() == 3 && shape[0] == 1 && shape[1] >= kLenet5MinImageSize &&
                   shape[2] >= kLenet5MinImageSize,
               path, "input_shape", shape_text(shape), "[1, H, W] with H, W >= " + min);
  try {
    quantize(lenet5(shape[0], shape[1], shape[2], kClasses), o.quantize);
  } catch (const Error& e) {
    throw Error(path + ": the checkpoint's quantization options are invalid: " + e.message(),
                __FILE__, __LINE__);
  }
  expect_field(o.epochs >= 1, path, "epochs", std::to_string(o.epochs), ">= 1");
  expect_field(o.batch >= 1, path, "batch", std::to_string(o.batch), ">= 1");
  expect_field(o.sgd.learning_rate > 0.0f && std::isfinite(o.sgd.learning_rate), path,
               "learning_rate", number_text(o.sgd.learning_rate), "> 0");
  expect_field(o.sgd.momentum >= 0.0f && o.sgd.momentum < 1.0f, path, "momentum",
               number_text(o.sgd.momentum), "in [0, 1)");
  expect_field(o.sgd.weight_decay >= 0.0f && std::isfinite(o.sgd.weight_decay), path,
               "weight_decay", number_text(o.sgd.weight_decay), ">= 0");
  expect_field(o.lr_schedule.factor > 0.0f && o.lr_schedule.factor <= 1.0f, path,
               "lr_schedule factor", number_text(o.lr_schedule.factor), "in (0, 1]");
  std::int64_t previous = 0;
  bool increasing = true;
  for (const std::int64_t m : o.lr_schedule.milestones) {
    increasing = increasing && m > previous;
    previous = m;
  }
  expect_field(increasing, path, "lr_schedule milestones", shape_text(o.lr_schedule.milestones),
               "increasing epochs >= 1");
  expect_field(o.limit_train >= 0, path, "limit_train", std::to_string(o.limit_train), ">= 0");
  expect_field(o.limit_test >= 0, path, "limit_test", std::to_string(o.limit_test), ">= 0");
  expect_field(std::isfinite(o.normalization.mean), path, "normalization_mean",
               number_text(o.normalization.mean), "a finite number");
  expect_field(o.normalization.std > 0.0f && std::isfinite(o.normalization.std), path,
               "normalization_std", number_text(o.normalization.std), "> 0");
}

const safetensors::Tensor& find_tensor(const Checkpoint& c, const std::string& name) {
  for (const safetensors::Tensor& t : c.file.tensors)
    if (t.name == name) return t;
  throw Error(c.path + ": the checkpoint has no " + name, __FILE__, __LINE__);
}

/// `t`, checked to have `dtype` and `shape` (`content` says so in words).
const safetensors::Tensor& with_layout(const Checkpoint& c, const safetensors::Tensor& t,
                                       DType dtype, const std::vector<std::int64_t>& shape,
                                       const std::string& content) {
  LOWBIT_EXPECTS(t.dtype == dtype && t.shape == shape,
                 c.path + ": " + t.name + " must hold " + content);
  return t;
}

template <class T, std::size_t N>
void copy_values(const safetensors::Tensor& t, T (&values)[N]) {
  std::memcpy(values, t.data.data(), sizeof(values));
}

/// trainer.progress: epochs and steps done (each epoch takes at least one
/// step), and the seed the options name.
TrainProgress read_progress(const Checkpoint& c) {
  std::int64_t state[3];
  copy_values(with_layout(c, find_tensor(c, "trainer.progress"), DType::I64, {3},
                          "3 int64 values (epochs_done, steps_done, seed)"),
              state);
  const auto [epochs_done, steps_done, seed] = state;
  expect_field(epochs_done >= 0 && epochs_done <= c.options.epochs, c.path,
               "trainer.progress epochs_done", std::to_string(epochs_done),
               "in [0, " + std::to_string(c.options.epochs) + "] (the run's epochs)");
  expect_field(steps_done >= epochs_done, c.path, "trainer.progress steps_done",
               std::to_string(steps_done), ">= epochs_done (" + std::to_string(epochs_done) + ")");
  expect_field(static_cast<std::uint64_t>(seed) == c.options.seed, c.path,
               "trainer.progress seed", std::to_string(static_cast<std::uint64_t>(seed)),
               "the options' seed " + std::to_string(c.options.seed));
  return {epochs_done, steps_done};
}

/// Every EMA observer's state within the invariants its updates keep: a
/// finite range that contains 0, a debiasing power in [0, 1], and counters
/// where updates and skipped batches add up to at most the calls.
void check_ema_states(const Checkpoint& c) {
  const auto ends_with = [](const std::string& text, const std::string& suffix) {
    return text.size() > suffix.size() &&
           text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  for (const safetensors::Tensor& t : c.file.tensors) {
    if (ends_with(t.name, ".ema.range")) {
      float range[2];
      copy_values(with_layout(c, t, DType::F32, {2}, "2 float32 values (min, max)"), range);
      expect_field(std::isfinite(range[0]) && std::isfinite(range[1]) && range[0] <= 0.0f &&
                       range[1] >= 0.0f,
                   c.path, t.name,
                   "[" + number_text(range[0]) + ", " + number_text(range[1]) + "]",
                   "a finite [min, max] with min <= 0 <= max");
    } else if (ends_with(t.name, ".ema.decay_pow")) {
      float power[1];
      copy_values(with_layout(c, t, DType::F32, {}, "one float32 value"), power);
      expect_field(power[0] >= 0.0f && power[0] <= 1.0f, c.path, t.name, number_text(power[0]),
                   "in [0, 1]");
    } else if (ends_with(t.name, ".ema.counters")) {
      std::int64_t counters[3];
      copy_values(
          with_layout(c, t, DType::I64, {3}, "3 int64 values (steps, updates, skipped)"),
          counters);
      const auto [steps, updates, skipped] = counters;
      expect_field(updates >= 0 && skipped >= 0 && skipped <= UINT32_MAX && updates <= steps &&
                       skipped <= steps - updates,
                   c.path, t.name, shape_text({steps, updates, skipped}),
                   "[steps, updates, skipped] with updates + skipped <= steps, none negative");
    }
  }
}

}  // namespace

void save_checkpoint(const std::string& path, const TrainOptions& options,
                     const TrainProgress& progress, const Network& network, Backend& backend,
                     const float* velocity) {
  const std::size_t n = static_cast<std::size_t>(network.parameter_count());
  const std::vector<float> params = download<float>(backend, network.parameters(), n);
  const std::vector<float> momentum = download<float>(backend, velocity, n);
  const std::vector<std::string>& ema_names = network.ema_state_names();
  const std::vector<EmaRangeState> ema =
      download<EmaRangeState>(backend, network.ema_states(), ema_names.size());

  safetensors::File file;
  for (const ParameterSlot& slot : network.parameter_slots())
    file.tensors.push_back(make_tensor(slot.name, DType::F32, slot.shape,
                                       params.data() + slot.offset,
                                       static_cast<std::size_t>(slot.count)));
  for (const ParameterSlot& slot : network.parameter_slots())
    file.tensors.push_back(make_tensor("optimizer.momentum." + slot.name, DType::F32, slot.shape,
                                       momentum.data() + slot.offset,
                                       static_cast<std::size_t>(slot.count)));
  for (std::size_t k = 0; k < ema_names.size(); ++k) {
    const EmaRangeState& s = ema[k];
    const float range[2] = {s.min, s.max};
    const std::int64_t counters[3] = {s.steps, s.updates, static_cast<std::int64_t>(s.skipped)};
    file.tensors.push_back(make_tensor(ema_names[k] + ".ema.range", DType::F32, {2}, range, 2));
    file.tensors.push_back(
        make_tensor(ema_names[k] + ".ema.decay_pow", DType::F32, {}, &s.decay_pow, 1));
    file.tensors.push_back(
        make_tensor(ema_names[k] + ".ema.counters", DType::I64, {3}, counters, 3));
  }
  const std::int64_t state[3] = {progress.epochs_done, progress.steps_done,
                                 static_cast<std::int64_t>(options.seed)};
  file.tensors.push_back(make_tensor("trainer.progress", DType::I64, {3}, state, 3));
  file.metadata["format"] = kFormat;
  json saved_options = to_json(options);
  saved_options["input_shape"] = network.input_shape();
  file.metadata["lowbit.options"] = saved_options.dump();
  file.metadata["lowbit.progress"] =
      "epochs_done, steps_done, seed (shuffles derive from seed and epoch)";
  safetensors::save(path, file);
}

Checkpoint read_checkpoint(const std::string& path) {
  Checkpoint c;
  c.path = path;
  c.file = safetensors::load(path);
  const auto format = c.file.metadata.find("format");
  LOWBIT_EXPECTS(format != c.file.metadata.end() && format->second == kFormat,
                 path + ": not a lowbit checkpoint (metadata format is not " + kFormat + ")");
  const auto options = c.file.metadata.find("lowbit.options");
  LOWBIT_EXPECTS(options != c.file.metadata.end(), path + ": the checkpoint has no options");
  std::string model;
  try {
    const json j = json::parse(options->second);
    c.options = from_json(j);
    model = j.at("model").get<std::string>();
    // Checkpoints from before lowbit recorded the input shape.
    if (!j.contains("input_shape"))
      throw std::runtime_error("no input_shape (an older lowbit wrote it: train it again)");
    c.input_shape = j.at("input_shape").get<std::vector<std::int64_t>>();
  } catch (const Error& e) {
    throw Error(path + ": bad options in the checkpoint: " + e.message(), __FILE__, __LINE__);
  } catch (const std::exception& e) {
    throw Error(path + ": bad options in the checkpoint: " + e.what(), __FILE__, __LINE__);
  }
  // The checksum only shows that the file is as written; a file written by
  // another tool (or by hand) can still make no sense.
  check_model_and_options(c, model);
  c.progress = read_progress(c);
  check_ema_states(c);
  return c;
}

void expect_input_matches(const Checkpoint& checkpoint, const Dataset& data) {
  const std::vector<std::int64_t> shape = {1, data.rows, data.cols};
  LOWBIT_EXPECTS(shape == checkpoint.input_shape,
                 data.images_path + " holds " + std::to_string(data.rows) + "x" +
                     std::to_string(data.cols) + " images, but the model in " + checkpoint.path +
                     " takes " + std::to_string(checkpoint.input_shape[1]) + "x" +
                     std::to_string(checkpoint.input_shape[2]));
}

namespace {

/// The checkpoint's tensor `name`, which must have this dtype and shape.
const safetensors::Tensor& find_tensor(const Checkpoint& checkpoint, const std::string& name,
                                       DType dtype, const std::vector<std::int64_t>& shape) {
  for (const safetensors::Tensor& t : checkpoint.file.tensors) {
    if (t.name != name) continue;
    LOWBIT_EXPECTS(t.dtype == dtype && t.shape == shape,
                   checkpoint.path + ": '" + name + "' has the wrong dtype or shape for this model");
    return t;
  }
  throw Error(checkpoint.path + ": tensor '" + name + "' is missing", __FILE__, __LINE__);
}

}  // namespace

void restore_weights_and_biases(const Checkpoint& checkpoint, Network& network,
                                Backend& backend) {
  const std::size_t n = static_cast<std::size_t>(network.parameter_count());
  std::vector<float> params(n);
  backend.download(params.data(), network.parameters(), n * sizeof(float));
  for (const ParameterSlot& slot : network.parameter_slots()) {
    if (slot.offset >= network.decayed_count()) continue;  // an LSQ step size
    const auto& p = find_tensor(checkpoint, slot.name, DType::F32, slot.shape);
    std::memcpy(params.data() + slot.offset, p.data.data(), p.data.size());
  }
  backend.upload(network.parameters(), params.data(), n * sizeof(float));
}

void restore_checkpoint(const Checkpoint& checkpoint, Network& network, Backend& backend,
                        float* velocity) {
  const auto find = [&](const std::string& name, DType dtype,
                        const std::vector<std::int64_t>& shape) -> const safetensors::Tensor& {
    return find_tensor(checkpoint, name, dtype, shape);
  };
  const std::size_t n = static_cast<std::size_t>(network.parameter_count());
  std::vector<float> params(n), momentum(n);
  for (const ParameterSlot& slot : network.parameter_slots()) {
    const auto& p = find(slot.name, DType::F32, slot.shape);
    std::memcpy(params.data() + slot.offset, p.data.data(), p.data.size());
    const auto& m = find("optimizer.momentum." + slot.name, DType::F32, slot.shape);
    std::memcpy(momentum.data() + slot.offset, m.data.data(), m.data.size());
  }
  backend.upload(network.parameters(), params.data(), n * sizeof(float));
  if (velocity != nullptr) backend.upload(velocity, momentum.data(), n * sizeof(float));

  const std::vector<std::string>& names = network.ema_state_names();
  std::vector<EmaRangeState> ema(names.size());
  for (std::size_t k = 0; k < names.size(); ++k) {
    float range[2];
    std::int64_t counters[3];
    std::memcpy(range, find(names[k] + ".ema.range", DType::F32, {2}).data.data(), sizeof(range));
    std::memcpy(&ema[k].decay_pow, find(names[k] + ".ema.decay_pow", DType::F32, {}).data.data(),
                sizeof(float));
    std::memcpy(counters, find(names[k] + ".ema.counters", DType::I64, {3}).data.data(),
                sizeof(counters));
    ema[k].min = range[0];
    ema[k].max = range[1];
    ema[k].steps = counters[0];
    ema[k].updates = counters[1];
    ema[k].skipped = static_cast<std::uint32_t>(counters[2]);
  }
  if (!ema.empty())
    backend.upload(network.ema_states(), ema.data(), ema.size() * sizeof(EmaRangeState));
}

}  // namespace lowbit
