// Straight-through-estimator backward from the saved bit-packed mask.
//
//   dx    = dy·pass                      (8 bytes + 1 bit per element, 4 for
//                                         bf16/fp16; a blocked dy gives dy·0:
//                                         ±0, or NaN)
//   d_min = Σ dy where x < nudged_min    (sides mask: plane 1 and not plane 0)
//   d_max = Σ dy where x > nudged_max    (plane 0 and not plane 1)
#include "checks.hpp"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "reduction.cuh"
#include "tiles.cuh"

namespace lowbit::cuda {
namespace {

// ---------------------------------------------------------------------------
// Kernels

/// Warp tiles as in tiles.cuh: the 32 elements a warp handles at step k share
/// one mask word, which every lane loads (a broadcast).
template <class T, MaskFormat kFormat>
__global__ void __launch_bounds__(256)
    ste_backward_kernel(const T* dy, const std::uint32_t* mask, std::int64_t n, T* dx) {
  using detail::kTileElems;
  using detail::kTileItems;
  const int lane = threadIdx.x & 31;
  const std::int64_t first_tile = (std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x) >> 5;
  const std::int64_t tile_stride = (std::int64_t{gridDim.x} * blockDim.x) >> 5;
  const std::int64_t plane_words = (n + 31) / 32;
  for (std::int64_t tile = first_tile; tile * kTileElems < n; tile += tile_stride) {
    const std::int64_t base = tile * kTileElems + lane;
    float g[kTileItems];
    std::uint32_t words[kTileItems];
#pragma unroll
    for (int k = 0; k < kTileItems; ++k) {
      const std::int64_t i = base + 32 * k;
      const std::int64_t w = tile * kTileItems + k;
      g[k] = i < n ? to_float(dy[i]) : 0.0f;
      words[k] = w < plane_words ? mask[w] : 0u;
      if (kFormat == MaskFormat::sides) words[k] &= w < plane_words ? mask[plane_words + w] : 0u;
    }
#pragma unroll
    for (int k = 0; k < kTileItems; ++k) {
      const std::int64_t i = base + 32 * k;
      if (i < n) dx[i] = from_float<T>(ste_gradient(g[k], (words[k] >> lane) & 1u));
    }
  }
}

/// Element body of the range-gradient reduction (quantities: d_min, d_max).
template <class T>
struct RangeGradBody {
  static constexpr int kQuantities = 2;
  const T* dy;
  const std::uint32_t* mask;
  std::int64_t plane_words;
  T* dx;

  struct Element {
    const T* dy;
    const std::uint32_t* mask;
    std::int64_t plane_words;
    T* dx;
    template <class Op>
    __device__ void operator()(std::int64_t i, float (&acc)[2], Op op) const {
      const float g = to_float(dy[i]);
      const bool ge_min = (mask[i >> 5] >> (i & 31)) & 1u;
      const bool le_max = (mask[plane_words + (i >> 5)] >> (i & 31)) & 1u;
      dx[i] = from_float<T>(ste_gradient(g, ge_min && le_max));
      acc[0] = op(acc[0], ste_gradient(g, le_max && !ge_min));
      acc[1] = op(acc[1], ste_gradient(g, ge_min && !le_max));
    }
  };
  __device__ Element bind(std::int64_t) const { return Element{dy, mask, plane_words, dx}; }
};

struct RangeGradFinish {
  static constexpr int kQuantities = 2;
  float* d_min;
  float* d_max;
  __device__ void operator()(std::int64_t c, const float (&totals)[2]) const {
    d_min[c] = totals[0];
    d_max[c] = totals[1];
  }
};

}  // namespace

// ---------------------------------------------------------------------------
// Launchers

namespace {

template <class T>
void ste_backward_as(const T* dy, const std::uint32_t* mask, MaskFormat mask_format, std::int64_t n,
                     T* dx, cudaStream_t stream) {
  lowbit::detail::check_ste_backward(dy, mask, n, dx);
  if (n == 0) return;
  const unsigned threads = detail::kBlockThreads;
  const unsigned grid = detail::grid_for(n, detail::kTileElems * (threads / 32));
  if (mask_format == MaskFormat::sides) {
    ste_backward_kernel<T, MaskFormat::sides><<<grid, threads, 0, stream>>>(dy, mask, n, dx);
    LOWBIT_LAUNCH_CHECK();
  } else {
    ste_backward_kernel<T, MaskFormat::pass><<<grid, threads, 0, stream>>>(dy, mask, n, dx);
    LOWBIT_LAUNCH_CHECK();
  }
}

template <class T>
void ste_backward_range_as(const T* dy, const std::uint32_t* sides_mask,
                           const ChannelLayout& layout, T* dx, float* d_min, float* d_max,
                           Workspace workspace, cudaStream_t stream) {
  lowbit::detail::check_ste_backward_range(dy, sides_mask, layout, dx, d_min, d_max, workspace);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  detail::launch_channel_reduction(layout, RangeGradBody<T>{dy, sides_mask, (n + 31) / 32, dx},
                                   lowbit::detail::SumOp{}, RangeGradFinish{d_min, d_max},
                                   workspace, stream);
}

}  // namespace

#define LOWBIT_STE_BACKWARD_LAUNCHERS(T)                                                  \
  void ste_backward(const T* dy, const std::uint32_t* mask, MaskFormat mask_format,       \
                    std::int64_t n, T* dx, cudaStream_t stream) {                         \
    ste_backward_as(dy, mask, mask_format, n, dx, stream);                                \
  }                                                                                       \
  void ste_backward_range(const T* dy, const std::uint32_t* sides_mask,                   \
                          const ChannelLayout& layout, T* dx, float* d_min, float* d_max, \
                          Workspace workspace, cudaStream_t stream) {                     \
    ste_backward_range_as(dy, sides_mask, layout, dx, d_min, d_max, workspace, stream);   \
  }
LOWBIT_STE_BACKWARD_LAUNCHERS(float)
LOWBIT_STE_BACKWARD_LAUNCHERS(bf16)
LOWBIT_STE_BACKWARD_LAUNCHERS(fp16)
#undef LOWBIT_STE_BACKWARD_LAUNCHERS

}  // namespace lowbit::cuda
