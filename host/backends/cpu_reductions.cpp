#include "backends/cpu_reductions.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "backends/cpu_isa.hpp"
#include "backends/cpu_parallel.hpp"
#include "backends/cpu_quant.hpp"
#include "checks.hpp"
#include "lowbit/element.hpp"
#include "lowbit/nn_element.hpp"
#include "reduction_order.hpp"

// The hot loops run in the workers below at the active level of cpu_isa.hpp
// (at_active_isa). Without FMA contraction every level gives the same bits.
// Everything the workers call is forced inline (and the level functions are
// `flatten`) so that it is compiled for the level too.
#define LOWBIT_INLINE __attribute__((always_inline)) inline

namespace lowbit::cpu {
namespace {

using detail::partial_index;

/// Runs a worker's f at the active level (at_active_isa), but at most kTop.
/// x86-64-v4 (AVX-512) beats v3 only for the item passes of weight_range (by
/// 22-27% on an AMD EPYC at 4M elements) and of bias_activation_backward
/// with d_bias (4-12%). The other workers run their v3 code on a v4 CPU:
/// there v4 was slower (ste_backward_range by 4-27%, lsq_init_scale by
/// 7-11%, bias_activation_backward without d_bias by 3-5%) or not faster
/// overall (lsq_backward: 2-6% faster per channel, 12% slower per tensor).
template <Isa kTop = Isa::x86_64_v3, class F>
void at_level(const F& f) {
  at_active_isa<kTop>(f);
}

constexpr int kLanes = detail::kReduceThreads;
constexpr int kWarp = 32;
constexpr int kWarps = kLanes / kWarp;
/// Elements the kernels take at a time: a mask word's worth, in loops of a
/// count known at compile time, which GCC vectorises with no remainder loop.
/// (At 16 it unrolls them completely instead, into a branch per element.)
constexpr int kChunk = 32;
/// Channels reduced side by side when inner == 1 (a Linear output): a row
/// then holds one element of each, so their lanes are stored column by
/// column, [lane][channel], and every row updates a contiguous slice, one
/// chunk.
constexpr int kColumns = kChunk;

// ---------------------------------------------------------------------------
// block_reduce_ref, vectorised: the same operations on the same operands.

// Eight floats in GCC's vector extension, for the butterflies. They live only
// in always-inline helpers, so the ABI note about passing them is moot.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float Floats8 __attribute__((vector_size(32)));
typedef std::int32_t Ints8 __attribute__((vector_size(32)));

LOWBIT_INLINE Floats8 load8(const float* p) {
  Floats8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

/// detail::SumOp and detail::MaxOp, also on Floats8. MaxOp's max_nan without
/// the short-circuit ||, which GCC turns into masked stores: as a plain
/// select it vectorises to a blend. Same results.
struct SumOp {
  static constexpr float identity() { return detail::SumOp::identity(); }
  template <class T>
  LOWBIT_INLINE T operator()(const T& a, const T& b) const {
    return a + b;
  }
};
struct MaxOp {
  static constexpr float identity() { return detail::MaxOp::identity(); }
  template <class T>
  LOWBIT_INLINE T operator()(const T& a, const T& b) const {
    return ((a != a) | (a > b)) ? a : b;
  }
};

/// The butterfly of a warp of identities (block_reduce_ref's idle_warp):
/// every lane holds the same value in every round.
template <class Op>
LOWBIT_INLINE float idle_warp() {
  float v = Op::identity();
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = Op{}(v, v);
  return v;
}

/// Number of warps block_reduce_ref reduces rather than replacing by
/// idle_warp: those with a lane below `active`.
LOWBIT_INLINE int active_warps(std::int64_t active) {
  return static_cast<int>(std::min<std::int64_t>((active + kWarp - 1) / kWarp, kWarps));
}

/// butterfly_ref's last three rounds on lanes 0..7 of z: lane 0's result.
template <class Op>
LOWBIT_INLINE float butterfly_last8(const Floats8& z) {
  const Op op;
  const Floats8 u = op(z, __builtin_shuffle(z, Ints8{4, 5, 6, 7, 4, 5, 6, 7}));  // lanes 0..3
  const Floats8 s = op(u, __builtin_shuffle(u, Ints8{2, 3, 2, 3, 2, 3, 2, 3}));  // lanes 0..1
  return op(s[0], s[1]);
}

/// block_reduce_ref(v, op, active) for v[0..kLanes).
template <class Op>
LOWBIT_INLINE float block_reduce_lanes(const float* v, std::int64_t active) {
  const Op op;
  const int warps = active_warps(active);
  alignas(32) float warp_results[kWarps];
  for (int w = 0; w < kWarps; ++w) {
    if (w >= warps) {
      warp_results[w] = idle_warp<Op>();
      continue;
    }
    // Rounds 16 and 8 (lane l takes lane l + offset), then the last three.
    const float* p = v + w * kWarp;
    const Floats8 y0 = op(load8(p), load8(p + 16));
    const Floats8 y1 = op(load8(p + 8), load8(p + 24));
    warp_results[w] = butterfly_last8<Op>(op(y0, y1));
  }
  // Over the 32 lanes of warp results, those from 8 on the identity.
  const Floats8 identity = Floats8{} + Op::identity();
  const Floats8 r16 = op(load8(warp_results), identity);
  return butterfly_last8<Op>(op(r16, op(identity, identity)));
}

template <int N>
using Fixed = std::integral_constant<int, N>;

/// Round `kOffset` of butterfly_ref in warps [0, warps) of `width` columns:
/// lane l takes lane l + kOffset.
template <int kOffset, class Op, class Width>
LOWBIT_INLINE void column_round(float* a, Width width, int warps) {
  const Op op;
  for (int w = 0; w < warps; ++w)
    for (int lane = 0; lane < kOffset; ++lane) {
      float* dst = a + (w * kWarp + lane) * width;
      const float* src = dst + kOffset * width;
      for (int j = 0; j < width; ++j) dst[j] = op(dst[j], src[j]);
    }
}

/// block_reduce_ref of `width` <= kColumns columns at once: lane t of column
/// j is a[t·width + j] (a is overwritten); the results go to out[0..width).
template <class Op, class Width>
LOWBIT_INLINE void block_reduce_columns(float* a, Width width, std::int64_t active, float* out) {
  const int warps = active_warps(active);
  column_round<16, Op>(a, width, warps);
  column_round<8, Op>(a, width, warps);
  column_round<4, Op>(a, width, warps);
  column_round<2, Op>(a, width, warps);
  column_round<1, Op>(a, width, warps);
  float r[kWarp * kColumns];
  for (int w = 0; w < kWarp; ++w)
    for (int j = 0; j < width; ++j)
      r[w * width + j] = w < warps    ? a[w * kWarp * width + j]
                         : w < kWarps ? idle_warp<Op>()
                                      : Op::identity();
  column_round<16, Op>(r, width, 1);
  column_round<8, Op>(r, width, 1);
  column_round<4, Op>(r, width, 1);
  column_round<2, Op>(r, width, 1);
  column_round<1, Op>(r, width, 1);
  for (int j = 0; j < width; ++j) out[j] = r[j];
}

// ---------------------------------------------------------------------------
// Element kernels: each folds a run of elements into its lanes (see
// reduce_tasks below) with the element math of its lowbit::ref op, and
// writes dx where the op has one.

/// kBit[k] = bit k: a table, so that picking bit k of a word vectorises
/// without per-lane shifts (which SSE2 lacks).
constexpr std::array<std::uint32_t, kChunk> kBit = [] {
  std::array<std::uint32_t, kChunk> bits{};
  for (int k = 0; k < kChunk; ++k) bits[k] = 1u << k;
  return bits;
}();

/// Bits of a mask plane from element i on (bit k: element i + k), reading no
/// word past element i + count - 1.
LOWBIT_INLINE std::uint32_t mask_bits(const std::uint32_t* plane, std::int64_t i, int count) {
  const std::int64_t word = i >> 5;
  const int shift = static_cast<int>(i & 31);
  std::uint32_t bits = plane[word] >> shift;
  if (shift + count > 32) bits |= plane[word + 1] << (32 - shift);
  return bits;
}

/// Calls kernel.chunk(i, k0, count, acc, channel) for elements i+k0 ..
/// i+k0+count-1 in chunks of kChunk, full ones with a compile-time count.
/// The kernels that write dx do so in the loop that reads dy: GCC checks at
/// run time that they do not partly overlap, and lets dx == dy (in place)
/// through to the vector loop.
template <class Kernel, class Channel>
LOWBIT_INLINE void run_kernel(const Kernel& kernel, std::int64_t i, int len, float* const* acc,
                              Channel channel) {
  int k0 = 0;
  for (; k0 + kChunk <= len; k0 += kChunk) kernel.chunk(i, k0, Fixed<kChunk>{}, acc, channel);
  if (k0 < len) kernel.chunk(i, k0, len - k0, acc, channel);
}

struct WeightRangeKernel {  // q0: max(-w), q1: max(w) over finite weights
  const float* w;
  template <class Count, class Channel>
  LOWBIT_INLINE void chunk(std::int64_t i, int k0, Count count, float* const* acc, Channel) const {
    float* neg = acc[0] + k0;
    float* pos = acc[1] + k0;
    const float* src = w + i + k0;
    for (int k = 0; k < count; ++k) {
      // weight_range_value(±v), then MaxOp: the accumulators start at -inf
      // and take no NaN (weight_range_value maps NaN to -inf), so max_nan(a,
      // b) is a > b ? a : b here, a single max instruction.
      const float v = src[k];
      const bool finite = is_finite(v);  // is_finite(-v) too
      const float neg_v = finite ? -v : -INFINITY;
      const float pos_v = finite ? v : -INFINITY;
      // Both loads before both stores: GCC does not know that neg and pos
      // never overlap, and interleaved it resorts to masked stores.
      const float a0 = neg[k], a1 = pos[k];
      neg[k] = a0 > neg_v ? a0 : neg_v;
      pos[k] = a1 > pos_v ? a1 : pos_v;
    }
  }
};

/// T: float, bf16 or fp16 elements (widened exactly; dx rounded once).
template <class T>
struct SteRangeKernel {  // q0: Σ dy below the range, q1: Σ dy above it
  const T* dy;
  const std::uint32_t* at_or_above_min;  // sides plane 0
  const std::uint32_t* at_or_below_max;  // sides plane 1
  T* dx;
  template <class Count, class Channel>
  LOWBIT_INLINE void chunk(std::int64_t i, int k0, Count count, float* const* acc, Channel) const {
    const std::uint32_t ge = mask_bits(at_or_above_min, i + k0, count);
    const std::uint32_t le = mask_bits(at_or_below_max, i + k0, count);
    float* below = acc[0] + k0;
    float* above = acc[1] + k0;
    const T* src = dy + i + k0;
    T* dst = dx + i + k0;
    // One loop per output: in one loop GCC turns a0 + ste_gradient(..) into
    // masked stores.
    for (int k = 0; k < count; ++k)
      dst[k] = from_float<T>(ste_gradient(to_float(src[k]), ((ge & le) & kBit[k]) != 0u));
    for (int k = 0; k < count; ++k)
      below[k] = below[k] + ste_gradient(to_float(src[k]), ((le & ~ge) & kBit[k]) != 0u);
    for (int k = 0; k < count; ++k)
      above[k] = above[k] + ste_gradient(to_float(src[k]), ((ge & ~le) & kBit[k]) != 0u);
  }
};

/// q0: Σ dx. kSum false: dx alone (acc unused).
template <bool kRelu, bool kMask, bool kSum>
struct BiasKernel {
  const float* dy;
  const float* y;
  const std::uint32_t* pass_mask;
  float* dx;
  template <class Count, class Channel>
  LOWBIT_INLINE void chunk(std::int64_t i, int k0, Count count, float* const* acc, Channel) const {
    const std::uint32_t bits = kMask ? mask_bits(pass_mask, i + k0, count) : ~0u;
    const float* src = dy + i + k0;
    float* dst = dx + i + k0;
    for (int k = 0; k < count; ++k) {
      // activation_passes, with relu and the mask known here.
      const bool passes = (!kRelu || y[i + k0 + k] > 0.0f) & ((bits & kBit[k]) != 0u);
      const float g = ste_gradient(src[k], passes);
      dst[k] = g;
      if constexpr (kSum) acc[0][k0 + k] = acc[0][k0 + k] + g;
    }
  }
};

struct LsqBackwardKernel {  // q0: Σ lsq_scale_grad_term
  const float* dy;
  const float* x;
  const float* inv_scale;  // per channel, make_lsq's
  float qmin, qmax;
  float* dx;
  template <class Count, class Channel>
  LOWBIT_INLINE void chunk(std::int64_t i, int k0, Count count, float* const* acc,
                           Channel channel) const {
    float* sum = acc[0] + k0;
    for (int k = 0; k < count; ++k) {
      LsqParams p;
      p.inv_scale = channel(inv_scale, k0 + k);
      p.qmin = qmin;
      p.qmax = qmax;
      const float xi = x[i + k0 + k];
      const float g = dy[i + k0 + k];
      dx[i + k0 + k] = ste_gradient(g, lsq_passes(xi, p));
      sum[k] = sum[k] + lsq_scale_grad_term(xi, g, p);
    }
  }
};

struct AbsSumKernel {  // q0: Σ |x|
  const float* x;
  template <class Count, class Channel>
  LOWBIT_INLINE void chunk(std::int64_t i, int k0, Count count, float* const* acc, Channel) const {
    float* sum = acc[0] + k0;
    for (int k = 0; k < count; ++k) sum[k] = sum[k] + fabsf(x[i + k0 + k]);
  }
};

// ---------------------------------------------------------------------------
// Items and the lanes their elements go to.

/// How the items of a layout are shared out. Ordinarily a task is one item
/// (channel c, item m); with inner == 1 it is item m of kColumns channels.
struct Plan {
  ChannelLayout layout;
  detail::ReduceItems items;
  std::int64_t column_blocks;  ///< channel blocks when inner == 1, else 0
  std::int64_t tasks;
};

Plan make_plan(const ChannelLayout& layout) {
  Plan plan{layout, detail::reduce_items(layout), 0, 0};
  if (layout.inner == 1) {
    plan.column_blocks = (layout.channels + kColumns - 1) / kColumns;
    plan.tasks = plan.items.per_channel * plan.column_blocks;
  } else {
    plan.tasks = layout.channels * plan.items.per_channel;
  }
  return plan;
}

/// A per-channel parameter of the k-th element of a run: the run lies in one
/// channel (OneChannel), or in consecutive channels from c0 (ChannelRun).
struct OneChannel {
  std::int64_t c;
  LOWBIT_INLINE float operator()(const float* per_channel, int) const { return per_channel[c]; }
};
struct ChannelRun {
  std::int64_t c0;
  LOWBIT_INLINE float operator()(const float* per_channel, int k) const {
    return per_channel[c0 + k];
  }
};

/// Item m of channels c0 .. c0+width-1 when inner == 1, lanes column by
/// column in acc, into `partials`.
template <int Q, class Op, class Kernel, class Width>
LOWBIT_INLINE void reduce_columns(const Plan& plan, const Kernel& kernel, std::int64_t m,
                                  std::int64_t c0, Width width, float (&acc)[Q][kLanes * kColumns],
                                  float* partials) {
  const ChannelLayout& layout = plan.layout;
  const detail::ItemExtent item = detail::item_extent(plan.items, layout, m);
  // The block reduction reads only the warps that hold elements.
  const int lanes = kWarp * active_warps(item.len);
  for (auto& column_lanes : acc)
    std::fill(column_lanes, column_lanes + lanes * width, Op::identity());
  float* slots[Q];
  for (int r = 0; r < item.len; ++r) {
    for (int q = 0; q < Q; ++q) slots[q] = acc[q] + r % kLanes * width;
    run_kernel(kernel, (item.first_row + r) * layout.channels + c0, width, slots, ChannelRun{c0});
  }
  float totals[kColumns];
  for (int q = 0; q < Q; ++q) {
    block_reduce_columns<Op>(acc[q], width, item.len, totals);
    for (int j = 0; j < width; ++j)
      partials[partial_index(q, c0 + j, layout.channels, m, plan.items.per_channel)] = totals[j];
  }
}

/// Reduces tasks [begin, end) of `plan` into `partials` (partial_index
/// order). The kernel folds elements i .. i+len-1 into acc[q][0 .. len),
/// the lanes they belong to, for each quantity q < Q (run_kernel).
template <int Q, class Op, class Kernel>
LOWBIT_INLINE void reduce_tasks(const Plan& plan, const Kernel& kernel, std::int64_t begin,
                                std::int64_t end, float* partials) {
  const ChannelLayout& layout = plan.layout;
  const std::int64_t per_channel = plan.items.per_channel;
  float* slots[Q];
  if (plan.column_blocks == 0) {
    alignas(64) float acc[Q][kLanes];
    for (std::int64_t task = begin; task < end; ++task) {
      const std::int64_t c = task / per_channel;
      const std::int64_t m = task % per_channel;
      const detail::ItemExtent item = detail::item_extent(plan.items, layout, m);
      for (auto& lanes : acc)
        std::fill(lanes, lanes + kWarp * active_warps(item.len), Op::identity());
      // As reduce_channels_ref: walking the item's rows, lane t wrapping,
      // in runs of consecutive lanes.
      const std::int64_t end_row = item.first_row + item.len / item.span;
      int t = 0;
      for (std::int64_t o = item.first_row; o < end_row; ++o) {
        const std::int64_t base = (o * layout.channels + c) * layout.inner + item.start;
        for (int off = 0; off < item.span;) {
          const int run = std::min(item.span - off, kLanes - t);
          for (int q = 0; q < Q; ++q) slots[q] = acc[q] + t;
          run_kernel(kernel, base + off, run, slots, OneChannel{c});
          off += run;
          t = (t + run) % kLanes;
        }
      }
      for (int q = 0; q < Q; ++q)
        partials[partial_index(q, c, layout.channels, m, per_channel)] =
            block_reduce_lanes<Op>(acc[q], item.len);
    }
    return;
  }
  // inner == 1: item m of channel c is element c of rows first_row + t,
  // t < len, so row t of the item goes to lane t % kLanes of every channel.
  alignas(64) float acc[Q][kLanes * kColumns];
  for (std::int64_t task = begin; task < end; ++task) {
    const std::int64_t m = task / plan.column_blocks;
    const std::int64_t c0 = task % plan.column_blocks * kColumns;
    const int width = static_cast<int>(std::min<std::int64_t>(kColumns, layout.channels - c0));
    if (width == kColumns)
      reduce_columns<Q, Op>(plan, kernel, m, c0, Fixed<kColumns>{}, acc, partials);
    else
      reduce_columns<Q, Op>(plan, kernel, m, c0, width, acc, partials);
  }
}

/// The second pass of reduce_channels_ref for quantity q of channels
/// c0 .. c0+width-1: lane t folds items t, t+kLanes, ..., then the block
/// reduction; the totals go to out[0..width).
template <class Op, class Width>
LOWBIT_INLINE void fold_items(const Plan& plan, const float* partials, int q, std::int64_t c0,
                              Width width, float* out) {
  const Op op;
  const std::int64_t channels = plan.layout.channels;
  const std::int64_t per_channel = plan.items.per_channel;
  alignas(64) float a[kLanes * kColumns];
  std::fill(a, a + kWarp * active_warps(per_channel) * width, Op::identity());
  for (std::int64_t m0 = 0; m0 < per_channel; m0 += kLanes) {
    const int lanes = static_cast<int>(std::min<std::int64_t>(kLanes, per_channel - m0));
    for (int j = 0; j < width; ++j) {
      const float* p = partials + partial_index(q, c0 + j, channels, m0, per_channel);
      for (int t = 0; t < lanes; ++t) a[t * width + j] = op(a[t * width + j], p[t]);
    }
  }
  if (width == 1)  // one channel's lanes, in order
    out[0] = block_reduce_lanes<Op>(a, per_channel);
  else
    block_reduce_columns<Op>(a, width, per_channel, out);
}

template <class Op>
LOWBIT_INLINE void fold_items(const Plan& plan, const float* partials, int q, std::int64_t c0,
                              int width, float* out) {
  if (width == kColumns)
    fold_items<Op>(plan, partials, q, c0, Fixed<kColumns>{}, out);
  else
    fold_items<Op, int>(plan, partials, q, c0, width, out);
}

// ---------------------------------------------------------------------------
// The workers: one per op and pass, each running at the active level.

void weight_range_tasks(const Plan& plan, const float* w, std::int64_t begin, std::int64_t end,
                        float* partials) {
  at_level<Isa::x86_64_v4>(
      [&](auto) { reduce_tasks<2, MaxOp>(plan, WeightRangeKernel{w}, begin, end, partials); });
}

template <class T>
void ste_range_tasks(const Plan& plan, const T* dy, const std::uint32_t* mask, T* dx,
                     std::int64_t begin, std::int64_t end, float* partials) {
  at_level([&](auto) {
    const std::int64_t plane_words = (plan.layout.size() + 31) / 32;
    reduce_tasks<2, SumOp>(plan, SteRangeKernel<T>{dy, mask, mask + plane_words, dx}, begin, end,
                           partials);
  });
}

template <bool kRelu, bool kMask>
LOWBIT_INLINE void bias_tasks_as(const Plan& plan, const float* dy, const float* y,
                                 const std::uint32_t* mask, float* dx, std::int64_t begin,
                                 std::int64_t end, float* partials) {
  reduce_tasks<1, SumOp>(plan, BiasKernel<kRelu, kMask, true>{dy, y, mask, dx}, begin, end,
                         partials);
}

void bias_tasks(const Plan& plan, const float* dy, const float* y, bool relu,
                const std::uint32_t* mask, float* dx, std::int64_t begin, std::int64_t end,
                float* partials) {
  at_level<Isa::x86_64_v4>([&](auto) {
    if (relu && mask != nullptr)
      bias_tasks_as<true, true>(plan, dy, y, mask, dx, begin, end, partials);
    else if (relu)
      bias_tasks_as<true, false>(plan, dy, y, mask, dx, begin, end, partials);
    else if (mask != nullptr)
      bias_tasks_as<false, true>(plan, dy, y, mask, dx, begin, end, partials);
    else
      bias_tasks_as<false, false>(plan, dy, y, mask, dx, begin, end, partials);
  });
}

/// dx alone for elements [begin, end).
template <bool kRelu, bool kMask>
LOWBIT_INLINE void bias_elements_as(const float* dy, const float* y, const std::uint32_t* mask,
                                    float* dx, std::int64_t begin, std::int64_t end) {
  // Chunks of at most 2^20 keep the kernel's int length.
  for (std::int64_t i = begin; i < end; i += 1 << 20) {
    const int len = static_cast<int>(std::min<std::int64_t>(end - i, 1 << 20));
    run_kernel(BiasKernel<kRelu, kMask, false>{dy, y, mask, dx}, i, len, nullptr, OneChannel{0});
  }
}

void bias_elements(const float* dy, const float* y, bool relu, const std::uint32_t* mask, float* dx,
                   std::int64_t begin, std::int64_t end) {
  at_level([&](auto) {
    if (relu && mask != nullptr)
      bias_elements_as<true, true>(dy, y, mask, dx, begin, end);
    else if (relu)
      bias_elements_as<true, false>(dy, y, mask, dx, begin, end);
    else if (mask != nullptr)
      bias_elements_as<false, true>(dy, y, mask, dx, begin, end);
    else
      bias_elements_as<false, false>(dy, y, mask, dx, begin, end);
  });
}

void lsq_backward_tasks(const Plan& plan, const float* dy, const float* x, const float* inv_scale,
                        LsqQuant quant, float* dx, std::int64_t begin, std::int64_t end,
                        float* partials) {
  at_level([&](auto) {
    const LsqBackwardKernel kernel{
        dy, x, inv_scale, static_cast<float>(quant.qmin), static_cast<float>(quant.qmax), dx};
    reduce_tasks<1, SumOp>(plan, kernel, begin, end, partials);
  });
}

void abs_sum_tasks(const Plan& plan, const float* x, std::int64_t begin, std::int64_t end,
                   float* partials) {
  at_level([&](auto) { reduce_tasks<1, SumOp>(plan, AbsSumKernel{x}, begin, end, partials); });
}

void fold_sums(const Plan& plan, const float* partials, int q, std::int64_t c0, int width,
               float* out) {
  at_level([&](auto) { fold_items<SumOp>(plan, partials, q, c0, width, out); });
}

void fold_maxima(const Plan& plan, const float* partials, int q, std::int64_t c0, int width,
                 float* out) {
  at_level([&](auto) { fold_items<MaxOp>(plan, partials, q, c0, width, out); });
}

// ---------------------------------------------------------------------------
// The two passes.

/// f(begin, end) over [0, count): on the calling thread when the op's n
/// elements are too few to pay for waking the team.
template <class F>
void share(std::int64_t count, std::int64_t n, const F& f) {
  if (n <= kSerialElements || count <= 1) {
    if (count > 0) f(std::int64_t{0}, count);
    return;
  }
  parallel_rows(count, f);
}

/// reduce_channels_ref with the item pass tasks(begin, end, partials) and
/// fold(plan, partials, q, c0, width, out) for the channel pass; finish(c,
/// totals) as there.
template <int Q, class Tasks, class Fold, class Finish>
void reduce_channels(const Plan& plan, float* partials, const Tasks& tasks, Fold fold,
                     const Finish& finish) {
  const std::int64_t n = plan.layout.size();
  share(plan.tasks, n, [&](std::int64_t begin, std::int64_t end) { tasks(begin, end, partials); });
  const std::int64_t channels = plan.layout.channels;
  const std::int64_t blocks = (channels + kColumns - 1) / kColumns;
  share(blocks, n, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t b = first; b < last; ++b) {
      const std::int64_t c0 = b * kColumns;
      const int width = static_cast<int>(std::min<std::int64_t>(kColumns, channels - c0));
      float out[Q][kColumns];
      for (int q = 0; q < Q; ++q) fold(plan, partials, q, c0, width, out[q]);
      for (int j = 0; j < width; ++j) {
        std::array<float, Q> totals;
        for (int q = 0; q < Q; ++q) totals[q] = out[q][j];
        finish(c0 + j, totals);
      }
    }
  });
}

template <class T>
void ste_backward_range_as(const T* dy, const std::uint32_t* sides_mask,
                           const ChannelLayout& layout, T* dx, float* d_min, float* d_max,
                           Workspace workspace) {
  detail::check_ste_backward_range(dy, sides_mask, layout, dx, d_min, d_max, workspace);
  if (layout.size() == 0) return;
  const Plan plan = make_plan(layout);
  reduce_channels<2>(
      plan, static_cast<float*>(workspace.data),
      [&](std::int64_t begin, std::int64_t end, float* partials) {
        ste_range_tasks(plan, dy, sides_mask, dx, begin, end, partials);
      },
      fold_sums,
      [&](std::int64_t c, const std::array<float, 2>& totals) {
        d_min[c] = totals[0];
        d_max[c] = totals[1];
      });
}

}  // namespace

