// Softmax cross-entropy with its gradient and the running loss/accuracy
// totals, in one block (softmax_order.hpp fixes the order of every sum).
//
//   m = max_c x[c],  s = Σ_c exp(x[c] - m)
//   loss = log s - (x[label] - m)
//   d_logits[c] = (exp(x[c] - m)/s - [c == label]) / labelled_rows
//   totals += (Σ loss, #(first argmax == label), labelled_rows)
//
// Labels outside [0, classes) are padding rows here (no loss, zero gradient);
// the CPU reference rejects any label other than -1 and [0, classes).
// Batches are small (a few thousand rows of ≤ 1024 classes), so one block
// does it all: no float atomics, no second launch.
#include "checks.hpp"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "lowbit/nn_element.hpp"
#include "reduction.cuh"
#include "softmax_order.hpp"

namespace lowbit::cuda {
namespace {

using lowbit::detail::kSoftmaxThreads;
using lowbit::detail::kSoftmaxWarps;

__device__ int warp_sum(int v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(detail::kFullWarp, v, offset);
  return v;
}

__global__ void __launch_bounds__(kSoftmaxThreads)
    softmax_cross_entropy_kernel(const float* logits, const std::int32_t* labels,
                                 std::int64_t batch, int classes, float* d_logits,
                                 LossTotals* totals) {
  __shared__ int warp_labelled[kSoftmaxWarps];
  __shared__ double warp_loss[kSoftmaxWarps];
  __shared__ std::int64_t warp_correct[kSoftmaxWarps];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;

  // Labelled rows first: every gradient is divided by their count.
  int count = 0;
  for (std::int64_t r = threadIdx.x; r < batch; r += kSoftmaxThreads)
    count += is_labelled(labels[r], classes) ? 1 : 0;
  count = warp_sum(count);
  if (lane == 0) warp_labelled[warp] = count;
  __syncthreads();
  std::int64_t labelled = 0;
  for (int w = 0; w < kSoftmaxWarps; ++w) labelled += warp_labelled[w];
  const float labelled_rows = static_cast<float>(labelled);

  double loss = 0.0;  // lane 0's running sum over this warp's rows
  std::int64_t correct = 0;
  for (std::int64_t r = warp; r < batch; r += kSoftmaxWarps) {
    const float* row = logits + r * classes;
    const std::int32_t label = labels[r];
    const bool labelled_row = is_labelled(label, classes);
    float best = -INFINITY;
    int best_index = classes;
    for (int c = lane; c < classes; c += 32) {
      const float v = row[c];
      if (argmax_takes(v, c, best, best_index)) {
        best = v;
        best_index = c;
      }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      const float other = __shfl_xor_sync(detail::kFullWarp, best, offset);
      const int other_index = __shfl_xor_sync(detail::kFullWarp, best_index, offset);
      if (argmax_takes(other, other_index, best, best_index)) {
        best = other;
        best_index = other_index;
      }
    }
    float partial = 0.0f;
    for (int c = lane; c < classes; c += 32) partial += expf(row[c] - best);
    // Every lane ends with the same bits: the butterfly's pairs add commutatively.
    const float exp_sum = detail::warp_reduce(partial, lowbit::detail::SumOp{});
    if (labelled_row && lane == 0) {
      loss += static_cast<double>(softmax_row_loss(exp_sum, row[label] - best));
      correct += best_index == label ? 1 : 0;
    }
    if (d_logits != nullptr) {
      float* d_row = d_logits + r * classes;
      for (int c = lane; c < classes; c += 32)
        d_row[c] = labelled_row ? softmax_logit_grad(expf(row[c] - best), exp_sum, c == label,
                                                     labelled_rows)
                                : 0.0f;
    }
  }
  if (lane == 0) {
    warp_loss[warp] = loss;
    warp_correct[warp] = correct;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double batch_loss = 0.0;
    std::int64_t batch_correct = 0;
    for (int w = 0; w < kSoftmaxWarps; ++w) {
      batch_loss += warp_loss[w];
      batch_correct += warp_correct[w];
    }
    totals->loss_sum += batch_loss;
    totals->correct += batch_correct;
    totals->examples += labelled;
  }
}

}  // namespace

void softmax_cross_entropy(const float* logits, const std::int32_t* labels, std::int64_t batch,
                           int classes, float* d_logits, LossTotals* totals,
                           cudaStream_t stream) {
  lowbit::detail::check_softmax_cross_entropy(logits, labels, batch, classes, totals);
  if (batch == 0) return;
  softmax_cross_entropy_kernel<<<1, kSoftmaxThreads, 0, stream>>>(logits, labels, batch, classes,
                                                                 d_logits, totals);
  LOWBIT_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
