// The fixed order of every per-channel reduction (sums of gradients, min/max
// of weights), shared by the GPU kernels (reduction.cuh) and mirrored here on
// the host for the CPU reference. Floating-point sums depend on order, so
// this order depends only on the tensor layout, never on the device, and the
// reference reproduces it to the bit.
//
// Order: channel c's elements, rows o = 0..outer-1 of `inner` each, are cut
// into "items" of at most kReducePiece elements (reduce_items):
//  - inner >= kReducePiece: each row is cut into pieces of kReducePiece (the
//    last may be shorter); item m is piece m % pieces of row m / pieces.
//  - 0 < inner < kReducePiece: item m is the R = kReducePiece / inner whole
//    rows o = m·R .. min(m·R + R, outer) - 1 (the last item may hold fewer),
//    so a Linear bias (inner = 1) sums 2048 batch rows per item rather than
//    one.
// Element j of an item is offset start + j % span of row first_row + j / span,
// where span = min(inner - start, kReducePiece) is what the item takes from
// each of its rows (item_extent). Thread t of 256 folds elements t, t+256, ...
// in turn, then the block combines its 256 values with two 32-lane xor
// butterflies (per warp, then over the 8 warp results). Channel c's items, in
// order m, are folded the same way by one block in a second launch.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>

#include "lowbit/element.hpp"
#include "lowbit/types.hpp"

