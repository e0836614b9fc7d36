// The fixed order of every per-channel reduction (sums of gradients, min/max
// of weights), shared by the GPU kernels (reduction.cuh) and mirrored here on
// the host for the CPU reference. Floating-point sums depend on order, so
// this order depends only on the tensor layout, never on the device, and the
// reference reproduces it to the bit.
//
// Order: each row (o, c) of `inner` elements is cut into pieces of kPiece.
// A piece is one "item": thread t of 256 folds elements t, t+256, ... in turn,
// then the block combines its 256 values with two 32-lane xor butterflies
// (per warp, then over the 8 warp results). Channel c's items, ordered
// (o, piece), are folded the same way by one block in a second launch.
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

inline std::int64_t pieces_per_row(const ChannelLayout& layout) {
  return (layout.inner + kReducePiece - 1) / kReducePiece;
}
inline std::int64_t items_per_channel(const ChannelLayout& layout) {
  return layout.outer * pieces_per_row(layout);
}
/// Index of item (o, piece) of channel c, quantity q, in the workspace.
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
  const std::int64_t pieces = pieces_per_row(layout);
  const std::int64_t per_channel = items_per_channel(layout);
  for (std::int64_t row = 0; row < layout.outer * layout.channels; ++row) {
    const std::int64_t c = row % layout.channels;
    const std::int64_t o = row / layout.channels;
    const auto value = bind(c);
    for (std::int64_t piece = 0; piece < pieces; ++piece) {
      const std::int64_t start = piece * kReducePiece;
      const std::int64_t len = std::min(kReducePiece, layout.inner - start);
      const std::int64_t base = row * layout.inner + start;
      for (int q = 0; q < kQuantities; ++q) {
        // Thread t takes items t, t + kReduceThreads, ... of the piece; the
        // loop stops at len so that short rows (a Linear bias has one item
        // per row) cost their items, not a whole piece.
        std::array<float, kReduceThreads> acc;
        acc.fill(Op::identity());
        for (int t = 0; t < kReduceThreads && t < len; ++t)
          for (std::int64_t j = t; j < len; j += kReduceThreads)
            acc[t] = op(acc[t], value(base + j, q));
        partials[partial_index(q, c, layout.channels, o * pieces + piece, per_channel)] =
            block_reduce_ref(acc, op, len);
      }
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
