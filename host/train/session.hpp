// A training session: the quantized LeNet-5 bound to a backend, with its
// datasets in backend memory and its optimizer state. The trainer runs epochs
// of it; the training-step benchmark (bench/) times its step.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "lowbit/backend.hpp"
#include "lowbit/data.hpp"
#include "lowbit/trainer.hpp"
#include "lowbit/types.hpp"
#include "nn/network.hpp"

namespace lowbit {

/// A split of the dataset in backend memory.
struct DeviceDataset {
  DeviceDataset(Backend& backend, const Dataset& data);
  std::int64_t count;
  Buffer images, labels;
};

class Session {
 public:
  /// Builds quantize(lenet5(...), options.quantize) for `options.batch` and
  /// the test images' size, and uploads both splits. An empty training split
  /// makes an evaluation-only session (no train_step()). Throws, naming the
  /// files, when the splits' image sizes differ or are too small for LeNet-5.
  Session(const TrainOptions& options, Backend& backend, const DatasetSplits& data);

  Network& network() { return network_; }
  float* velocity() const { return velocity_.as<float>(); }
  std::int64_t steps_per_epoch() const { return train_->count / options_.batch; }

  /// Shuffles the training set for `epoch` and rewinds the batch cursor, the
  /// totals and the clip counts.
  void begin_epoch(std::int64_t epoch);
  /// LSQ step sizes from the first batch of epoch 0 (before any training).
  void calibrate();
  /// The rate of the SGD steps from now on; a captured step graph holds the
  /// old one, so a change drops it for run_step() to capture again.
  void set_learning_rate(float learning_rate);
  /// One SGD step on the next batch; all of it queued on the backend.
  void train_step();
  /// train_step(), replayed as a CUDA graph when options.use_graph: the first
  /// call runs eagerly (setting up what a capture must not allocate), the
  /// second captures.
  void run_step();
  /// The loss totals since begin_epoch() (waits for the queued work).
  LossTotals totals();
  /// Test-set loss and accuracy; leaves every trained state as it was.
  LossTotals evaluate();
  /// The top-1 class (first maximum logit) of each test example, as
  /// evaluate() computes them.
  std::vector<std::int32_t> predict();
  /// Batches the EMA observers skipped as non-finite, over all observers.
  std::uint64_t skipped_ema_batches();

 private:
  void gather(const DeviceDataset& data, const std::int32_t* perm);

  TrainOptions options_;
  Backend& backend_;
  Network network_;
  DeviceDataset test_;
  std::unique_ptr<DeviceDataset> train_;
  Buffer cursor_, perm_, shuffle_workspace_, velocity_;
  std::unique_ptr<StepGraph> graph_;
  bool warmed_up_ = false;
};

}  // namespace lowbit
