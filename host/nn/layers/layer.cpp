#include "nn/layers/layer.hpp"

#include "lowbit/error.hpp"

namespace lowbit {

void Layer::expect(bool condition, const std::string& what) const {
  LOWBIT_EXPECTS(condition, "layer '" + name_ + "': " + what);
}

void Layer::forward(Pass pass) {
  expect(pass == Pass::train || pass == Pass::eval || pass == Pass::calibrate, "unknown pass");
  backward_ready_ = false;
  forward_impl(pass);
  backward_ready_ = pass != Pass::eval;
}

void Layer::backward() {
  expect(backward_ready_, "backward needs a training forward pass first");
  backward_ready_ = false;
  backward_impl();
}

}  // namespace lowbit
