// lowbit::cpu — the quantizer ops of the CPU backend that sum or take the
// maximum per channel: the same arguments, checks and bits as their lowbit::ref
// specification, with the items of reduction_order.hpp shared out among
// OpenMP threads and each item folded in its fixed order, in vector code for
// each instruction set level of cpu_isa.hpp (picked at run time).
//
// Every item's partial depends only on its own elements, and each channel's
// partials are folded in the order reduction_order.hpp fixes, so the results
// do not depend on the thread count or the level. The elementwise output (dx)
// is written in the same pass over the data. Partials go to the caller's
// workspace, sized by reduction_workspace_bytes(layout) as for lowbit::ref.
//
// One exception to "the same bits": where two NaNs meet in a sum, x86 keeps
// the payload of the addition's first operand, and the compiler orders the
// operands of each addition as it likes, in ref's code as in this one. A sum
// that is NaN is NaN here too, but may carry another of the NaNs' payloads,
// and another at another level (never with another thread count; the GPU
// returns its canonical NaN anyway).
#pragma once

#include <cstdint>

#include "lowbit/ref.hpp"
#include "lowbit/types.hpp"

namespace lowbit::cpu {

/// ref::weight_range: per-channel [min, max] (or [-max|w|, max|w|]) of the
/// finite weights.
void weight_range(const float* w, const ChannelLayout& layout, bool symmetric, float* min,
                  float* max, Workspace workspace);

/// ref::fake_quant_weights: weight_range, then fake_quant_range with those
/// ranges (MaskFormat::pass).
void fake_quant_weights(const float* w, float* y, const ChannelLayout& layout, RangeQuant quant,
                        bool symmetric, float* min, float* max, std::uint32_t* mask,
                        Workspace workspace);

/// ref::ste_backward_range: dx from a MaskFormat::sides mask, and d_min/d_max
/// per channel. dy is read once per element (as the CUDA kernel does), so dx
/// must not alias dy.
void ste_backward_range(const float* dy, const std::uint32_t* sides_mask,
                        const ChannelLayout& layout, float* dx, float* d_min, float* d_max,
                        Workspace workspace);

/// ste_backward_range of bf16 or fp16 elements (ref.hpp): d_min/d_max sum
/// the widened dy. dx must not alias dy.
void ste_backward_range(const bf16* dy, const std::uint32_t* sides_mask,
                        const ChannelLayout& layout, bf16* dx, float* d_min, float* d_max,
                        Workspace workspace);
void ste_backward_range(const fp16* dy, const std::uint32_t* sides_mask,
                        const ChannelLayout& layout, fp16* dx, float* d_min, float* d_max,
                        Workspace workspace);

/// ref::bias_activation_backward: dx, and d_bias = Σ dx per channel when
/// d_bias is not null (then the workspace is needed). dx may alias dy.
void bias_activation_backward(const float* dy, const float* y, const ChannelLayout& layout,
                              bool relu, const std::uint32_t* pass_mask, float* dx, float* d_bias,
                              Workspace workspace);

/// ref::lsq_backward: dx and d_scale per channel. dy is read once per element
/// (as the CUDA kernel does), so dx must not alias dy.
void lsq_backward(const float* dy, const float* x, const ChannelLayout& layout, const float* scale,
                  LsqQuant quant, float* dx, float* d_scale, Workspace workspace);

/// ref::lsq_init_scale: 2·mean|x|/sqrt(qmax) per channel.
void lsq_init_scale(const float* x, const ChannelLayout& layout, LsqQuant quant, float* scale,
                    Workspace workspace);

}  // namespace lowbit::cpu
