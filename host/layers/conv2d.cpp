#include "layers/layers.hpp"

namespace lowbit {
namespace {

ChannelLayout output_layout(const Conv2dShape& s) {
  return {s.batch, s.out_channels, s.out_height() * s.out_width()};
}

}  // namespace

Conv2dLayer::Conv2dLayer(std::string name, Backend& backend, const Conv2dShape& shape, Binding x,
                         Binding w, Binding b, Binding y, bool fused_relu)
    : Layer(std::move(name), backend), shape_(shape), x_(x), w_(w), b_(b), y_(y),
      fused_relu_(fused_relu) {
  expect(x.value && w.value && b.value && y.value, "unbound tensor");
  expect(w.grad && b.grad && y.grad, "unbound gradient");
  workspace_ = backend.allocate(reduction_workspace_bytes(output_layout(shape)));
}

void Conv2dLayer::forward_impl(Pass) {
  backend_.conv2d_forward(shape_, x_.value, w_.value, y_.value);
  backend_.bias_activation(y_.value, b_.value, output_layout(shape_), fused_relu_, y_.value);
}

void Conv2dLayer::backward_impl() {
  // dy becomes the gradient before bias and ReLU, in place.
  backend_.bias_activation_backward(y_.grad, y_.value, output_layout(shape_), fused_relu_,
                                    y_.grad, b_.grad, workspace_.as_workspace());
  backend_.conv2d_backward(shape_, x_.value, w_.value, y_.grad, x_.grad, w_.grad);
}

}  // namespace lowbit
