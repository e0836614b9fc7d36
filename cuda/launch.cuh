// Launch configuration shared by the launchers.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

namespace lowbit::cuda::detail {

inline constexpr int kBlockThreads = 256;

/// Multiprocessors of the current device (cached per device).
int multiprocessor_count();

/// Blocks for a grid-stride kernel over `work` units of `per_block` each:
/// enough to fill the device, never more than the work needs.
inline unsigned grid_for(std::int64_t work, std::int64_t per_block) {
  const std::int64_t needed = (work + per_block - 1) / per_block;
  const std::int64_t resident = std::int64_t{multiprocessor_count()} * (2048 / kBlockThreads);
  return static_cast<unsigned>(std::max<std::int64_t>(1, std::min(needed, resident)));
}

}  // namespace lowbit::cuda::detail
