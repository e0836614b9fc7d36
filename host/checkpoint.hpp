// Training checkpoints: a Network's parameters, momentum and EMA range state,
// the trainer's progress and its options, in one safetensors file.
#pragma once

#include <cstdint>
#include <string>

#include "lowbit/safetensors.hpp"
#include "lowbit/trainer.hpp"
#include "network.hpp"

namespace lowbit {

struct TrainProgress {
  std::int64_t epochs_done = 0;
  std::int64_t steps_done = 0;
};

/// Downloads the state of `network` (and `velocity`, parameter_count floats)
/// and writes it atomically to `path`.
void save_checkpoint(const std::string& path, const TrainOptions& options,
                     const TrainProgress& progress, const Network& network, Backend& backend,
                     const float* velocity);

/// A verified checkpoint file with its options and progress decoded.
struct Checkpoint {
  TrainOptions options;
  TrainProgress progress;
  safetensors::File file;
};

Checkpoint read_checkpoint(const std::string& path);

/// Uploads a checkpoint's state into a network built from the same options;
/// velocity may be null (evaluation). Throws when a tensor is missing or
/// differs in shape.
void restore_checkpoint(const Checkpoint& checkpoint, Network& network, Backend& backend,
                        float* velocity);

}  // namespace lowbit
