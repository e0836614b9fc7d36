// Training checkpoints: a Network's parameters, momentum and EMA range state,
// the trainer's progress and its options, in one safetensors file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lowbit/data.hpp"
#include "lowbit/safetensors.hpp"
#include "lowbit/trainer.hpp"
#include "nn/network.hpp"

namespace lowbit {

struct TrainProgress {
  std::int64_t epochs_done = 0;
  std::int64_t steps_done = 0;
};

/// Downloads the state of `network` (and `velocity`, parameter_count floats)
/// and writes it to `path` with safetensors::save().
void save_checkpoint(const std::string& path, const TrainOptions& options,
                     const TrainProgress& progress, const Network& network, Backend& backend,
                     const float* velocity);

/// A verified checkpoint file with its options and progress decoded.
struct Checkpoint {
  std::string path;
  TrainOptions options;
  TrainProgress progress;
  std::vector<std::int64_t> input_shape;  ///< one example as the model takes it: [1, H, W]
  safetensors::File file;
};

/// Loads and verifies a checkpoint: the file's checksum, then that its
/// contents make sense (a LeNet-5 with a valid input shape and options,
/// progress and EMA range states within their invariants). A problem throws
/// lowbit::Error naming the file and the field.
Checkpoint read_checkpoint(const std::string& path);

/// Throws, naming both files, unless the images of `data` have the size the
/// checkpoint's model takes.
void expect_input_matches(const Checkpoint& checkpoint, const Dataset& data);

/// Uploads a checkpoint's state into a network built from the same options;
/// velocity may be null (evaluation). Throws when a tensor is missing or
/// differs in shape.
void restore_checkpoint(const Checkpoint& checkpoint, Network& network, Backend& backend,
                        float* velocity);

/// Uploads only a checkpoint's weights and biases (--init: fine-tuning from a
/// model of any width); the network's other state stays as it is.
void restore_weights_and_biases(const Checkpoint& checkpoint, Network& network, Backend& backend);

}  // namespace lowbit
