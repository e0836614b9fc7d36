// Bias and activation of a conv or linear output, and its backward.
//
//   forward:  y = act(x + bias[c]),   act = ReLU or identity
//   backward: dx = dy·[!relu or y > 0]·[no pass_mask or its bit i],
//             d_bias[c] = Σ_{i in c} dx[i]
//
// The d_bias sums are reduction.cuh's fixed-order tree (no atomics), so they
// equal the CPU reference's bit for bit.
#include "channel_cursor.hpp"
#include "checks.hpp"
#include "launch.cuh"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "lowbit/nn_element.hpp"
#include "reduction.cuh"

namespace lowbit::cuda {
namespace {

// ---------------------------------------------------------------------------
// Kernels

/// Grid-stride over the elements; with a bias, a cursor tracks the channel
/// without a division per element.
template <bool kHasBias>
__global__ void bias_activation_kernel(const float* x, const float* bias, ChannelLayout layout,
                                       std::int64_t n, detail::ChannelStep grid_step, bool relu,
                                       float* y) {
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  detail::ChannelCursor cursor{0, 0};
  if (kHasBias) cursor.start(i, layout.inner, layout.channels);
  for (; i < n; i += stride) {
    const float v = kHasBias ? x[i] + bias[cursor.channel] : x[i];
    y[i] = activation_forward(v, relu);
    if (kHasBias) cursor.advance(grid_step, layout.inner, layout.channels);
  }
}

__global__ void activation_backward_kernel(const float* dy, const float* y, bool relu,
                                           const std::uint32_t* pass_mask, std::int64_t n,
                                           float* dx) {
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride)
    dx[i] = ste_gradient(dy[i], activation_passes(y, relu, pass_mask, i));
}

/// Element body of the d_bias reduction: writes dx and folds it.
struct BiasGradBody {
  static constexpr int kQuantities = 1;
  const float* dy;
  const float* y;
  bool relu;
  const std::uint32_t* pass_mask;
  float* dx;

  struct Element {
    const float* dy;
    const float* y;
    bool relu;
    const std::uint32_t* pass_mask;
    float* dx;
    template <class Op>
    __device__ void operator()(std::int64_t i, float (&acc)[1], Op op) const {
      const float g = ste_gradient(dy[i], activation_passes(y, relu, pass_mask, i));
      dx[i] = g;
      acc[0] = op(acc[0], g);
    }
  };
  __device__ Element bind(std::int64_t) const { return Element{dy, y, relu, pass_mask, dx}; }
};

struct BiasGradFinish {
  static constexpr int kQuantities = 1;
  float* d_bias;
  __device__ void operator()(std::int64_t c, const float (&totals)[1]) const {
    d_bias[c] = totals[0];
  }
};

}  // namespace

// ---------------------------------------------------------------------------
// Launchers

void bias_activation(const float* x, const float* bias, const ChannelLayout& layout, bool relu,
                     float* y, cudaStream_t stream) {
  lowbit::detail::check_bias_activation(x, layout, y);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  const unsigned grid = detail::grid_for(n, detail::kBlockThreads);
  if (bias != nullptr) {
    const detail::ChannelStep grid_step =
        detail::channel_step(std::int64_t{grid} * detail::kBlockThreads, layout);
    bias_activation_kernel<true><<<grid, detail::kBlockThreads, 0, stream>>>(
        x, bias, layout, n, grid_step, relu, y);
    LOWBIT_LAUNCH_CHECK();
  } else {
    bias_activation_kernel<false><<<grid, detail::kBlockThreads, 0, stream>>>(
        x, nullptr, layout, n, detail::ChannelStep{0, 0}, relu, y);
    LOWBIT_LAUNCH_CHECK();
  }
}

void bias_activation_backward(const float* dy, const float* y, const ChannelLayout& layout,
                              bool relu, const std::uint32_t* pass_mask, float* dx,
                              float* d_bias, Workspace workspace, cudaStream_t stream) {
  lowbit::detail::check_bias_activation_backward(dy, y, layout, relu, dx, d_bias, workspace);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  if (d_bias != nullptr) {
    detail::launch_channel_reduction(layout, BiasGradBody{dy, y, relu, pass_mask, dx},
                                     lowbit::detail::SumOp{}, BiasGradFinish{d_bias}, workspace,
                                     stream);
    return;
  }
  const unsigned grid = detail::grid_for(n, detail::kBlockThreads);
  activation_backward_kernel<<<grid, detail::kBlockThreads, 0, stream>>>(dy, y, relu, pass_mask,
                                                                         n, dx);
  LOWBIT_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
