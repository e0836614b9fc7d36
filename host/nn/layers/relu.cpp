#include "nn/layers/layers.hpp"

namespace lowbit {

ReluLayer::ReluLayer(std::string name, Backend& backend, std::int64_t n, Binding x, Binding y)
    : Layer(std::move(name), backend), n_(n), x_(x), y_(y) {
  expect(x.value && y.value && y.grad, "unbound tensor");
}

void ReluLayer::forward_impl(Pass) {
  backend_.bias_activation(x_.value, nullptr, ChannelLayout::per_tensor(n_), true, y_.value);
}

void ReluLayer::backward_impl() {
  if (x_.grad == nullptr) return;
  backend_.bias_activation_backward(y_.grad, y_.value, ChannelLayout::per_tensor(n_), true,
                                    nullptr, x_.grad, nullptr, {});
}

}  // namespace lowbit
