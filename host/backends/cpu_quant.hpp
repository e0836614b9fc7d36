// lowbit::cpu — the elementwise quantizer ops of the CPU backend: the same
// arguments, checks and bits as their lowbit::ref specification, shared out
// among OpenMP threads in whole 32-element mask words and vectorised, for
// each instruction set level of cpu_isa.hpp (picked at run time).
//
// Determinism: every output element, mask word and EMA state is bit for bit
// the reference's whatever the thread count and level. Each mask word is written by one
// thread; the only cross-thread results are integer clip counts (summed) and
// the batch min/max of the EMA ops, whose bits only reach the state through
// ema_range_step, which sees the same values in any order.
#pragma once

#include <cstdint>

#include "lowbit/ref.hpp"

namespace lowbit::cpu {

/// ref::fake_quant_range, in parallel and vectorised (both mask formats, any
/// layout). x and y may alias.
void fake_quant_range(const float* x, float* y, const ChannelLayout& layout, const float* min,
                      const float* max, RangeQuant quant, std::uint32_t* mask,
                      MaskFormat mask_format = MaskFormat::pass);

/// ref::fake_quant_affine, in parallel and vectorised. x and y may alias.
void fake_quant_affine(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                       const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask,
                       ClipCount* clip_count = nullptr);

/// ref::ema_fake_quant, in parallel and vectorised: the state is updated on
/// the calling thread between a min/max pass and the quantizing pass
/// (EmaMode::exact), or after one pass that does both (EmaMode::lagged).
/// x and y may alias.
void ema_fake_quant(const float* x, float* y, std::int64_t n, EmaRangeState* state,
                    const EmaConfig& config, std::uint32_t* mask,
                    MaskFormat mask_format = MaskFormat::pass, ClipCount* clip_count = nullptr);

/// The bf16 and fp16 overloads of ref (ref.hpp, "bf16 and fp16 tensors"), in
/// parallel and vectorised, with the reference's bits. x and y (dy and dx)
/// may alias.
void fake_quant_range(const bf16* x, bf16* y, const ChannelLayout& layout, const float* min,
                      const float* max, RangeQuant quant, std::uint32_t* mask,
                      MaskFormat mask_format = MaskFormat::pass);
void fake_quant_range(const fp16* x, fp16* y, const ChannelLayout& layout, const float* min,
                      const float* max, RangeQuant quant, std::uint32_t* mask,
                      MaskFormat mask_format = MaskFormat::pass);
void fake_quant_affine(const bf16* x, bf16* y, const ChannelLayout& layout, const float* scale,
                       const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask,
                       ClipCount* clip_count = nullptr);
void fake_quant_affine(const fp16* x, fp16* y, const ChannelLayout& layout, const float* scale,
                       const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask,
                       ClipCount* clip_count = nullptr);
void ema_fake_quant(const bf16* x, bf16* y, std::int64_t n, EmaRangeState* state,
                    const EmaConfig& config, std::uint32_t* mask,
                    MaskFormat mask_format = MaskFormat::pass, ClipCount* clip_count = nullptr);
void ema_fake_quant(const fp16* x, fp16* y, std::int64_t n, EmaRangeState* state,
                    const EmaConfig& config, std::uint32_t* mask,
                    MaskFormat mask_format = MaskFormat::pass, ClipCount* clip_count = nullptr);
void ste_backward(const bf16* dy, const std::uint32_t* mask, MaskFormat mask_format, std::int64_t n,
                  bf16* dx);
void ste_backward(const fp16* dy, const std::uint32_t* mask, MaskFormat mask_format, std::int64_t n,
                  fp16* dx);

/// ref::bias_relu_ema_fake_quant, in parallel and vectorised, without storing
/// v = relu(x + bias): it is recomputed where needed. y may alias x.
void bias_relu_ema_fake_quant(const float* x, const float* bias, const ChannelLayout& layout,
                              float* y, EmaRangeState* state, const EmaConfig& config,
                              std::uint32_t* mask, ClipCount* clip_count = nullptr);

/// ref::lsq_forward, in parallel and vectorised. x and y may alias.
void lsq_forward(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                 LsqQuant quant, ClipCount* clip_count = nullptr);

/// ref::ste_backward, in parallel and vectorised. dx may alias dy.
void ste_backward(const float* dy, const std::uint32_t* mask, MaskFormat mask_format,
                  std::int64_t n, float* dx);

/// ref::quant_delay_identity, in parallel and vectorised. x and y may alias.
void quant_delay_identity(const float* x, float* y, std::int64_t n, const std::int64_t* step,
                          std::int64_t quant_delay, std::uint32_t* mask);

/// ref::bias_activation, in parallel and vectorised. x and y may alias.
void bias_activation(const float* x, const float* bias, const ChannelLayout& layout, bool relu,
                     float* y);

/// ref::add, in parallel and vectorised. y may alias a or b.
void add(const float* a, const float* b, std::int64_t n, float* y);

}  // namespace lowbit::cpu
