// lowbit::ref — the CPU reference of every kernel: plain loops on host
// pointers. Same contract as lowbit::cuda (cuda.hpp), which must equal it bit
// for bit; reductions follow the same fixed order as the GPU.
//
// Common rules (both namespaces):
//  - bits outside 2..16, a bad layout, a workspace that is too small, or a
//    null pointer with n > 0 throw lowbit::Error; n == 0 does nothing at all
//    (per-channel reduction outputs are not written either).
//  - Values the host can see are checked here too: a range with min > max or
//    a non-finite bound, a non-positive or non-finite affine scale, and a zero
//    point outside [qmin, qmax] throw. (LSQ scales are trained parameters:
//    both sides clamp them at kLsqMinScale instead.) (The CUDA side cannot read device values
//    without a sync, so it sanitises them instead; see element.hpp.)
//  - Masks: mask_words(n, format) words; nullptr means "no mask".
#pragma once

#include <cstddef>
#include <cstdint>

#include "lowbit/element.hpp"
#include "lowbit/nn_element.hpp"
#include "lowbit/types.hpp"

namespace lowbit::ref {

/// Range-mode fake quantization, TensorFlow's kernels bit for bit: y =
/// fake_quant(x, nudged range of channel c, range_scaling(layout)) with
/// [min[c], max[c]] (channels entries each). One channel is
/// FakeQuantWithMinMaxVars (a division by the scale), several are
/// FakeQuantWithMinMaxVarsPerChannel (a multiplication by its inverse).
/// Writes the STE mask in `mask_format` if `mask` is not null. x and y may
/// alias.
void fake_quant_range(const float* x, float* y, const ChannelLayout& layout, const float* min,
                      const float* max, RangeQuant quant, std::uint32_t* mask,
                      MaskFormat mask_format = MaskFormat::pass);

/// Affine-mode fake quantization with scale[c] and zero_point[c] per channel.
/// Writes a MaskFormat::pass mask if `mask` is not null, and adds every
/// element and its clips() to `clip_count` if that is not null.
void fake_quant_affine(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                       const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask,
                       ClipCount* clip_count = nullptr);

/// STE backward from a saved mask: dx = dy where the element passed, else
/// dy·0 (as TensorFlow's and PyTorch's dy·mask: -0 for a negative dy, NaN
/// for a non-finite one).
void ste_backward(const float* dy, const std::uint32_t* mask, MaskFormat mask_format,
                  std::int64_t n, float* dx);

/// Range-mode STE backward with the range gradients, from a MaskFormat::sides
/// mask: dx as ste_backward, d_min[c] = Σ dy·[x below the range], d_max[c] =
/// Σ dy·[x above it], TensorFlow's ...Gradient ops (deterministic tree sums
/// from +0, no atomics; a non-finite dy anywhere in the channel gives NaN, as
/// there).
void ste_backward_range(const float* dy, const std::uint32_t* sides_mask,
                        const ChannelLayout& layout, float* dx, float* d_min, float* d_max,
                        Workspace workspace);

// ---- bf16 and fp16 tensors ----
// The same ops on bf16 or fp16 elements (x, y, dy, dx); ranges, scales, zero
// points, d_min/d_max and the EMA state stay float/int32. Each element is
// widened exactly (to_float), the float op's math runs unchanged on it
// (nudging, masks, clip counts, the EMA's batch min/max), and each output is
// the float result rounded once to the storage type (to_bf16/to_fp16): bit
// for bit the float op on the widened tensor, then rounded. d_min/d_max are
// the float op's sums of the widened dy, in its order. A NaN output is the
// canonical NaN of the storage type (element.hpp).

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
void ste_backward(const bf16* dy, const std::uint32_t* mask, MaskFormat mask_format, std::int64_t n,
                  bf16* dx);
void ste_backward(const fp16* dy, const std::uint32_t* mask, MaskFormat mask_format, std::int64_t n,
                  fp16* dx);
void ste_backward_range(const bf16* dy, const std::uint32_t* sides_mask,
                        const ChannelLayout& layout, bf16* dx, float* d_min, float* d_max,
                        Workspace workspace);
void ste_backward_range(const fp16* dy, const std::uint32_t* sides_mask,
                        const ChannelLayout& layout, fp16* dx, float* d_min, float* d_max,
                        Workspace workspace);

/// Puts an EMA observer state in its initial condition (range [0, 0]).
void ema_state_init(EmaRangeState* state);

/// Fused EMA observer + per-tensor range fake quant (TensorFlow's activation
/// quantization). Updates `state` with min/max of this batch (see
/// ema_range_step), then quantizes x with the nudged EMA range exactly as
/// FakeQuantWithMinMaxVars does: after this step's update in EmaMode::exact,
/// before it in EmaMode::lagged. Before the first update and during
/// quant_delay, y = x (and the mask passes every element but NaN). Adds the
/// elements it quantized and those it clipped to `clip_count` if not null
/// (nothing in the identity phase).
void ema_fake_quant(const float* x, float* y, std::int64_t n, EmaRangeState* state,
                    const EmaConfig& config, std::uint32_t* mask,
                    MaskFormat mask_format = MaskFormat::pass, ClipCount* clip_count = nullptr);

/// ema_fake_quant of bf16 or fp16 elements (see "bf16 and fp16 tensors"
/// above): the EMA observes the widened values.
void ema_fake_quant(const bf16* x, bf16* y, std::int64_t n, EmaRangeState* state,
                    const EmaConfig& config, std::uint32_t* mask,
                    MaskFormat mask_format = MaskFormat::pass, ClipCount* clip_count = nullptr);
void ema_fake_quant(const fp16* x, fp16* y, std::int64_t n, EmaRangeState* state,
                    const EmaConfig& config, std::uint32_t* mask,
                    MaskFormat mask_format = MaskFormat::pass, ClipCount* clip_count = nullptr);

/// Last-value range of weights per channel: [min(w), max(w)], or with
/// `symmetric` [-max|w|, max|w|], over the finite weights (NaN and ±Inf must
/// not poison the range; a channel without a finite weight gets [0, 0]). A
/// bound of zero is +0.
void weight_range(const float* w, const ChannelLayout& layout, bool symmetric, float* min,
                  float* max, Workspace workspace);

/// Weight fake quantization the TensorFlow way: weight_range then
/// fake_quant_range with all channels in one pass. Writes the ranges it used
/// to min/max (channels entries each).
void fake_quant_weights(const float* w, float* y, const ChannelLayout& layout, RangeQuant quant,
                        bool symmetric, float* min, float* max, std::uint32_t* mask,
                        Workspace workspace);

/// TensorFlow's quant_delay for a quantizer without an EMA observer (weights,
/// after fake_quant_weights): while *step < quant_delay, y = x and the mask
/// passes every element but NaN, as ema_fake_quant's identity phase does; from
/// step quant_delay on, y and the mask keep what the quantizer wrote. `step`
/// holds the training steps done so far and is read where the op runs, so a
/// captured training step decides without the host. A null mask is not written.
void quant_delay_identity(const float* x, float* y, std::int64_t n, const std::int64_t* step,
                          std::int64_t quant_delay, std::uint32_t* mask);

/// LSQ forward: y = clamp(round_half_even(x·(1/s[c])), qmin, qmax)·s[c], PyTorch's
/// _fake_quantize_learnable_per_*_affine with zero point 0, bit for bit (a
/// zero output is +0). Adds every element and its clips() to `clip_count` if
/// not null.
void lsq_forward(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                 LsqQuant quant, ClipCount* clip_count = nullptr);

/// LSQ backward as Esser et al. define it: dx = dy strictly inside the grid
/// (qmin < x/s < qmax; dy·0 elsewhere), d_scale[c] = g·Σ lsq_scale_grad_term
/// with the gradient scale g = 1/sqrt(N·qmax), N the elements per channel.
/// PyTorch's learnable fake quant differs within half a step of each grid end
/// (docs/numerics.md).
void lsq_backward(const float* dy, const float* x, const ChannelLayout& layout, const float* scale,
                  LsqQuant quant, float* dx, float* d_scale, Workspace workspace);

/// LSQ initial step size per channel from data: 2·mean|x|/sqrt(qmax).
void lsq_init_scale(const float* x, const ChannelLayout& layout, LsqQuant quant, float* scale,
                    Workspace workspace);

/// Packs n codes of `bits` (2, 4 or 8) bits, first element in the low bits
/// (ONNX and torch.quint4x2 order). Only the low `bits` bits of a code are
/// stored. Writes packed_bytes(n, bits) bytes.
void pack_codes(const std::uint8_t* codes, std::int64_t n, int bits, std::uint8_t* packed);

/// Inverse of pack_codes.
void unpack_codes(const std::uint8_t* packed, std::int64_t n, int bits, std::uint8_t* codes);

// ---- Training building blocks (the CPU backend of host/ runs these) ----
// Element math: nn_element.hpp. Layouts: a conv output is {batch, K, H·W}, a
// linear output {batch, out, 1}, a bias-free activation per_tensor(n).

/// y = x + bias[c] over `layout` (bias may be null: no bias, y = act(x)),
/// then ReLU if `relu` (relu(): max(v, 0), NaN stays NaN, -0 becomes +0).
/// x and y may alias.
void bias_activation(const float* x, const float* bias, const ChannelLayout& layout, bool relu,
                     float* y);

/// Backward of bias_activation from its output y, with an optional STE mask
/// folded in: dx = dy where the gradient passes, else dy·0 (TensorFlow's
/// ReluGrad). It passes where (!relu or y > 0: a NaN output passes nothing)
/// and, when pass_mask is set, where bit i of pass_mask (MaskFormat::pass, as
/// bias_relu_ema_fake_quant writes it) is set: bit for bit
/// ste_backward(dy, pass_mask, MaskFormat::pass) and then this op without the
/// mask, in one pass. y is read only with relu (it may be null otherwise).
/// d_bias[c] = Σ dx over channel c in reduction_order.hpp's fixed order (as
/// ste_backward_range), so both namespaces give the same bits. dx may alias
/// dy. d_bias may be null: no reduction, and the workspace is not needed;
/// otherwise it takes reduction_workspace_bytes(layout).
void bias_activation_backward(const float* dy, const float* y, const ChannelLayout& layout,
                              bool relu, const std::uint32_t* pass_mask, float* dx, float* d_bias,
                              Workspace workspace);

/// The activation after a Conv2d/Linear in one op: v = relu(x + bias[c]) over
/// `layout` (bias may be null: no bias), then exactly ema_fake_quant of v
/// (per tensor; EmaConfig as there, exact or lagged) into y. The
/// MaskFormat::pass mask (mask_words(layout.size()) words, may be null)
/// combines both backward steps: bit i = (v_i > 0) && (the STE passes v_i, or
/// the op is in its identity phase), so ste_backward(dy, mask) is the gradient
/// with respect to x, and its per-channel sum the bias gradient. y may alias
/// x. Bit for bit: bias_activation(x, bias, layout, true, v), then
/// ema_fake_quant(v, y, ..., mask, MaskFormat::pass, clip_count), then
/// mask &= (v > 0).
void bias_relu_ema_fake_quant(const float* x, const float* bias, const ChannelLayout& layout,
                              float* y, EmaRangeState* state, const EmaConfig& config,
                              std::uint32_t* mask, ClipCount* clip_count = nullptr);

/// y = a + b over n elements; y may alias a or b.
void add(const float* a, const float* b, std::int64_t n, float* y);

/// Max pooling of NCHW x [batch, channels, height, width] into y [batch,
/// channels, out_height, out_width] (Pool2dShape: batch and channels >= 0,
/// kernel and stride >= 1, height and width >= kernel; an empty tensor does
/// nothing). y is the first maximum of each window in row-major order
/// (replaces_max in nn_element.hpp): a later element replaces it only when
/// strictly greater, so of equal values (-0 and +0 too) the first stays, and
/// the first NaN of a window wins. y copies that element's bits.
void max_pool_forward(const Pool2dShape& s, const float* x, float* y);

/// Integer convolution with requantization (integer-only inference):
/// sum = Σ (x·2^x_fraction_bits - x_zero_point)·(w[k] - w_zero_point[k])
/// over the window in int32, so the input's zero point can have fractional
/// bits (padding taps contribute nothing, as if x were at the zero point),
/// acc = sum·2^accumulator_shift + bias[k] saturated to int32 (accumulate()),
/// y[n,k,oy,ox] = requantize(acc, r, k). x is NCHW codes, w KCRS codes, y
/// NCHW codes. A Linear is the 1×1 case on [N, features, 1, 1].
void integer_conv2d(const Conv2dShape& s, const std::uint8_t* x, std::int32_t x_zero_point,
                    int x_fraction_bits, const std::uint8_t* w, const std::int32_t* w_zero_point,
                    const std::int32_t* bias, int accumulator_shift, const Requantization& r,
                    std::uint8_t* y);

/// Max pooling of codes (one grid, so the maximum code is the maximum value).
void max_pool_codes(const Pool2dShape& s, const std::uint8_t* x, std::uint8_t* y);

/// Backward of max_pool_forward: each window's dy goes to its first maximum
/// (the element max_pool_forward picked), so ties and NaN route as there.
/// dx (overwritten, must not overlap x or dy) starts at +0 and adds the dy of
/// each window that picked it in row-major output order, so overlapping
/// windows (stride < kernel) sum in one fixed order on both sides.
void max_pool_backward(const Pool2dShape& s, const float* x, const float* dy, float* dx);

/// Softmax cross-entropy of `batch` rows of `classes` (1..kMaxSoftmaxClasses)
/// logits against labels in [0, classes), or -1 for a padding row (the
/// reference throws for any other label; the CUDA op treats it as padding).
/// Numerically stable (max-subtracted log-sum-exp). Writes d_logits =
/// (softmax - onehot) / labelled_rows (0 on padding rows; d_logits may be
/// null for evaluation), and adds to `totals` the batch's loss sum (double),
/// the rows whose first maximum is the label, and the labelled rows. Sums
/// follow one fixed order (cuda/softmax_order.hpp) on both sides; the CUDA
/// op's expf/logf differ from the host's in the last ulps, so results agree
/// to rounding, counts exactly.
void softmax_cross_entropy(const float* logits, const std::int32_t* labels, std::int64_t batch,
                           int classes, float* d_logits, LossTotals* totals);

/// One SGD step over a flat buffer of n parameters (SgdConfig's rule,
/// sgd_update in nn_element.hpp). Weight decay applies to the first
/// `decay_count` (<= n) entries only. Learning rate, momentum and weight
/// decay must be finite and >= 0.
void sgd_step(float* params, const float* grads, float* velocity, std::int64_t n,
              std::int64_t decay_count, SgdConfig config);

/// Bytes of workspace shuffle_indices needs for n indices: 0 (the reference
/// sorts in host memory of its own).
std::size_t shuffle_workspace_bytes(std::int64_t n);

/// A permutation of [0, n), n < 2^31, that depends only on (seed, epoch):
/// the indices stably sorted by shuffle_key(seed, epoch, i) (nn_element.hpp).
/// lowbit::cuda gives the same permutation.
void shuffle_indices(std::uint64_t seed, std::int64_t epoch, std::int64_t n, std::int32_t* perm,
                     Workspace workspace);

/// Gathers batch rows into a network input: row r takes example
/// e = perm[*cursor·batch + r] (or e = *cursor·batch + r when perm is null,
/// e.g. for evaluation): x[r] = normalize_pixel(images[e]) (example_size > 0
/// pixels, x = (p/255 - mean)/std), labels_out[r] = labels[e]. Rows with
/// *cursor·batch + r >= n become zeros labelled -1. The reference throws for
/// a negative cursor or a permutation entry outside [0, n) (the CUDA op makes
/// those rows padding). batch == 0 reads nothing.
void gather_batch(const std::uint8_t* images, const std::uint8_t* labels, std::int64_t n,
                  std::int64_t example_size, const std::int32_t* perm, const std::int64_t* cursor,
                  std::int64_t batch, Normalization norm, float* x, std::int32_t* labels_out);

/// *cursor += 1 (the batch index gather_batch reads; a graph replays it).
void advance_cursor(std::int64_t* cursor);

/// PyTorch 1.13's qparams (torch.ao.quantization observers'
/// _calculate_qparams) per channel from a range, in float32: the range is
/// widened to contain 0 (min⁻ = min(min, 0), max⁺ = max(max, 0));
/// affine: scale = (max⁺ - min⁻)/(qmax - qmin), zero_point =
/// clamp(qmin - round_half_even(min⁻/scale), qmin, qmax);
/// symmetric: scale = max(-min⁻, max⁺)/((qmax - qmin)/2), zero_point = 0 for
/// a signed grid (qmin < 0), else (qmin + qmax)/2 rounded down (torch's
/// quint8 observer with an explicit quant_min/quant_max, as FakeQuantize
/// builds it; only its default 8-bit range without them uses 128). Always
/// scale >= FLT_EPSILON. Matches PyTorch bit for bit (tests/data). The
/// reference throws for a non-finite range or min > max; the CUDA op gives
/// such a channel scale 1 and zero point 0 clamped into the grid.
void affine_params_from_range(const float* min, const float* max, std::int64_t channels,
                              AffineQuant quant, bool symmetric, float* scale,
                              std::int32_t* zero_point);

}  // namespace lowbit::ref
