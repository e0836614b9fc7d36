#include "nn/layers/layers.hpp"

namespace lowbit {

MaxPool2dLayer::MaxPool2dLayer(std::string name, Backend& backend, const Pool2dShape& shape,
                               Binding x, Binding y)
    : Layer(std::move(name), backend), shape_(shape), x_(x), y_(y) {
  expect(x.value && y.value && y.grad, "unbound tensor");
}

void MaxPool2dLayer::forward_impl(Pass) { backend_.max_pool_forward(shape_, x_.value, y_.value); }

void MaxPool2dLayer::backward_impl() {
  if (x_.grad == nullptr) return;
  backend_.max_pool_backward(shape_, x_.value, y_.value, y_.grad, x_.grad);
}

}  // namespace lowbit
