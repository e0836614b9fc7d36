// A graph bound to memory on one backend, for a fixed batch size: every
// tensor, gradient, parameter and range state is allocated once here, so a
// training step only queues work (and can be captured as a CUDA graph).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nn/layers/layer.hpp"
#include "lowbit/backend.hpp"
#include "lowbit/graph.hpp"
#include "lowbit/trainer.hpp"

namespace lowbit {

/// Where a parameter lives in the flat parameter (and gradient) buffer.
struct ParameterSlot {
  std::string name;
  std::vector<std::int64_t> shape;
  std::int64_t offset = 0;
  std::int64_t count = 0;
};

class Network {
 public:
  /// `fuse`: let Conv2d/Linear layers absorb the ReLU and EMA fake quant that
  /// follow them (the default; false runs every node on its own, for tests).
  Network(const Graph& graph, Backend& backend, std::int64_t batch, bool fuse = true);

  /// Pass::train also counts the step (see set_steps_done).
  void forward(Pass pass);
  /// Gradients of every parameter (overwritten, not accumulated).
  void backward();

  /// PyTorch's default initialisation of Conv2d/Linear (uniform in
  /// ±1/sqrt(fan_in) for weights and biases) from `seed`; LSQ scales = 1.
  void initialize_parameters(std::uint64_t seed);

  std::int64_t batch() const { return batch_; }
  /// One example as the Input node takes it: [channels, height, width].
  const std::vector<std::int64_t>& input_shape() const { return input_shape_; }
  std::int64_t example_size() const { return example_size_; }
  int classes() const { return classes_; }
  float* images() const { return images_; }
  std::int32_t* labels() const { return labels_.as<std::int32_t>(); }
  /// The loss's input: [batch, classes].
  const float* logits() const { return logits_; }
  LossTotals* totals() const { return totals_.as<LossTotals>(); }

  float* parameters() const { return parameters_.as<float>(); }
  float* gradients() const { return gradients_.as<float>(); }
  std::int64_t parameter_count() const { return parameter_count_; }
  /// Parameters [0, decayed_count) take weight decay: weights and biases, not
  /// quantizer step sizes (those come last).
  std::int64_t decayed_count() const { return decayed_count_; }
  const std::vector<ParameterSlot>& parameter_slots() const { return slots_; }

  /// One EMA observer per activation quantizer, in graph order.
  EmaRangeState* ema_states() const { return ema_states_.as<EmaRangeState>(); }
  const std::vector<std::string>& ema_state_names() const { return ema_names_; }

  /// Zeroes what the activation quantizers count as clipped (their training
  /// passes add to it).
  void reset_clip_counts();
  /// Every quantizer's state now, in graph order (waits for the queued work).
  std::vector<QuantizerReport> quantizer_reports() const;

  /// Sets the training steps done, in backend memory, where weight quantizers
  /// with a quant_delay read it (as EMA observers count their own): for a
  /// network restored from a checkpoint.
  void set_steps_done(std::int64_t steps);

  /// The name of the first parameter holding a NaN or an infinity, or "" when
  /// all are finite (waits for the queued work).
  std::string first_nonfinite_parameter() const;

 private:
  /// Where a quantizer's state lives in backend memory (null where it has none).
  struct QuantizerProbe {
    std::string name;
    FakeQuantAttrs attrs;
    std::int64_t channels = 1;
    std::int64_t group = 0;        // elements per range of grouped weights, else 0
    const float* range = nullptr;  // weights' min then max per channel
    const EmaRangeState* state = nullptr;
    const float* step = nullptr;
    const ClipCount* clips = nullptr;
  };
  struct GradientSum {  // grad[target] = Σ parts, before the producer's backward
    std::size_t before_layer;
    float* target;
    std::vector<float*> parts;
    std::int64_t n;
  };

  Backend& backend_;
  std::int64_t batch_;
  std::vector<std::int64_t> input_shape_;
  std::int64_t example_size_ = 0;
  int classes_ = 0;
  std::int64_t parameter_count_ = 0;
  std::int64_t decayed_count_ = 0;
  std::vector<ParameterSlot> slots_;
  std::vector<std::string> ema_names_;
  std::vector<Buffer> tensors_;  // activation values and gradients
  Buffer parameters_, gradients_, ema_states_, labels_, totals_;
  Buffer clip_counts_;  // one ClipCount per activation quantizer
  std::vector<QuantizerProbe> probes_;
  Buffer steps_done_;           // one std::int64_t
  bool counts_steps_ = false;   // some weight quantizer has a quant_delay
  float* images_ = nullptr;
  const float* logits_ = nullptr;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<GradientSum> gradient_sums_;
};

}  // namespace lowbit
