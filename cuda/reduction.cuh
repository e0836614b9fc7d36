// Fixed-order per-channel reductions on the GPU (order: reduction_order.hpp,
// whose host mirror the CPU reference uses). No float atomics: one block per
// item writes a partial, then one block per channel folds its partials.
#pragma once

#include <cstdint>

#include "launch.cuh"
#include "lowbit/error.hpp"
#include "reduction_order.hpp"
#include "tiles.cuh"

namespace lowbit::cuda::detail {

using lowbit::detail::item_extent;
using lowbit::detail::ItemExtent;
using lowbit::detail::kReduceItemsPerThread;
using lowbit::detail::kReduceThreads;
using lowbit::detail::partial_index;
using lowbit::detail::ReduceItems;

/// Every round lane l takes op(v_l, v_{l^offset}), as butterfly_ref does.
template <class Op>
__device__ float warp_reduce(float v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(kFullWarp, v, offset));
  return v;
}

/// Result valid in thread 0; `scratch` holds 32 floats of shared memory.
template <class Op>
__device__ float block_reduce(float v, Op op, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = Op::identity();
  if (warp == 0) {
    total = warp_reduce(lane < kReduceThreads / 32 ? scratch[lane] : Op::identity(), op);
  }
  __syncthreads();  // scratch is reused by the next call
  return total;
}

/// Reduces each item (reduction_order.hpp: a piece of one row, or whole rows
/// of one channel) into `partials`. Consecutive blocks take item m of each
/// channel in turn, so they read neighbouring memory.
/// Body: bind(channel) returns a device callable f(i, acc) that handles
/// element i (writing any elementwise output) and folds its kQuantities values
/// into acc with op.
template <class Op, class Body>
__global__ void __launch_bounds__(kReduceThreads)
    reduce_items_kernel(ChannelLayout layout, ReduceItems items, Body body, Op op,
                        float* partials) {
  constexpr int kQ = Body::kQuantities;
  __shared__ float scratch[32];
  const std::int64_t total_items = layout.channels * items.per_channel;
  const std::int64_t row_stride = layout.channels * layout.inner;
  for (std::int64_t item = blockIdx.x; item < total_items; item += gridDim.x) {
    const std::int64_t c = item % layout.channels;
    const std::int64_t m = item / layout.channels;
    const ItemExtent extent = item_extent(items, layout, m);
    const std::int64_t base =
        (extent.first_row * layout.channels + c) * layout.inner + extent.start;
    const auto element = body.bind(c);
    float acc[kQ];
#pragma unroll
    for (int q = 0; q < kQ; ++q) acc[q] = Op::identity();
#pragma unroll
    for (int k = 0; k < kReduceItemsPerThread; ++k) {
      // Within an item the index math is 32-bit: j < kReducePiece.
      const int j = static_cast<int>(threadIdx.x) + k * kReduceThreads;
      if (j < extent.len) element(base + j / extent.span * row_stride + j % extent.span, acc, op);
    }
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const float total = block_reduce(acc[q], op, scratch);
      if (threadIdx.x == 0)
        partials[partial_index(q, c, layout.channels, m, items.per_channel)] = total;
    }
  }
}

/// Folds each channel's partials; finish(c, totals) runs in thread 0.
template <class Op, class Finish>
__global__ void __launch_bounds__(kReduceThreads)
    finish_channels_kernel(const float* partials, std::int64_t channels,
                           std::int64_t per_channel, Op op, Finish finish) {
  constexpr int kQ = Finish::kQuantities;
  __shared__ float scratch[32];
  for (std::int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    float totals[kQ];
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      float acc = Op::identity();
      for (std::int64_t m = threadIdx.x; m < per_channel; m += kReduceThreads)
        acc = op(acc, partials[partial_index(q, c, channels, m, per_channel)]);
      totals[q] = block_reduce(acc, op, scratch);
    }
    if (threadIdx.x == 0) finish(c, totals);
  }
}

/// Runs both launches of a per-channel reduction.
template <class Op, class Body, class Finish>
void launch_channel_reduction(const ChannelLayout& layout, const Body& body, Op op,
                              const Finish& finish, Workspace workspace, cudaStream_t stream) {
  const ReduceItems items = lowbit::detail::reduce_items(layout);
  const std::int64_t total_items = layout.channels * items.per_channel;
  auto* partials = static_cast<float*>(workspace.data);
  const unsigned item_blocks = static_cast<unsigned>(std::min<std::int64_t>(total_items, 1 << 30));
  reduce_items_kernel<<<item_blocks, kReduceThreads, 0, stream>>>(layout, items, body, op,
                                                                  partials);
  LOWBIT_LAUNCH_CHECK();
  const unsigned channel_blocks =
      static_cast<unsigned>(std::min<std::int64_t>(layout.channels, 1 << 30));
  finish_channels_kernel<<<channel_blocks, kReduceThreads, 0, stream>>>(
      partials, layout.channels, items.per_channel, op, finish);
  LOWBIT_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda::detail
