// CPU reference of softmax_cross_entropy.cu, in the kernel's order
// (softmax_order.hpp): lanes, butterflies, warps and all.
#include <array>
#include <string>

#include "checks.hpp"
#include "lowbit/error.hpp"
#include "lowbit/nn_element.hpp"
#include "lowbit/ref.hpp"
#include "reduction_order.hpp"
#include "softmax_order.hpp"

namespace lowbit::ref {

void softmax_cross_entropy(const float* logits, const std::int32_t* labels, std::int64_t batch,
                           int classes, float* d_logits, LossTotals* totals) {
  detail::check_softmax_cross_entropy(logits, labels, batch, classes, totals);
  if (batch == 0) return;
  std::int64_t labelled = 0;
  for (std::int64_t r = 0; r < batch; ++r) {
    LOWBIT_EXPECTS(labels[r] >= -1 && labels[r] < classes,
                   "label of row " + std::to_string(r) + " is " + std::to_string(labels[r]) +
                       ", outside [-1, " + std::to_string(classes) + ")");
    labelled += is_labelled(labels[r], classes) ? 1 : 0;
  }
  const float labelled_rows = static_cast<float>(labelled);

  std::array<double, detail::kSoftmaxWarps> warp_loss{};
  std::array<std::int64_t, detail::kSoftmaxWarps> warp_correct{};
  for (std::int64_t r = 0; r < batch; ++r) {
    const float* row = logits + r * classes;
    const std::int32_t label = labels[r];
    const bool labelled_row = is_labelled(label, classes);
    float best = -INFINITY;
    int best_index = classes;
    for (int c = 0; c < classes; ++c) {
      if (argmax_takes(row[c], c, best, best_index)) {
        best = row[c];
        best_index = c;
      }
    }
    std::array<float, 32> lanes;
    for (int lane = 0; lane < 32; ++lane) {
      lanes[lane] = 0.0f;
      for (int c = lane; c < classes; c += 32) lanes[lane] += expf(row[c] - best);
    }
    const float exp_sum = detail::butterfly_ref(lanes, detail::SumOp{});
    if (labelled_row) {
      const std::int64_t warp = r % detail::kSoftmaxWarps;
      warp_loss[warp] += static_cast<double>(softmax_row_loss(exp_sum, row[label] - best));
      warp_correct[warp] += best_index == label ? 1 : 0;
    }
    if (d_logits != nullptr) {
      float* d_row = d_logits + r * classes;
      for (int c = 0; c < classes; ++c)
        d_row[c] = labelled_row ? softmax_logit_grad(expf(row[c] - best), exp_sum, c == label,
                                                     labelled_rows)
                                : 0.0f;
    }
  }
  double loss = 0.0;
  std::int64_t correct = 0;
  for (int w = 0; w < detail::kSoftmaxWarps; ++w) {
    loss += warp_loss[w];
    correct += warp_correct[w];
  }
  totals->loss_sum += loss;
  totals->correct += correct;
  totals->examples += labelled;
}

}  // namespace lowbit::ref
