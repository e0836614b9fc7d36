// One class per node kind (Flatten needs none: it aliases its input).
#pragma once

#include <cstdint>
#include <vector>

#include <memory>
#include <variant>

#include "nn/layers/ema_range.hpp"
#include "nn/layers/layer.hpp"

namespace lowbit {

/// What follows a Conv2d/Linear inside the same layer: the network fuses the
/// ReLU it feeds, and an EMA fake quant (TensorFlow rounding) after that ReLU,
/// into one kernel (bias_relu_ema_fake_quant).
struct Epilogue {
  bool relu = false;
  const FakeQuantAttrs* quant = nullptr;  ///< fused activation quantizer, or null
  EmaRangeState* state = nullptr;         ///< its observer
  ClipCount* clips = nullptr;             ///< what its training passes clip
};

/// Conv2d or Linear: y = epilogue(op(x, w) + b).
class WeightedLayer final : public Layer {
 public:
  using Shape = std::variant<Conv2dShape, LinearShape>;
  WeightedLayer(std::string name, Backend& backend, const Shape& shape, Binding x, Binding w,
                Binding b, Binding y, const Epilogue& epilogue);

 private:
  void forward_impl(Pass pass) override;
  void backward_impl() override;
  /// The output as [batch, channels, positions]: the bias is per channel.
  ChannelLayout output_layout() const;

  Shape shape_;
  Binding x_, w_, b_, y_;
  bool relu_;
  std::unique_ptr<EmaRange> ema_;  // the fused activation quantizer
  ClipCount* clips_;               // its clip counts
  Buffer mask_;                    // its mask: ReLU and STE in one bit
  Buffer workspace_;
};

class ReluLayer final : public Layer {
 public:
  ReluLayer(std::string name, Backend& backend, std::int64_t n, Binding x, Binding y);

 private:
  void forward_impl(Pass pass) override;
  void backward_impl() override;

  std::int64_t n_;
  Binding x_, y_;
};

class MaxPool2dLayer final : public Layer {
 public:
  MaxPool2dLayer(std::string name, Backend& backend, const Pool2dShape& shape, Binding x,
                 Binding y);

 private:
  void forward_impl(Pass pass) override;
  void backward_impl() override;

  Pool2dShape shape_;
  Binding x_, y_;
};

/// y = a + b; both inputs receive dy.
class AddLayer final : public Layer {
 public:
  AddLayer(std::string name, Backend& backend, std::int64_t n, Binding a, Binding b, Binding y);

 private:
  void forward_impl(Pass pass) override;
  void backward_impl() override;

  std::int64_t n_;
  Binding a_, b_, y_;
};

/// Loss and its logit gradient in one pass; accumulates into `totals`.
class SoftmaxCrossEntropyLayer final : public Layer {
 public:
  SoftmaxCrossEntropyLayer(std::string name, Backend& backend, std::int64_t batch, int classes,
                           Binding logits, const std::int32_t* labels, LossTotals* totals);

 private:
  void forward_impl(Pass pass) override;
  void backward_impl() override;

  std::int64_t batch_;
  int classes_;
  Binding logits_;
  const std::int32_t* labels_;
  LossTotals* totals_;
};

/// The integer grid of an affine (pytorch) or LSQ quantizer.
AffineQuant affine_grid(const FakeQuantAttrs& attrs);

/// Fake quantization of weights (last-value ranges) or activations (EMA,
/// lagged EMA or LSQ), in either rounding family. `state` is the EMA observer
/// of an activation quantizer (null otherwise); `scale` the LSQ step size;
/// `steps_done` the network's training steps, which a weight quantizer with a
/// quant_delay compares with it (its EMA observer counts an activation's);
/// `clips` what an activation quantizer's training passes clip (may be null).
class FakeQuantLayer final : public Layer {
 public:
  FakeQuantLayer(std::string name, Backend& backend, const FakeQuantAttrs& attrs,
                 const std::vector<std::int64_t>& shape, Binding x, Binding y, Binding scale,
                 EmaRangeState* state, const std::int64_t* steps_done, ClipCount* clips);

  /// Weights with a min/max range: the range of the last forward, min then
  /// max per channel; null otherwise.
  const float* weight_range() const { return range_.as<float>(); }

 private:
  void forward_impl(Pass pass) override;
  void backward_impl() override;
  void forward_weights();
  void forward_ema(Pass pass);
  void forward_lsq(Pass pass);

  FakeQuantAttrs attrs_;
  ChannelLayout layout_;  // per channel for weights, else the whole tensor
  Binding x_, y_, scale_;
  const std::int64_t* steps_done_;
  ClipCount* clips_;
  std::unique_ptr<EmaRange> ema_;  // activations with EMA ranges
  Buffer mask_;
  Buffer range_;        // weights: min then max per channel
  Buffer affine_;       // pytorch rounding: scale per channel, then zero points
  Buffer workspace_;
};

}  // namespace lowbit
