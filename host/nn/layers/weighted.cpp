#include "nn/layers/layers.hpp"

namespace lowbit {

WeightedLayer::WeightedLayer(std::string name, Backend& backend, const Shape& shape, Binding x,
                             Binding w, Binding b, Binding y, const Epilogue& epilogue)
    : Layer(std::move(name), backend),
      shape_(shape),
      x_(x),
      w_(w),
      b_(b),
      y_(y),
      relu_(epilogue.relu),
      clips_(epilogue.clips) {
  expect(x.value && w.value && b.value && y.value, "unbound tensor");
  expect(w.grad && b.grad && y.grad, "unbound gradient");
  const ChannelLayout layout = output_layout();
  workspace_ = backend.allocate(reduction_workspace_bytes(layout));
  if (epilogue.quant != nullptr) {
    expect(relu_, "a fused activation quantizer follows a fused ReLU");
    ema_ = std::make_unique<EmaRange>(backend, *epilogue.quant, epilogue.state);
    mask_ = backend.allocate(static_cast<std::size_t>(mask_words(layout.size())) * 4);
  }
}

ChannelLayout WeightedLayer::output_layout() const {
  if (const auto* conv = std::get_if<Conv2dShape>(&shape_))
    return {conv->batch, conv->out_channels, conv->out_height() * conv->out_width()};
  const auto& linear = std::get<LinearShape>(shape_);
  return {linear.batch, linear.out_features, 1};
}

void WeightedLayer::forward_impl(Pass pass) {
  if (const auto* conv = std::get_if<Conv2dShape>(&shape_))
    backend_.conv2d_forward(*conv, x_.value, w_.value, y_.value);
  else
    backend_.linear_forward(std::get<LinearShape>(shape_), x_.value, w_.value, y_.value);
  if (ema_) {
    const EmaRange::Use use = ema_->for_pass(pass);
    backend_.bias_relu_ema_fake_quant(y_.value, b_.value, output_layout(), y_.value, use.state,
                                      use.config, mask_.as<std::uint32_t>(),
                                      pass == Pass::train ? clips_ : nullptr);
  } else {
    backend_.bias_activation(y_.value, b_.value, output_layout(), relu_, y_.value);
  }
}

void WeightedLayer::backward_impl() {
  // dy becomes the gradient before the epilogue, in place, in the pass that
  // sums the bias gradient: the fused quantizer's mask holds the ReLU's bit
  // and the STE's, else the ReLU (if any) tests y.
  const std::uint32_t* pass_mask = ema_ ? mask_.as<std::uint32_t>() : nullptr;
  backend_.bias_activation_backward(y_.grad, y_.value, output_layout(), relu_ && !ema_, pass_mask,
                                    y_.grad, b_.grad, workspace_.as_workspace());
  if (const auto* conv = std::get_if<Conv2dShape>(&shape_))
    backend_.conv2d_backward(*conv, x_.value, w_.value, y_.grad, x_.grad, w_.grad);
  else
    backend_.linear_backward(std::get<LinearShape>(shape_), x_.value, w_.value, y_.grad,
                             x_.grad, w_.grad);
}

}  // namespace lowbit
