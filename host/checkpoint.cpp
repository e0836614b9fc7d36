#include "checkpoint.hpp"

#include <cstring>
#include <nlohmann/json.hpp>

#include "lowbit/error.hpp"

namespace lowbit {
namespace {

using nlohmann::json;
using safetensors::DType;

constexpr const char* kFormat = "lowbit-checkpoint-1";

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
  return {{"model", "lenet5"},
          {"weight_bits", q.weight_bits},
          {"activation_bits", q.activation_bits},
          {"output_bits", q.output_bits},
          {"ema_decay", q.ema_decay},
          {"quant_delay", q.quant_delay},
          {"freeze_ranges_step", q.freeze_ranges_step},
          {"range", to_string(q.range)},
          {"rounding", to_string(q.rounding)},
          {"per_channel", q.per_channel},
          {"symmetric_weights", q.symmetric_weights},
          {"layer_bits", layers},
          {"epochs", o.epochs},
          {"batch", o.batch},
          {"learning_rate", o.sgd.learning_rate},
          {"momentum", o.sgd.momentum},
          {"weight_decay", o.sgd.weight_decay},
          {"seed", o.seed},
          {"limit_train", o.limit_train},
          {"limit_test", o.limit_test},
          {"normalization_mean", o.normalization.mean},
          {"normalization_std", o.normalization.std},
          {"data_dir", o.data_dir}};
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
  q.rounding = j.at("rounding").get<std::string>() == "pytorch" ? Rounding::pytorch
                                                                 : Rounding::tensorflow;
  q.per_channel = j.at("per_channel").get<bool>();
  q.symmetric_weights = j.at("symmetric_weights").get<bool>();
  for (const auto& [name, bits] : j.at("layer_bits").items())
    q.layer_bits[name] = {bits.at("weight_bits").get<int>(), bits.at("activation_bits").get<int>()};
  o.epochs = j.at("epochs").get<std::int64_t>();
  o.batch = j.at("batch").get<std::int64_t>();
  o.sgd = {j.at("learning_rate").get<float>(), j.at("momentum").get<float>(),
           j.at("weight_decay").get<float>()};
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
  file.metadata["lowbit.options"] = to_json(options).dump();
  file.metadata["lowbit.progress"] =
      "epochs_done, steps_done, seed (shuffles derive from seed and epoch)";
  safetensors::save(path, file);
}

Checkpoint read_checkpoint(const std::string& path) {
  Checkpoint c;
  c.file = safetensors::load(path);
  const auto format = c.file.metadata.find("format");
  LOWBIT_EXPECTS(format != c.file.metadata.end() && format->second == kFormat,
                 path + ": not a lowbit checkpoint (metadata format is not " + kFormat + ")");
  const auto options = c.file.metadata.find("lowbit.options");
  LOWBIT_EXPECTS(options != c.file.metadata.end(), path + ": the checkpoint has no options");
  try {
    c.options = from_json(json::parse(options->second));
  } catch (const std::exception& e) {
    throw Error(path + ": bad options in the checkpoint: " + e.what(), __FILE__, __LINE__);
  }
  for (const safetensors::Tensor& t : c.file.tensors) {
    if (t.name != "trainer.progress") continue;
    LOWBIT_EXPECTS(t.dtype == DType::I64 && t.data.size() == 3 * sizeof(std::int64_t),
                   path + ": trainer.progress must hold 3 int64 values");
    std::int64_t state[3];
    std::memcpy(state, t.data.data(), sizeof(state));
    c.progress = {state[0], state[1]};
    return c;
  }
  throw Error(path + ": the checkpoint has no trainer.progress", __FILE__, __LINE__);
}

void restore_checkpoint(const Checkpoint& checkpoint, Network& network, Backend& backend,
                        float* velocity) {
  const auto find = [&](const std::string& name, DType dtype,
                        const std::vector<std::int64_t>& shape) -> const safetensors::Tensor& {
    for (const safetensors::Tensor& t : checkpoint.file.tensors) {
      if (t.name != name) continue;
      LOWBIT_EXPECTS(t.dtype == dtype && t.shape == shape,
                     "checkpoint: '" + name + "' has the wrong dtype or shape for this model");
      return t;
    }
    throw Error("checkpoint: tensor '" + name + "' is missing", __FILE__, __LINE__);
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