void weight_range(const float* w, const ChannelLayout& layout, bool symmetric, float* min,
                  float* max, Workspace workspace) {
  detail::check_weight_range(w, layout, min, max, workspace);
  if (layout.size() == 0) return;
  const Plan plan = make_plan(layout);
  reduce_channels<2>(
      plan, static_cast<float*>(workspace.data),
      [&](std::int64_t begin, std::int64_t end, float* partials) {
        weight_range_tasks(plan, w, begin, end, partials);
      },
      fold_maxima,
      [&](std::int64_t c, const std::array<float, 2>& totals) {
        detail::finish_weight_range(totals[0], totals[1], symmetric, min[c], max[c]);
      });
}

void fake_quant_weights(const float* w, float* y, const ChannelLayout& layout, RangeQuant quant,
                        bool symmetric, float* min, float* max, std::uint32_t* mask,
                        Workspace workspace) {
  detail::check_fake_quant_range(w, y, layout, min, max, quant);
  weight_range(w, layout, symmetric, min, max, workspace);
  fake_quant_range(w, y, layout, min, max, quant, mask, MaskFormat::pass);
}

void ste_backward_range(const float* dy, const std::uint32_t* sides_mask,
                        const ChannelLayout& layout, float* dx, float* d_min, float* d_max,
                        Workspace workspace) {
  ste_backward_range_as(dy, sides_mask, layout, dx, d_min, d_max, workspace);
}

