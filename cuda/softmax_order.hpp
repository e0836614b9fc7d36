// The fixed order of softmax_cross_entropy's sums, shared by the kernel and
// mirrored by the CPU reference. One block of kSoftmaxWarps warps: warp w
// takes rows w, w + kSoftmaxWarps, ...; in a row, lane l folds classes l,
// l + 32, ... and the 32 lanes combine with the xor butterfly of
// reduction_order.hpp. Each warp adds its rows' losses in row order (double),
// then the warps' sums are added in warp order.
#pragma once

namespace lowbit::detail {

inline constexpr int kSoftmaxWarps = 32;
inline constexpr int kSoftmaxThreads = 32 * kSoftmaxWarps;

}  // namespace lowbit::detail
