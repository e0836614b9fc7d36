// Training and evaluation of a quantization-aware LeNet-5 on an MNIST-format
// dataset, on the GPU (everything on the device, the step replayed as a CUDA
// graph) or on the CPU reference backend.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lowbit/backend.hpp"
#include "lowbit/data.hpp"
#include "lowbit/lr_schedule.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/types.hpp"

namespace lowbit {

enum class DeviceChoice { automatic, cuda, cpu };

/// A backend and why it was chosen (for `--device auto`).
struct DeviceSelection {
  std::unique_ptr<Backend> backend;
  std::string reason;
};

/// automatic: CUDA when a usable device is present, else the CPU (the reason
/// says why). cuda without a usable device throws lowbit::Error naming the
/// CUDA error and suggesting --device cpu. `cpu_threads` as make_cpu_backend's.
DeviceSelection select_device(DeviceChoice choice, int cpu_threads = 0);

/// A quant_delay that train() replaces with auto_quant_delay() of the run.
inline constexpr std::int64_t kAutoQuantDelay = -1;

/// The quant delay of a run of `total_steps` training steps when none is
/// given: a tenth of them, at most 500 (about one epoch of Fashion-MNIST at
/// batch 128), so that activation ranges settle before they quantize and
/// every run still trains quantized for most of its steps; 0 for lsq ranges,
/// which quantize from the first step.
std::int64_t auto_quant_delay(std::int64_t total_steps, RangeMode range);

/// The trainer's quantization: QuantizeOptions' defaults (4/4 bits,
/// per-channel symmetric weights, EMA activation ranges) with the quant delay
/// chosen per run (kAutoQuantDelay).
QuantizeOptions default_train_quantization();

/// The range mode lowbit recommends for these widths: ema (TensorFlow's
/// recipe) when every quantized width is 4 bits or more, lsq below: with
/// max-based ranges ternary weights diverge at lr 0.05, and learned steps
/// keep 2-bit LeNet-5 within a few points of fp32. `lowbit train` uses it
/// unless --range is given.
RangeMode recommended_range(int weight_bits, int activation_bits);

struct TrainOptions {
  std::string data_dir = kDefaultDataDirectory;
  /// weight_bits = activation_bits = 0: plain fp32.
  QuantizeOptions quantize = default_train_quantization();
  std::int64_t epochs = 8;
  std::int64_t batch = 128;
  SgdConfig sgd{};  ///< learning_rate: the base rate the schedule scales
  LrSchedule lr_schedule{};
  std::uint64_t seed = 1;
  std::int64_t limit_train = 0;  ///< 0: all examples
  std::int64_t limit_test = 0;
  Normalization normalization{};
  bool use_graph = true;     ///< replay the step as a CUDA graph (false: eager)
  std::string save_path;     ///< checkpoint after every epoch when not empty
  std::string resume_path;   ///< continue from this checkpoint when not empty
  /// Start from this checkpoint's weights and biases (any width) with fresh
  /// quantizer and optimizer state: fine-tuning, as QAT is usually run.
  std::string init_path;
};

struct EpochReport {
  std::int64_t epoch = 0;  ///< 1-based
  double loss = 0.0;       ///< mean training loss over the epoch
  double train_accuracy = 0.0;
  double test_accuracy = 0.0;
  double test_loss = 0.0;          ///< mean over the test set
  float learning_rate = 0.0f;      ///< the epoch's, from the schedule
  double images_per_second = 0.0;  ///< training steps only, no evaluation
  double seconds = 0.0;
};

/// One fake-quant node as the run left it: the first thing to look at when a
/// low width loses accuracy (a range that grew with outliers clips little and
/// rounds much; a tight one clips much).
struct QuantizerReport {
  std::string name;      ///< the node: "<layer>/weight_quant" or "<layer>/act_quant"
  bool weights = false;  ///< a layer's weights, else activations
  int bits = 0;
  RangeMode range = RangeMode::ema;
  /// Weights quantized in groups (QuantizeOptions::weight_group): the group
  /// size this layer uses (weight_group_size()), one range or step per group
  /// in the vectors below. 0 otherwise.
  std::int64_t group = 0;
  /// ema and lagged: the range per channel or group (one entry per tensor): for
  /// weights that of the final weights, for activations the EMA's, before
  /// nudging. Empty for lsq.
  std::vector<float> min, max;
  /// lsq: the learned step size per channel or group. Empty otherwise.
  std::vector<float> step;
  /// Activations: the elements the last trained epoch's steps quantized (none
  /// during a quant delay, nor when this run trained no epoch), and how many
  /// of them lay beyond the grid ends and were clipped. 0 for weights.
  std::uint64_t quantized = 0;
  std::uint64_t clipped = 0;
};

struct TrainReport {
  std::string device;
  int weight_bits = 0;
  int activation_bits = 0;
  std::vector<EpochReport> epochs;  ///< the epochs this run trained
  double test_accuracy = 0.0;
  double test_loss = 0.0;
  double train_images_per_second = 0.0;
  /// Non-finite batches the EMA observers ignored; empty when there are none
  /// (fp32 activations, lsq ranges).
  std::optional<std::uint64_t> skipped_ema_batches;
  std::int64_t quant_delay = 0;  ///< the run's, resolved (never kAutoQuantDelay)
  std::int64_t steps_done = 0;   ///< training steps of the model, resumed ones included
  /// The first training step (1-based) that quantized the activations (the
  /// weights where activations stay float); 0 when none of steps_done did.
  std::int64_t first_quantized_step = 0;
  /// Every quantizer in graph order; empty for fp32.
  std::vector<QuantizerReport> quantizers;
};

/// Receives progress; the trainer calls it between steps, at most once per
/// log interval (the only host syncs of a training epoch).
class TrainObserver {
 public:
  virtual ~TrainObserver() = default;
  virtual void epoch_started(std::int64_t epoch, std::int64_t epochs, std::int64_t steps) = 0;
  virtual void progress(std::int64_t step, std::int64_t steps, double loss,
                        double images_per_second) = 0;
  virtual void epoch_finished(const EpochReport& report) = 0;
};

/// Trains per `options` on `backend`, each epoch at its scheduled learning
/// rate. With resume_path, the options that shape the run (model,
/// quantization, batch, seed, data limits, learning-rate schedule) must match
/// the checkpoint's, and training continues bit-identically from it; a
/// kAutoQuantDelay then takes the checkpoint's delay. Throws lowbit::Error,
/// before saving that epoch's checkpoint, when the loss or the weights stop
/// being finite (checked at each log interval's sync and each epoch's end).
TrainReport train(const TrainOptions& options, Backend& backend, TrainObserver* observer);

/// The options a checkpoint was trained with (for resuming without repeating
/// every flag).
TrainOptions checkpoint_options(const std::string& path);

/// A checkpoint's options and how far its training got.
struct CheckpointInfo {
  TrainOptions options;
  std::int64_t epochs_done = 0;
  std::int64_t steps_done = 0;
};
CheckpointInfo checkpoint_info(const std::string& path);

struct EvalReport {
  std::string device;
  int weight_bits = 0;
  int activation_bits = 0;
  std::int64_t examples = 0;
  double test_accuracy = 0.0;
  double loss = 0.0;
};

/// Test-set accuracy of a checkpoint (the quantized model as trained: still
/// float where its steps have not reached the quant delay). Throws
/// lowbit::Error for a checkpoint whose parameters are not all finite. Reads
/// only the test files (t10k-*) of `data_dir`, whose images must have the
/// size the checkpoint's model takes.
EvalReport evaluate(const std::string& checkpoint_path, const std::string& data_dir,
                    std::int64_t limit_test, Backend& backend);

}  // namespace lowbit
