#include "layers/layers.hpp"

namespace lowbit {

WeightedLayer::WeightedLayer(std::string name, Backend& backend, const Shape& shape, Binding x,
                             Binding w, Binding b, Binding y, bool fused_relu)
    : Layer(std::move(name), backend), shape_(shape), x_(x), w_(w), b_(b), y_(y),
      fused_relu_(fused_relu) {
  expect(x.value && w.value && b.value && y.value, "unbound tensor");
  expect(w.grad && b.grad && y.grad, "unbound gradient");
  workspace_ = backend.allocate(reduction_workspace_bytes(output_layout()));
}

ChannelLayout WeightedLayer::output_layout() const {
  if (const auto* conv = std::get_if<Conv2dShape>(&shape_))
    return {conv->batch, conv->out_channels, conv->out_height() * conv->out_width()};
  const auto& linear = std::get<LinearShape>(shape_);
  return {linear.batch, linear.out_features, 1};
}

void WeightedLayer::forward_impl(Pass) {
  if (const auto* conv = std::get_if<Conv2dShape>(&shape_))
    backend_.conv2d_forward(*conv, x_.value, w_.value, y_.value);
  else
    backend_.linear_forward(std::get<LinearShape>(shape_), x_.value, w_.value, y_.value);
  backend_.bias_activation(y_.value, b_.value, output_layout(), fused_relu_, y_.value);
}

void WeightedLayer::backward_impl() {
  // dy becomes the gradient before bias and ReLU, in place.
  backend_.bias_activation_backward(y_.grad, y_.value, output_layout(), fused_relu_, y_.grad,
                                    b_.grad, workspace_.as_workspace());
  if (const auto* conv = std::get_if<Conv2dShape>(&shape_))
    backend_.conv2d_backward(*conv, x_.value, w_.value, y_.grad, x_.grad, w_.grad);
  else
    backend_.linear_backward(std::get<LinearShape>(shape_), x_.value, w_.value, y_.grad,
                             x_.grad, w_.grad);
}

}  // namespace lowbit
