// quantize(): the tf.contrib.quantize rewrite of a float graph into a
// quantization-aware one, at any width from 2 to 16 bits.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "lowbit/graph.hpp"
#include "lowbit/types.hpp"

namespace lowbit {

/// Widths for one Conv2d/Linear layer; -1 keeps the global width.
struct LayerBits {
  int weight_bits = -1;
  int activation_bits = -1;
};

struct QuantizeOptions {
  /// 2..16, or 0 to leave weights (activations) in float.
  int weight_bits = 4;
  int activation_bits = 4;
  /// Width of the quantizer on the logits (the tensor the loss reads) when
  /// activations are quantized at all; -1 uses activation_bits. 8 by default,
  /// as TensorFlow Lite keeps model outputs at 8 bits: 16 or 4 logit levels
  /// would decide the argmax, and cost 4 points of accuracy at 4 bits.
  int output_bits = 8;
  float ema_decay = 0.999f;
  /// Training steps during which weights and activations pass through
  /// unquantized while activation ranges already track (TensorFlow's
  /// quant_delay, which delays both). Must be 0 for lsq ranges.
  std::int64_t quant_delay = 0;
  /// Steps after which activation ranges stop updating (kNeverFreeze: never).
  std::int64_t freeze_ranges_step = kNeverFreeze;
  RangeMode range = RangeMode::ema;
  Rounding rounding = Rounding::tensorflow;
  /// One weight range per output channel (false: one per tensor).
  bool per_channel = true;
  /// Per-group weights, as torchao and LiteRT quantize them: 0 keeps one
  /// range per output channel (or tensor, per per_channel); G >= 2 splits
  /// each output channel's row (its fan-in: C·R·S of a conv's [K,C,R,S]
  /// weight, in_features of a Linear's) into groups of consecutive elements
  /// with one range each (one learned step each under lsq). A row of L
  /// elements uses the largest divisor of L that is at most G, so every group
  /// of a layer has one size: LeNet-5's rows of 25, 150, 400, 120 and 84 use
  /// 25, 30, 25, 30 and 28 for G = 32; G >= L is per channel for that layer
  /// (weight_group_size() in graph.hpp). Groups lie within rows, so they need
  /// per_channel.
  std::int64_t weight_group = 0;
  /// Symmetric weight ranges [-max|w|, max|w|] on a narrow grid (TensorFlow's
  /// default for weights); false: asymmetric [min(w), max(w)], full grid.
  bool symmetric_weights = true;
  /// Overrides by layer name (mixed precision), e.g. {"conv1", {8, 8}}.
  std::map<std::string, LayerBits> layer_bits;
};

/// Rewrites `graph` (float, as built) into a quantization-aware graph:
///  - the weights of every Conv2d and Linear go through a weight FakeQuant;
///  - every activation output is fake-quantized: after a ReLU, or at the
///    layer output where no ReLU follows;
///  - both inputs of an Add are fake-quantized (unless already) and so is its
///    output unless a ReLU follows.
/// A per-layer override beats output_bits, which beats activation_bits.
/// Layers whose width resolves to 0 stay float. Throws lowbit::Error for
/// widths outside {0, 2..16}, an override naming no Conv2d/Linear layer, a
/// decay outside [0, 1), a negative delay (or any with lsq ranges), a
/// weight_group of 1 or below 0, or with per_channel false, or one that would
/// leave a quantized layer's rows in groups of 1 (a row length with no
/// divisor in 2..weight_group), or a graph that already holds FakeQuant nodes.
Graph quantize(const Graph& graph, const QuantizeOptions& options);

}  // namespace lowbit