void ste_backward_range(const bf16* dy, const std::uint32_t* sides_mask,
                        const ChannelLayout& layout, bf16* dx, float* d_min, float* d_max,
                        Workspace workspace) {
  ste_backward_range_as(dy, sides_mask, layout, dx, d_min, d_max, workspace);
}

void ste_backward_range(const fp16* dy, const std::uint32_t* sides_mask,
                        const ChannelLayout& layout, fp16* dx, float* d_min, float* d_max,
                        Workspace workspace) {
  ste_backward_range_as(dy, sides_mask, layout, dx, d_min, d_max, workspace);
}

void bias_activation_backward(const float* dy, const float* y, const ChannelLayout& layout,
                              bool relu, const std::uint32_t* pass_mask, float* dx, float* d_bias,
                              Workspace workspace) {
  detail::check_bias_activation_backward(dy, y, layout, relu, dx, d_bias, workspace);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  if (d_bias == nullptr) {
    parallel_words(n, [&](std::int64_t begin, std::int64_t end) {
      bias_elements(dy, y, relu, pass_mask, dx, begin, end);
    });
    return;
  }
  const Plan plan = make_plan(layout);
  reduce_channels<1>(
      plan, static_cast<float*>(workspace.data),
      [&](std::int64_t begin, std::int64_t end, float* partials) {
        bias_tasks(plan, dy, y, relu, pass_mask, dx, begin, end, partials);
      },
      fold_sums,
      [&](std::int64_t c, const std::array<float, 1>& totals) { d_bias[c] = totals[0]; });
}

