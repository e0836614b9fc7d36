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

#include <cstddef>
#include <cstdint>
#include <string>

#include "lowbit/element.hpp"
#include "lowbit/nn_element.hpp"
#include "lowbit/types.hpp"

namespace lowbit::cuda {

/// See ref::fake_quant_range. Per-channel runs as one launch.
void fake_quant_range(const float* x, float* y, const ChannelLayout& layout, const float* min,
                      const float* max, RangeQuant quant, std::uint32_t* mask,
                      MaskFormat mask_format, cudaStream_t stream);

/// See ref::fake_quant_affine.
void fake_quant_affine(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                       const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask,
                       ClipCount* clip_count, cudaStream_t stream);

/// See ref::ste_backward. Moves 8 bytes + 1 bit per element.
void ste_backward(const float* dy, const std::uint32_t* mask, MaskFormat mask_format,
                  std::int64_t n, float* dx, cudaStream_t stream);

/// See ref::ste_backward_range.
void ste_backward_range(const float* dy, const std::uint32_t* sides_mask,
                        const ChannelLayout& layout, float* dx, float* d_min, float* d_max,
                        Workspace workspace, cudaStream_t stream);

// ---- bf16 and fp16 tensors (see ref.hpp): computed in float, each output
// rounded once. Moving 2-byte elements, the forward takes 4 bytes + mask per
// element, STE backward 4 bytes + mask, exact EMA 6 bytes + mask.

void fake_quant_range(const bf16* x, bf16* y, const ChannelLayout& layout, const float* min,
                      const float* max, RangeQuant quant, std::uint32_t* mask,
                      MaskFormat mask_format, cudaStream_t stream);
void fake_quant_range(const fp16* x, fp16* y, const ChannelLayout& layout, const float* min,
                      const float* max, RangeQuant quant, std::uint32_t* mask,
                      MaskFormat mask_format, cudaStream_t stream);
void fake_quant_affine(const bf16* x, bf16* y, const ChannelLayout& layout, const float* scale,
                       const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask,
                       ClipCount* clip_count, cudaStream_t stream);
void fake_quant_affine(const fp16* x, fp16* y, const ChannelLayout& layout, const float* scale,
                       const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask,
                       ClipCount* clip_count, cudaStream_t stream);
void ste_backward(const bf16* dy, const std::uint32_t* mask, MaskFormat mask_format, std::int64_t n,
                  bf16* dx, cudaStream_t stream);
void ste_backward(const fp16* dy, const std::uint32_t* mask, MaskFormat mask_format, std::int64_t n,
                  fp16* dx, cudaStream_t stream);
void ste_backward_range(const bf16* dy, const std::uint32_t* sides_mask,
                        const ChannelLayout& layout, bf16* dx, float* d_min, float* d_max,
                        Workspace workspace, cudaStream_t stream);
void ste_backward_range(const fp16* dy, const std::uint32_t* sides_mask,
                        const ChannelLayout& layout, fp16* dx, float* d_min, float* d_max,
                        Workspace workspace, cudaStream_t stream);

/// See ref::ema_state_init (a kernel, so it can be captured).
void ema_state_init(EmaRangeState* state, cudaStream_t stream);

/// See ref::ema_fake_quant. EmaMode::exact: two launches, 12 bytes + mask per
/// element. EmaMode::lagged: one launch, 8 bytes + mask per element.
void ema_fake_quant(const float* x, float* y, std::int64_t n, EmaRangeState* state,
                    const EmaConfig& config, std::uint32_t* mask, MaskFormat mask_format,
                    ClipCount* clip_count, cudaStream_t stream);

/// ema_fake_quant of bf16 or fp16 elements (see ref.hpp).
void ema_fake_quant(const bf16* x, bf16* y, std::int64_t n, EmaRangeState* state,
                    const EmaConfig& config, std::uint32_t* mask, MaskFormat mask_format,
                    ClipCount* clip_count, cudaStream_t stream);
void ema_fake_quant(const fp16* x, fp16* y, std::int64_t n, EmaRangeState* state,
                    const EmaConfig& config, std::uint32_t* mask, MaskFormat mask_format,
                    ClipCount* clip_count, cudaStream_t stream);

/// See ref::weight_range.
void weight_range(const float* w, const ChannelLayout& layout, bool symmetric, float* min,
                  float* max, Workspace workspace, cudaStream_t stream);

/// See ref::fake_quant_weights.
void fake_quant_weights(const float* w, float* y, const ChannelLayout& layout, RangeQuant quant,
                        bool symmetric, float* min, float* max, std::uint32_t* mask,
                        Workspace workspace, cudaStream_t stream);

/// See ref::quant_delay_identity (`step` in device memory).
void quant_delay_identity(const float* x, float* y, std::int64_t n, const std::int64_t* step,
                          std::int64_t quant_delay, std::uint32_t* mask, cudaStream_t stream);

/// See ref::lsq_forward.
void lsq_forward(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                 LsqQuant quant, ClipCount* clip_count, cudaStream_t stream);

/// See ref::lsq_backward.
void lsq_backward(const float* dy, const float* x, const ChannelLayout& layout, const float* scale,
                  LsqQuant quant, float* dx, float* d_scale, Workspace workspace,
                  cudaStream_t stream);

/// See ref::lsq_init_scale.
void lsq_init_scale(const float* x, const ChannelLayout& layout, LsqQuant quant, float* scale,
                    Workspace workspace, cudaStream_t stream);

/// See ref::pack_codes.
void pack_codes(const std::uint8_t* codes, std::int64_t n, int bits, std::uint8_t* packed,
                cudaStream_t stream);

/// See ref::unpack_codes.
void unpack_codes(const std::uint8_t* packed, std::int64_t n, int bits, std::uint8_t* codes,
                  cudaStream_t stream);

// ---- Training building blocks (the CUDA backend of host/ runs these) ----

/// See ref::bias_activation.
void bias_activation(const float* x, const float* bias, const ChannelLayout& layout, bool relu,
                     float* y, cudaStream_t stream);

/// See ref::bias_activation_backward.
void bias_activation_backward(const float* dy, const float* y, const ChannelLayout& layout,
                              bool relu, const std::uint32_t* pass_mask, float* dx, float* d_bias,
                              Workspace workspace, cudaStream_t stream);

/// See ref::bias_relu_ema_fake_quant. v is recomputed from x in each launch,
/// never stored. EmaMode::exact: two launches (observe v; quantize v with the
/// updated range), 12 bytes + mask per element. EmaMode::lagged: one launch,
/// 8 bytes + mask per element.
void bias_relu_ema_fake_quant(const float* x, const float* bias, const ChannelLayout& layout,
                              float* y, EmaRangeState* state, const EmaConfig& config,
                              std::uint32_t* mask, ClipCount* clip_count, cudaStream_t stream);

/// See ref::integer_conv2d: one thread per output.
void integer_conv2d(const Conv2dShape& s, const std::uint8_t* x, std::int32_t x_zero_point,
                    int x_fraction_bits, const std::uint8_t* w, const std::int32_t* w_zero_point,
                    const std::int32_t* bias, int accumulator_shift, const Requantization& r,
                    std::uint8_t* y, cudaStream_t stream);

/// See ref::max_pool_codes.
void max_pool_codes(const Pool2dShape& s, const std::uint8_t* x, std::uint8_t* y,
                    cudaStream_t stream);

/// See ref::add.
void add(const float* a, const float* b, std::int64_t n, float* y, cudaStream_t stream);

/// See ref::max_pool_forward (the same first-maximum rule): one thread per
/// output.
void max_pool_forward(const Pool2dShape& s, const float* x, float* y, cudaStream_t stream);

/// See ref::max_pool_backward (the same bits, overlapping windows included):
/// one thread per input element gathers the dy of the windows that cover it
/// and picked it, in the reference's order; no atomics.
void max_pool_backward(const Pool2dShape& s, const float* x, const float* dy, float* dx,
                       cudaStream_t stream);

/// See ref::softmax_cross_entropy (totals in device memory). One block; a
/// label outside [-1, classes) makes its row padding.
void softmax_cross_entropy(const float* logits, const std::int32_t* labels, std::int64_t batch,
                           int classes, float* d_logits, LossTotals* totals, cudaStream_t stream);

/// See ref::sgd_step: one launch over the flat buffer.
void sgd_step(float* params, const float* grads, float* velocity, std::int64_t n,
              std::int64_t decay_count, SgdConfig config, cudaStream_t stream);

/// Device workspace bytes shuffle_indices needs for n indices: two key
/// buffers, a value buffer and CUB's radix-sort storage. For n > 0 it asks
/// CUB, which needs the current CUDA device (its storage depends on the
/// architecture); without one it throws lowbit::Error. The result holds for
/// that device only.
std::size_t shuffle_workspace_bytes(std::int64_t n);

/// See ref::shuffle_indices: the same permutation, sorted on the device
/// (cub::DeviceRadixSort, stable). Any workspace alignment works.
void shuffle_indices(std::uint64_t seed, std::int64_t epoch, std::int64_t n, std::int32_t* perm,
                     Workspace workspace, cudaStream_t stream);

/// See ref::gather_batch (cursor in device memory, read by the kernel, so a
/// captured graph gathers the next batch on every replay). A negative cursor
/// or a permutation entry outside [0, n) gives padding rows.
void gather_batch(const std::uint8_t* images, const std::uint8_t* labels, std::int64_t n,
                  std::int64_t example_size, const std::int32_t* perm, const std::int64_t* cursor,
                  std::int64_t batch, Normalization norm, float* x, std::int32_t* labels_out,
                  cudaStream_t stream);

/// See ref::advance_cursor.
void advance_cursor(std::int64_t* cursor, cudaStream_t stream);

/// See ref::affine_params_from_range. A non-finite range or min > max gives
/// scale 1 and zero point clamp(0, qmin, qmax) (PyTorch's defaults).
void affine_params_from_range(const float* min, const float* max, std::int64_t channels,
                              AffineQuant quant, bool symmetric, float* scale,
                              std::int32_t* zero_point, cudaStream_t stream);

/// Why no CUDA device is usable, for messages: "no CUDA device found", or
/// the CUDA runtime's error name and text when the runtime or a device fails
/// to start. Empty when the current device works.
std::string device_problem();

/// True when a CUDA device is present and usable (device_problem() is empty).
bool device_available();

}  // namespace lowbit::cuda
