#include "nn/layers/layers.hpp"

namespace lowbit {

AddLayer::AddLayer(std::string name, Backend& backend, std::int64_t n, Binding a, Binding b,
                   Binding y)
    : Layer(std::move(name), backend), n_(n), a_(a), b_(b), y_(y) {
  expect(a.value && b.value && y.value && y.grad, "unbound tensor");
}

void AddLayer::forward_impl(Pass) { backend_.add(a_.value, b_.value, n_, y_.value); }

void AddLayer::backward_impl() {
  const std::size_t bytes = static_cast<std::size_t>(n_) * sizeof(float);
  if (a_.grad != nullptr) backend_.copy(a_.grad, y_.grad, bytes);
  if (b_.grad != nullptr) backend_.copy(b_.grad, y_.grad, bytes);
}

}  // namespace lowbit
