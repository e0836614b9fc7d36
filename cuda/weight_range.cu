// Last-value weight ranges per channel (TensorFlow's weight quantization):
//   asymmetric: [min(w), max(w)];  symmetric: [-max|w|, max|w|]
// over the finite weights, computed as two max reductions, q0 = max(-w) and
// q1 = max(w) (weight_range_value in reduction_order.hpp).
// quant_delay_identity: y = x and mask bit = (x == x) while *step < quant_delay.
#include "checks.hpp"
#include "launch.cuh"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "reduction.cuh"

namespace lowbit::cuda {
namespace {

struct WeightRangeBody {
  static constexpr int kQuantities = 2;
  const float* w;

  struct Element {
    const float* w;
    template <class Op>
    __device__ void operator()(std::int64_t i, float (&acc)[2], Op op) const {
      const float v = w[i];
      acc[0] = op(acc[0], lowbit::detail::weight_range_value(-v));
      acc[1] = op(acc[1], lowbit::detail::weight_range_value(v));
    }
  };
  __device__ Element bind(std::int64_t) const { return Element{w}; }
};

struct WeightRangeFinish {
  static constexpr int kQuantities = 2;
  float* min;
  float* max;
  bool symmetric;
  __device__ void operator()(std::int64_t c, const float (&totals)[2]) const {
    lowbit::detail::finish_weight_range(totals[0], totals[1], symmetric, min[c], max[c]);
  }
};

// One thread per mask word, which it writes whole: no atomics, no warp
// collectives. The strided reads cost nothing next to a training step, as
// weight tensors are small and this runs only when a quant delay is set.
__global__ void quant_delay_identity_kernel(const float* x, float* y, std::int64_t n,
                                            const std::int64_t* step, std::int64_t quant_delay,
                                            std::uint32_t* mask) {
  if (*step >= quant_delay) return;
  const std::int64_t words = (n + 31) / 32;
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t w = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; w < words;
       w += stride) {
    const std::int64_t begin = w * 32;
    const std::int64_t end = begin + 32 < n ? begin + 32 : n;
    std::uint32_t bits = 0u;
    for (std::int64_t i = begin; i < end; ++i) {
      const float v = x[i];
      y[i] = v;
      if (v == v) bits |= 1u << (i - begin);
    }
    if (mask != nullptr) mask[w] = bits;
  }
}

}  // namespace

void weight_range(const float* w, const ChannelLayout& layout, bool symmetric, float* min,
                  float* max, Workspace workspace, cudaStream_t stream) {
  lowbit::detail::check_weight_range(w, layout, min, max, workspace);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  detail::launch_channel_reduction(layout, WeightRangeBody{w}, lowbit::detail::MaxOp{},
                                   WeightRangeFinish{min, max, symmetric}, workspace, stream);
}

void fake_quant_weights(const float* w, float* y, const ChannelLayout& layout, RangeQuant quant,
                        bool symmetric, float* min, float* max, std::uint32_t* mask,
                        Workspace workspace, cudaStream_t stream) {
  lowbit::detail::check_fake_quant_range(w, y, layout, min, max, quant);
  weight_range(w, layout, symmetric, min, max, workspace, stream);
  fake_quant_range(w, y, layout, min, max, quant, mask, MaskFormat::pass, stream);
}

void quant_delay_identity(const float* x, float* y, std::int64_t n, const std::int64_t* step,
                          std::int64_t quant_delay, std::uint32_t* mask, cudaStream_t stream) {
  lowbit::detail::check_quant_delay_identity(x, y, n, step, quant_delay);
  if (n == 0) return;
  const unsigned grid = detail::grid_for((n + 31) / 32, detail::kBlockThreads);
  quant_delay_identity_kernel<<<grid, detail::kBlockThreads, 0, stream>>>(x, y, n, step,
                                                                          quant_delay, mask);
  LOWBIT_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
