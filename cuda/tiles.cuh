// The elementwise kernel behind every fake-quant forward and EMA observe
// pass: warp tiles of 32 x kTileItems elements, lane l taking elements l,
// l+32, ... so each load and store is one coalesced 128-byte transaction per
// warp. Any pointer alignment and any n work without a separate tail path, and
// each group of 32 elements is one __ballot_sync, which is exactly one packed
// mask word. Elements are float, bf16 or fp16 (T): each is widened to float
// on load and the result rounded to T once on store (element.hpp), so 2-byte
// elements make each warp access one 64-byte transaction.
#pragma once

#include <cstdint>

#include "channel_cursor.hpp"
#include "launch.cuh"
#include "lowbit/element.hpp"
#include "lowbit/error.hpp"
#include "lowbit/types.hpp"

namespace lowbit::cuda::detail {

inline constexpr int kTileItems = 8;
inline constexpr std::int64_t kTileElems = 32 * kTileItems;
inline constexpr unsigned kFullWarp = 0xffffffffu;

/// T, in a parameter from which T is not deduced (so a null y can be passed).
template <class T>
struct Element {
  using type = T;
};

/// Base of the quantizers that quantize x itself: the input hook is the
/// identity. (A fused quantizer computes v = f(x, params) there instead.)
struct PlainInput {
  template <class Params>
  __device__ static float input(float x, const Params&) {
    return x;
  }
};

/// Per-thread min/max tracker of an observer that does nothing.
struct NoObserver {
  __device__ void observe(float) {}
  __device__ void commit() {}
};

/// v = quantizer.input(x), y = quantizer.apply(v) for n elements, writing y
/// when `y` is set (a null y makes an observe-only pass), the STE mask planes
/// of v when `mask` is set, feeding each v to `observer`, and adding to
/// `clip_count` when set.
///
/// Quantizer: Params params(channel), once per thread; set_channel(p, channel)
/// when a lane's channel changes, which updates only what depends on the
/// channel; float input(x, p) (PlainInput: x); float apply(v, p);
/// bool plane0(v, p); bool plane1(v, p) (sides only); bool quantizes(p) (false
/// in an identity phase); bool clipped(v, p). So per channel costs what per
/// tensor does for any inner >= 32, and a quantizer whose range is shared (the
/// fused bias+ReLU+EMA one) reloads only the bias even at inner 1.
template <class T, bool kPerChannel, MaskFormat kFormat, class Quantizer, class Observer>
__global__ void __launch_bounds__(256)
    quantize_tiles_kernel(const T* x, T* y, std::uint32_t* mask, std::int64_t n,
                          ChannelLayout layout, ChannelStep lane_step, ChannelStep grid_step,
                          Quantizer quantizer, Observer observer, ClipCount* clip_count) {
  const int lane = threadIdx.x & 31;
  const std::int64_t first_tile = (std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x) >> 5;
  const std::int64_t tile_stride = (std::int64_t{gridDim.x} * blockDim.x) >> 5;
  const std::int64_t plane_words = (n + 31) / 32;

  // Warp-wide counts (each ballot's popcount), added once per warp at the end.
  unsigned long long warp_quantized = 0;
  unsigned long long warp_clipped = 0;
  ChannelCursor cursor{0, 0};
  std::int64_t params_channel = 0;
  typename Quantizer::Params p = quantizer.params(0);
  if (kPerChannel) cursor.start(first_tile * kTileElems + lane, layout.inner, layout.channels);

  for (std::int64_t tile = first_tile; tile * kTileElems < n; tile += tile_stride) {
    const std::int64_t base = tile * kTileElems + lane;
    float xs[kTileItems];
#pragma unroll
    for (int k = 0; k < kTileItems; ++k) {
      const std::int64_t i = base + 32 * k;
      xs[k] = i < n ? to_float(x[i]) : 0.0f;
    }
    std::uint32_t my_word = 0;
#pragma unroll
    for (int k = 0; k < kTileItems; ++k) {
      const std::int64_t i = base + 32 * k;
      if (kPerChannel) {
        if (cursor.channel != params_channel) {
          params_channel = cursor.channel;
          quantizer.set_channel(p, params_channel);
        }
        cursor.advance(lane_step, layout.inner, layout.channels);
      }
      const bool valid = i < n;
      const float v = quantizer.input(xs[k], p);
      if (valid) {
        if (y != nullptr) y[i] = from_float<T>(quantizer.apply(v, p));
        observer.observe(v);
      }
      if (mask != nullptr) {
        const std::uint32_t word0 = __ballot_sync(kFullWarp, valid && quantizer.plane0(v, p));
        if (lane == k) my_word = word0;
        if constexpr (kFormat == MaskFormat::sides) {
          const std::uint32_t word1 = __ballot_sync(kFullWarp, valid && quantizer.plane1(v, p));
          if (lane == kTileItems + k) my_word = word1;
        }
      }
      if (clip_count != nullptr) {
        warp_quantized += __popc(__ballot_sync(kFullWarp, valid && quantizer.quantizes(p)));
        warp_clipped += __popc(__ballot_sync(kFullWarp, valid && quantizer.clipped(v, p)));
      }
    }
    // Lanes 0..7 store plane 0's words of this tile, lanes 8..15 plane 1's.
    if (mask != nullptr) {
      const int plane = lane / kTileItems;
      const std::int64_t word = tile * kTileItems + lane % kTileItems;
      const int planes = kFormat == MaskFormat::sides ? 2 : 1;
      if (plane < planes && word < plane_words) mask[plane * plane_words + word] = my_word;
    }
    if (kPerChannel) cursor.advance(grid_step, layout.inner, layout.channels);
  }
  if (clip_count != nullptr && lane == 0 && warp_quantized > 0) {
    atomicAdd(&clip_count->quantized, warp_quantized);
    atomicAdd(&clip_count->clipped, warp_clipped);
  }
  observer.commit();
}

// ---------------------------------------------------------------------------
// Launcher

template <bool kPerChannel, MaskFormat kFormat, class T, class Quantizer, class Observer>
void launch_tiles_as(const T* x, T* y, std::uint32_t* mask, const ChannelLayout& layout,
                     const Quantizer& quantizer, Observer observer, ClipCount* clip_count,
                     cudaStream_t stream) {
  const std::int64_t n = layout.size();
  constexpr std::int64_t kBlockElems = kTileElems * (kBlockThreads / 32);
  const unsigned grid = grid_for(n, kBlockElems);
  const std::int64_t tile_stride = std::int64_t{grid} * (kBlockThreads / 32);
  ChannelStep lane_step{0, 0};
  ChannelStep grid_step{0, 0};
  if (kPerChannel) {
    lane_step = channel_step(32, layout);
    grid_step = channel_step((tile_stride - 1) * kTileElems, layout);
  }
  quantize_tiles_kernel<T, kPerChannel, kFormat><<<grid, kBlockThreads, 0, stream>>>(
      x, y, mask, n, layout, lane_step, grid_step, quantizer, observer, clip_count);
  LOWBIT_LAUNCH_CHECK();
}

/// Launches quantize_tiles_kernel for `layout`, choosing the per-tensor or
/// per-channel instantiation and the mask format (sides only where the
/// quantizer has them).
template <class T, class Quantizer, class Observer = NoObserver>
void launch_quantize_tiles(const T* x, typename Element<T>::type* y, std::uint32_t* mask,
                           MaskFormat format, const ChannelLayout& layout,
                           const Quantizer& quantizer, cudaStream_t stream, Observer observer = {},
                           ClipCount* clip_count = nullptr) {
  const bool per_channel = layout.channels > 1;
  if constexpr (Quantizer::kHasSides) {
    if (format == MaskFormat::sides) {
      if (per_channel)
        launch_tiles_as<true, MaskFormat::sides>(x, y, mask, layout, quantizer, observer,
                                                 clip_count, stream);
      else
        launch_tiles_as<false, MaskFormat::sides>(x, y, mask, layout, quantizer, observer,
                                                  clip_count, stream);
      return;
    }
  }
  if (per_channel)
    launch_tiles_as<true, MaskFormat::pass>(x, y, mask, layout, quantizer, observer, clip_count,
                                            stream);
  else
    launch_tiles_as<false, MaskFormat::pass>(x, y, mask, layout, quantizer, observer, clip_count,
                                             stream);
}

}  // namespace lowbit::cuda::detail
