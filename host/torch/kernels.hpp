// The lowbit kernels behind the torch ops, chosen by where the tensors live:
// CPU tensors run the CPU backend's kernels (lowbit::cpu, the bits of
// lowbit::ref), CUDA tensors run lowbit::cuda on the current stream (built
// when the libtorch found has CUDA). Element tensors are float32, bfloat16 or
// float16: the range, affine and EMA fake quants and their STE backwards run
// lowbit's bf16/fp16 kernels (float32 math, the result rounded once); the
// weight and LSQ ops compute on a float32 copy and round their outputs with
// torch's conversion. Ranges, scales and range gradients are float32. Masks
// are int32 tensors of mask_words() words; workspaces and outputs are
// allocated on the inputs' device. Nothing here synchronizes with the host.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "lowbit/types.hpp"

namespace lowbit::torch_ops {

/// The axis value that marks one range for the whole tensor.
inline constexpr std::int64_t kPerTensor = -1;

std::vector<std::int64_t> shape_of(const at::Tensor& t);

/// One channel for the whole tensor (axis kPerTensor), or one per index of
/// `axis`.
ChannelLayout layout_of(const std::vector<std::int64_t>& shape, std::int64_t axis);

/// Checks that x is a float32, bfloat16 or float16 tensor on a device these
/// ops run on.
void check_elements(const at::Tensor& x, const char* what);

/// An uninitialised mask for `n` elements on `like`'s device.
at::Tensor new_mask(std::int64_t n, MaskFormat format, const at::Tensor& like);

/// An initialised EMA observer state (EmaRangeState's bytes) on `device`.
at::Tensor new_ema_state(at::Device device);

/// Checks that `state` holds an EmaRangeState on x's device.
void check_ema_state(const at::Tensor& state, const at::Tensor& x);

// Each call below runs the lowbit op of the same name on the tensors'
// device; the first tensor argument's options shape the results.

at::Tensor fake_quant_range(const at::Tensor& x, const ChannelLayout& layout, const at::Tensor& min,
                            const at::Tensor& max, RangeQuant quant, at::Tensor& sides_mask);

at::Tensor fake_quant_affine(const at::Tensor& x, const ChannelLayout& layout,
                             const at::Tensor& scale, const at::Tensor& zero_point,
                             AffineQuant quant, at::Tensor& mask);

at::Tensor fake_quant_weights(const at::Tensor& w, const ChannelLayout& layout, RangeQuant quant,
                              bool symmetric, at::Tensor& mask);

at::Tensor ema_fake_quant(const at::Tensor& x, at::Tensor& state, const EmaConfig& config,
                          at::Tensor& mask);

at::Tensor lsq_forward(const at::Tensor& x, const ChannelLayout& layout, const at::Tensor& scale,
                       LsqQuant quant);

/// The scale LSQ starts from: 2·mean|x|/sqrt(qmax) per channel.
at::Tensor lsq_init_scale(const at::Tensor& x, const ChannelLayout& layout, LsqQuant quant);

/// dx from a MaskFormat::pass mask.
at::Tensor ste_backward(const at::Tensor& dy, const at::Tensor& mask);

/// dx, d_min and d_max from a MaskFormat::sides mask.
std::vector<at::Tensor> ste_backward_range(const at::Tensor& dy, const at::Tensor& sides_mask,
                                           const ChannelLayout& layout);

/// dx and d_scale.
std::vector<at::Tensor> lsq_backward(const at::Tensor& dy, const at::Tensor& x,
                                     const ChannelLayout& layout, const at::Tensor& scale,
                                     LsqQuant quant);

}  // namespace lowbit::torch_ops