void lsq_backward(const float* dy, const float* x, const ChannelLayout& layout, const float* scale,
                  LsqQuant quant, float* dx, float* d_scale, Workspace workspace) {
  detail::check_lsq_backward(dy, x, layout, scale, quant, dx, d_scale, workspace);
  if (layout.size() == 0) return;
  // The calling thread's buffer, kept between calls (the op runs in every
  // training step); the workers see it through `inv_scale`, not by its name,
  // which names each thread's own.
  thread_local std::vector<float> buffer;
  buffer.resize(static_cast<std::size_t>(layout.channels));
  for (std::int64_t c = 0; c < layout.channels; ++c)
    buffer[static_cast<std::size_t>(c)] = make_lsq(scale[c], quant.qmin, quant.qmax).inv_scale;
  const float* inv_scale = buffer.data();
  const float grad_scale = detail::lsq_gradient_scale(layout, quant);
  const Plan plan = make_plan(layout);
  reduce_channels<1>(
      plan, static_cast<float*>(workspace.data),
      [&](std::int64_t begin, std::int64_t end, float* partials) {
        lsq_backward_tasks(plan, dy, x, inv_scale, quant, dx, begin, end, partials);
      },
      fold_sums,
      [&](std::int64_t c, const std::array<float, 1>& totals) {
        d_scale[c] = totals[0] * grad_scale;
      });
}

void lsq_init_scale(const float* x, const ChannelLayout& layout, LsqQuant quant, float* scale,
                    Workspace workspace) {
  detail::check_lsq_init_scale(x, layout, quant, scale, workspace);
  if (layout.size() == 0) return;
  const std::int64_t count = layout.outer * layout.inner;
  const Plan plan = make_plan(layout);
  reduce_channels<1>(
      plan, static_cast<float*>(workspace.data),
      [&](std::int64_t begin, std::int64_t end, float* partials) {
        abs_sum_tasks(plan, x, begin, end, partials);
      },
      fold_sums,
      [&](std::int64_t c, const std::array<float, 1>& totals) {
        scale[c] = lsq_initial_scale(totals[0], count, quant.qmax);
      });
}

}  // namespace lowbit::cpu