namespace lowbit::detail {

inline constexpr int kReduceThreads = 256;
inline constexpr int kReduceItemsPerThread = 8;
inline constexpr std::int64_t kReducePiece = kReduceThreads * kReduceItemsPerThread;
/// Most quantities one reduction carries (d_min and d_max).
inline constexpr int kReducedQuantities = 2;

/// How a layout's channels are cut into items (the order above).
struct ReduceItems {
  std::int64_t rows;         ///< rows per item (1 when rows are cut into pieces)
  std::int64_t pieces;       ///< items per row (1 when items hold whole rows)
  std::int64_t per_channel;  ///< items of each channel
};

inline ReduceItems reduce_items(const ChannelLayout& layout) {
  if (layout.inner >= kReducePiece) {
    const std::int64_t pieces = (layout.inner + kReducePiece - 1) / kReducePiece;
    return {1, pieces, layout.outer * pieces};
  }
  if (layout.inner == 0) return {1, 1, 0};
  const std::int64_t rows = kReducePiece / layout.inner;
  return {rows, 1, (layout.outer + rows - 1) / rows};
}
inline std::int64_t items_per_channel(const ChannelLayout& layout) {
  return reduce_items(layout).per_channel;
}

/// Where item m of a channel lies: element j (j < len) is offset
/// start + j % span of row first_row + j / span.
struct ItemExtent {
  std::int64_t first_row;
  std::int64_t start;
  int span;  ///< elements taken from each row
  int len;   ///< elements in all, at most kReducePiece
};
LOWBIT_HD ItemExtent item_extent(const ReduceItems& items, const ChannelLayout& layout,
                                 std::int64_t m) {
  const std::int64_t first_row = m / items.pieces * items.rows;
  const std::int64_t start = m % items.pieces * kReducePiece;
  const std::int64_t rows_left = layout.outer - first_row;
  const std::int64_t elems_left = layout.inner - start;
  const std::int64_t rows = rows_left < items.rows ? rows_left : items.rows;
  const std::int64_t span = elems_left < kReducePiece ? elems_left : kReducePiece;
  return {first_row, start, static_cast<int>(span), static_cast<int>(rows * span)};
}

/// Index of item m (item_in_channel) of channel c, quantity q, in the workspace.
LOWBIT_HD std::int64_t partial_index(int q, std::int64_t c, std::int64_t channels,
                                     std::int64_t item_in_channel, std::int64_t per_channel) {
  return (q * channels + c) * per_channel + item_in_channel;
}

struct SumOp {
  LOWBIT_HD static constexpr float identity() { return 0.0f; }
  LOWBIT_HD float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  LOWBIT_HD static constexpr float identity() { return -INFINITY; }
  LOWBIT_HD float operator()(float a, float b) const { return max_nan(a, b); }
};

/// A weight's contribution to its channel's range: non-finite weights are left
/// out (-inf is MaxOp's identity), so they cannot poison the range.
LOWBIT_HD float weight_range_value(float v) { return is_finite(v) ? v : -INFINITY; }

/// [min, max] from q0 = max(-w) and q1 = max(w) over the finite weights; a
/// channel without a finite weight gets [0, 0]. A bound of zero is always +0:
/// which zero a max of -0 and +0 keeps depends on the fold order.
LOWBIT_HD void finish_weight_range(float q0, float q1, bool symmetric, float& min, float& max) {
  if (!is_finite(q0) || !is_finite(q1)) {
    min = max = 0.0f;
    return;
  }
  const float magnitude = q0 > q1 ? q0 : q1;
  const float lo = symmetric ? -magnitude : -q0;
  const float hi = symmetric ? magnitude : q1;
  min = lo == 0.0f ? 0.0f : lo;
  max = hi == 0.0f ? 0.0f : hi;
}

// ---------------------------------------------------------------------------
// Host mirror

/// The 32-lane xor butterfly of warp_reduce, as lane 0 ends it: every round,
/// lane l takes op(v[l], v[l ^ offset]). Lane 0's result depends only on
/// lanes [0, offset) of each round, whose partners are l + offset, so only
/// those are computed: the same operations on the same operands.
template <class Op>
float butterfly_ref(std::array<float, 32> v, Op op) {
  for (int offset = 16; offset > 0; offset /= 2)
    for (int lane = 0; lane < offset; ++lane) v[lane] = op(v[lane], v[lane + offset]);
  return v[0];
}

/// block_reduce: a butterfly per warp, then one over the 8 warp results.
/// values[active..] hold Op::identity(): a warp of identities reduces to the
/// same value every time, so it is computed once.
template <class Op>
float block_reduce_ref(const std::array<float, kReduceThreads>& values, Op op,
                       std::int64_t active = kReduceThreads) {
  static const float idle_warp = [] {
    std::array<float, 32> identities;
    identities.fill(Op::identity());
    return butterfly_ref(identities, Op{});
  }();
  std::array<float, 32> warp_results;
  warp_results.fill(Op::identity());
  for (int w = 0; w < kReduceThreads / 32; ++w) {
    if (w * 32 >= active) {
      warp_results[w] = idle_warp;
      continue;
    }
    std::array<float, 32> lanes;
    for (int lane = 0; lane < 32; ++lane) lanes[lane] = values[w * 32 + lane];
    warp_results[w] = butterfly_ref(lanes, op);
  }
  return butterfly_ref(warp_results, op);
}

/// Reduces every item of `layout` into `partials` (laid out by partial_index),
/// then each channel's items, calling finish(c, totals) with kQuantities
/// totals. bind(c) returns a callable f(i, q) giving element i's value for
/// quantity q, so per-channel parameters are prepared once per channel.
template <int kQuantities, class Op, class Bind, class Finish>
void reduce_channels_ref(const ChannelLayout& layout, Op op, Bind bind, Finish finish,
                         float* partials) {
  const ReduceItems items = reduce_items(layout);
  const std::int64_t per_channel = items.per_channel;
  for (std::int64_t c = 0; c < layout.channels; ++c) {
    const auto value = bind(c);
    for (std::int64_t m = 0; m < per_channel; ++m) {
      const ItemExtent item = item_extent(items, layout, m);
      // Element j goes to thread t = j % kReduceThreads: walking the item's
      // rows in order, t wrapping, gives each thread its elements in the GPU's
      // order. Threads at or past len keep the identity.
      std::array<std::array<float, kReduceThreads>, kQuantities> acc;
      for (auto& lanes : acc) lanes.fill(Op::identity());
      const std::int64_t end_row = item.first_row + item.len / item.span;
      int t = 0;
      for (std::int64_t o = item.first_row; o < end_row; ++o) {
        const std::int64_t base = (o * layout.channels + c) * layout.inner + item.start;
        if (item.span == 1) {  // a Linear output: the runs below, without their overhead
          for (int q = 0; q < kQuantities; ++q) acc[q][t] = op(acc[q][t], value(base, q));
          if (++t == kReduceThreads) t = 0;
          continue;
        }
        // Runs of consecutive threads, which the compiler vectorises.
        for (int off = 0; off < item.span;) {
          const int run = std::min(item.span - off, kReduceThreads - t);
          for (int q = 0; q < kQuantities; ++q)
            for (int k = 0; k < run; ++k)
              acc[q][t + k] = op(acc[q][t + k], value(base + off + k, q));
          off += run;
          t = (t + run) % kReduceThreads;
        }
      }
      for (int q = 0; q < kQuantities; ++q)
        partials[partial_index(q, c, layout.channels, m, per_channel)] =
            block_reduce_ref(acc[q], op, item.len);
    }
  }
  for (std::int64_t c = 0; c < layout.channels; ++c) {
    std::array<float, kQuantities> totals;
    for (int q = 0; q < kQuantities; ++q) {
      std::array<float, kReduceThreads> acc;
      for (int t = 0; t < kReduceThreads; ++t) {
        acc[t] = Op::identity();
        for (std::int64_t m = t; m < per_channel; m += kReduceThreads)
          acc[t] = op(acc[t], partials[partial_index(q, c, layout.channels, m, per_channel)]);
      }
      totals[q] = block_reduce_ref(acc, op, per_channel);
    }
    finish(c, totals);
  }
}

}  // namespace lowbit::detail
