// lowbit::cuda — the fused CUDA kernels. Same contract as lowbit::ref
// (ref.hpp): every output equals the CPU reference bit for bit, and the
// reductions are the same fixed-order trees.
//
// All pointers are device pointers; `stream` comes last. Every call is
// asynchronous, never synchronizes the host, never allocates, and can be
// captured in a CUDA graph. Argument errors throw lowbit::Error before
// anything is launched; a failed launch throws too.
//
// Device-resident values (ranges, scales, zero points, EMA state) are not read
// by the host; invalid ones are sanitised on the device (element.hpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "lowbit/element.hpp"
#include "lowbit/types.hpp"

namespace lowbit::cuda {

/// See ref::fake_quant_range. Per-channel runs as one launch.
void fake_quant_range(const float* x, float* y, const ChannelLayout& layout, const float* min,
                      const float* max, RangeQuant quant, std::uint32_t* mask,
                      MaskFormat mask_format, cudaStream_t stream);

/// See ref::fake_quant_affine.
void fake_quant_affine(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                       const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask,
                       cudaStream_t stream);

/// See ref::ste_backward. Moves 8 bytes + 1 bit per element.
void ste_backward(const float* dy, const std::uint32_t* mask, MaskFormat mask_format,
                  std::int64_t n, float* dx, cudaStream_t stream);

/// See ref::ste_backward_range.
void ste_backward_range(const float* dy, const std::uint32_t* sides_mask,
                        const ChannelLayout& layout, float* dx, float* d_min, float* d_max,
                        Workspace workspace, cudaStream_t stream);

/// See ref::ema_state_init (a kernel, so it can be captured).
void ema_state_init(EmaRangeState* state, cudaStream_t stream);

/// See ref::ema_fake_quant. EmaMode::exact: two launches, 12 bytes + mask per
/// element. EmaMode::lagged: one launch, 8 bytes + mask per element.
void ema_fake_quant(const float* x, float* y, std::int64_t n, EmaRangeState* state,
                    const EmaConfig& config, std::uint32_t* mask, MaskFormat mask_format,
                    cudaStream_t stream);

/// See ref::weight_range.
void weight_range(const float* w, const ChannelLayout& layout, bool symmetric, float* min,
                  float* max, Workspace workspace, cudaStream_t stream);

/// See ref::fake_quant_weights.
void fake_quant_weights(const float* w, float* y, const ChannelLayout& layout, RangeQuant quant,
                        bool symmetric, float* min, float* max, std::uint32_t* mask,
                        Workspace workspace, cudaStream_t stream);

/// See ref::lsq_forward.
void lsq_forward(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                 LsqQuant quant, cudaStream_t stream);

/// See ref::lsq_backward.
void lsq_backward(const float* dy, const float* x, const ChannelLayout& layout,
                  const float* scale, LsqQuant quant, float* dx, float* d_scale,
                  Workspace workspace, cudaStream_t stream);

/// See ref::lsq_init_scale.
void lsq_init_scale(const float* x, const ChannelLayout& layout, LsqQuant quant, float* scale,
                    Workspace workspace, cudaStream_t stream);

/// See ref::pack_codes.
void pack_codes(const std::uint8_t* codes, std::int64_t n, int bits, std::uint8_t* packed,
                cudaStream_t stream);

/// See ref::unpack_codes.
void unpack_codes(const std::uint8_t* packed, std::int64_t n, int bits, std::uint8_t* codes,
                  cudaStream_t stream);

/// True when a CUDA device is present and usable (tests skip without one).
bool device_available();

}  // namespace lowbit::cuda
