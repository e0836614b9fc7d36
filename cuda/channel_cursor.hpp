// Walking the [outer, channels, inner] view of a flat index without a
// division per element: a cursor (offset in row, channel) advanced by
// precomputed steps. Shared by the kernels and the CPU tests of its math.
#pragma once

#include <cstdint>

#include "lowbit/types.hpp"

namespace lowbit::cuda::detail {

/// A jump of `delta` elements in the [outer, channels, inner] view, split so
/// a cursor can take it without dividing: delta = chan·inner + off.
struct ChannelStep {
  std::int64_t off;   ///< delta % inner
  std::int64_t chan;  ///< (delta / inner) % channels
};

inline ChannelStep channel_step(std::int64_t delta, const ChannelLayout& layout) {
  return {delta % layout.inner, (delta / layout.inner) % layout.channels};
}

/// Tracks (offset in row, channel) of a moving element index.
struct ChannelCursor {
  std::int64_t off;
  std::int64_t channel;

  LOWBIT_HD void start(std::int64_t i, std::int64_t inner, std::int64_t channels) {
    off = i % inner;
    channel = (i / inner) % channels;
  }
  LOWBIT_HD void advance(ChannelStep step, std::int64_t inner, std::int64_t channels) {
    off += step.off;
    channel += step.chan;
    if (off >= inner) {
      off -= inner;
      ++channel;
    }
    if (channel >= channels) channel -= channels;
  }
};

}  // namespace lowbit::cuda::detail
