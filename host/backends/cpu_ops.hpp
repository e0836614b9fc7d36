// lowbit::cpu — convolution, fully connected and max pooling on host
// pointers: the math of the CPU backend (host/cpu_backend.cpp).
//
// Deterministic whatever the thread count: OpenMP splits only independent
// outputs (images, pooling planes, rows), every output element is summed in
// one fixed order, and sums over the batch (weight gradients) go through a
// fixed number of partials that depend on the shape alone, added in order.
// The orders (cpu_gemm.hpp has the two products' rules; the same bits on
// every instruction set it dispatches to):
//  - conv2d_forward: gemm_nn of w [K, CRS] and each image's im2col columns
//    [CRS, P] (for stride 1 read in place from the padded image): y summed
//    over (c, r, q) in row-major order, padding as 0·w terms.
//  - conv2d_backward dw: min(64, ⌈N/4⌉) groups of consecutive images; each
//    group's weight gradient is one gemm_nt dot product over its images'
//    pixels side by side (index (n - first)·P + p), and dw sums the groups in
//    order. dx: gemm_nn of wᵀ and dy (each column gradient summed over k in
//    order), then the column gradients added onto dx over (r, q) in
//    row-major order.
//  - linear_forward: gemm_nt (each output a 16-lane dot product over the
//    inputs); linear_backward: gemm_nn, dx summed over the outputs in order and
//    dw over the batch in order.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "lowbit/backend.hpp"

namespace lowbit::cpu {

/// Grow-only scratch memory of the ops below (per-thread im2col columns,
/// padded images and gradients, transposed weights, partial weight
/// gradients): it allocates when an op needs more than it holds, so a network
/// of fixed shapes allocates only on its first step.
class Scratch {
 public:
  enum Slot { columns, column_grads, output_grads, padded, weights, partials, kSlots };
  /// At least `floats` floats of `slot`, contents unspecified.
  float* reserve(Slot slot, std::size_t floats);
  /// At least `count` offsets (im2col rows in an image), contents unspecified.
  std::int64_t* reserve_offsets(std::size_t count);

 private:
  std::array<std::vector<float>, kSlots> buffers_;
  std::vector<std::int64_t> offsets_;
};

/// y[n,k,oy,ox] = Σ_{c,r,s} x[n,c,oy·stride+r-pad, ox·stride+s-pad]·w[k,c,r,s]
/// (cross-correlation, zero padding, no bias).
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, float* y,
                    Scratch& scratch);

/// Gradients of conv2d_forward: dx (skipped when null) and dw, both
/// overwritten.
void conv2d_backward(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                     float* dx, float* dw, Scratch& scratch);

/// y[b,o] = Σ_i x[b,i]·w[o,i]
void linear_forward(const LinearShape& s, const float* x, const float* w, float* y);

/// dx = dy·w (skipped when null) and dw = dyᵀ·x, both overwritten.
void linear_backward(const LinearShape& s, const float* x, const float* w, const float* dy,
                     float* dx, float* dw);

/// ref::max_pool_forward (the first maximum of each window; ref.hpp has the
/// rule) with the planes (images × channels) shared out among the threads;
/// 2x2 windows 2 apart run a vectorised copy of it (the same bits).
void max_pool_forward(const Pool2dShape& s, const float* x, float* y);

/// ref::max_pool_backward with the planes shared out among the threads (2x2/2
/// vectorised, the same bits).
void max_pool_backward(const Pool2dShape& s, const float* x, const float* dy, float* dx);

/// ref::integer_conv2d with the examples shared out among the threads (exact
/// integers: the same codes for any thread count).
void integer_conv2d(const Conv2dShape& s, const std::uint8_t* x, std::int32_t x_zero_point,
                    int x_fraction_bits, const std::uint8_t* w, const std::int32_t* w_zero_point,
                    const std::int32_t* bias, int accumulator_shift, const Requantization& r,
                    std::uint8_t* y);

}  // namespace lowbit::cpu
