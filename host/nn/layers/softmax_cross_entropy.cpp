#include "nn/layers/layers.hpp"

namespace lowbit {

SoftmaxCrossEntropyLayer::SoftmaxCrossEntropyLayer(std::string name, Backend& backend,
                                                   std::int64_t batch, int classes,
                                                   Binding logits, const std::int32_t* labels,
                                                   LossTotals* totals)
    : Layer(std::move(name), backend), batch_(batch), classes_(classes), logits_(logits),
      labels_(labels), totals_(totals) {
  expect(logits.value && logits.grad && labels && totals, "unbound tensor");
}

void SoftmaxCrossEntropyLayer::forward_impl(Pass pass) {
  // The logit gradient falls out of the same pass; evaluation skips it.
  float* grad = pass == Pass::eval ? nullptr : logits_.grad;
  backend_.softmax_cross_entropy(logits_.value, labels_, batch_, classes_, grad, totals_);
}

void SoftmaxCrossEntropyLayer::backward_impl() {}

}  // namespace lowbit
