// Argument checks, one per op, shared by lowbit::ref and lowbit::cuda so both
// reject the same inputs with the same messages. They look only at sizes,
// widths and pointers; the value checks below need host-resident values and
// are the CPU reference's alone.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lowbit/types.hpp"

namespace lowbit::detail {

void check_layout(const ChannelLayout& layout);

void check_fake_quant_range(const void* x, const void* y, const ChannelLayout& layout,
                            const float* min, const float* max, RangeQuant quant);
void check_fake_quant_affine(const void* x, const void* y, const ChannelLayout& layout,
                             const float* scale, const std::int32_t* zero_point, AffineQuant quant);
void check_ste_backward(const void* dy, const std::uint32_t* mask, std::int64_t n, const void* dx);
void check_ste_backward_range(const void* dy, const std::uint32_t* mask,
                              const ChannelLayout& layout, const void* dx, const float* d_min,
                              const float* d_max, Workspace workspace);
void check_ema_fake_quant(const void* x, const void* y, std::int64_t n, const EmaRangeState* state,
                          const EmaConfig& config);
void check_bias_relu_ema_fake_quant(const float* x, const ChannelLayout& layout, const float* y,
                                    const EmaRangeState* state, const EmaConfig& config);
void check_weight_range(const float* w, const ChannelLayout& layout, const float* min,
                        const float* max, Workspace workspace);
void check_quant_delay_identity(const float* x, const float* y, std::int64_t n,
                                const std::int64_t* step, std::int64_t quant_delay);
void check_lsq_forward(const float* x, const float* y, const ChannelLayout& layout,
                       const float* scale, LsqQuant quant);
void check_lsq_backward(const float* dy, const float* x, const ChannelLayout& layout,
                        const float* scale, LsqQuant quant, const float* dx, const float* d_scale,
                        Workspace workspace);
void check_lsq_init_scale(const float* x, const ChannelLayout& layout, LsqQuant quant,
                          const float* scale, Workspace workspace);
void check_packing(const std::uint8_t* codes, const std::uint8_t* packed, std::int64_t n, int bits);

// Training building blocks (nn_element.hpp).
void check_bias_activation(const float* x, const ChannelLayout& layout, const float* y);
/// y is read only with relu.
void check_bias_activation_backward(const float* dy, const float* y, const ChannelLayout& layout,
                                    bool relu, const float* dx, const float* d_bias,
                                    Workspace workspace);
void check_add(const float* a, const float* b, std::int64_t n, const float* y);
void check_max_pool_forward(const Pool2dShape& s, const float* x, const float* y);
void check_integer_conv2d(const Conv2dShape& s, const std::uint8_t* x, std::int32_t x_zero_point,
                          int x_fraction_bits, const std::uint8_t* w,
                          const std::int32_t* w_zero_point, const std::int32_t* bias,
                          int accumulator_shift, const Requantization& r, const std::uint8_t* y);
void check_max_pool_codes(const Pool2dShape& s, const std::uint8_t* x, const std::uint8_t* y);
void check_max_pool_backward(const Pool2dShape& s, const float* x, const float* dy,
                             const float* dx);
void check_softmax_cross_entropy(const float* logits, const std::int32_t* labels,
                                 std::int64_t batch, int classes, const LossTotals* totals);
void check_sgd_step(const float* params, const float* grads, const float* velocity, std::int64_t n,
                    std::int64_t decay_count, const SgdConfig& config);
/// n in [0, 2^31).
void check_shuffle_count(std::int64_t n);
/// `needed`: the shuffle_workspace_bytes(n) of the calling namespace.
void check_shuffle_indices(std::int64_t n, const std::int32_t* perm, Workspace workspace,
                           std::size_t needed);
void check_gather_batch(const std::uint8_t* images, const std::uint8_t* labels, std::int64_t n,
                        std::int64_t example_size, const std::int64_t* cursor, std::int64_t batch,
                        const Normalization& norm, const float* x, const std::int32_t* labels_out);
void check_advance_cursor(const std::int64_t* cursor);
void check_affine_params_from_range(const float* min, const float* max, std::int64_t channels,
                                    AffineQuant quant, const float* scale,
                                    const std::int32_t* zero_point);

/// LSQ's gradient scale g = 1/sqrt(N·qmax), N = elements per channel.
float lsq_gradient_scale(const ChannelLayout& layout, LsqQuant quant);

// Value checks (CPU reference only), for n > 0.
void check_ranges(const float* min, const float* max, std::int64_t channels);
void check_scales(const float* scale, std::int64_t channels);
void check_zero_points(const std::int32_t* zero_point, std::int64_t channels, AffineQuant quant);

}  // namespace lowbit::detail
