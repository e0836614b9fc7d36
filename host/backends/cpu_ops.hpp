// lowbit::cpu — convolution, fully connected and max pooling on host
// pointers: the math of the CPU backend (host/cpu_backend.cpp).
//
// Deterministic whatever the thread count: OpenMP splits only independent
// outputs (images, pooling planes, rows), every output element is summed in
// one fixed order, and sums over the batch (weight gradients) go through a
// fixed number of partials that depend on the shape alone, added in order.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "lowbit/backend.hpp"

namespace lowbit::cpu {

/// Grow-only scratch memory of the ops below (per-thread im2col columns,
/// partial weight gradients): it allocates when an op needs more than it
/// holds, so a network of fixed shapes allocates only on its first step.
class Scratch {
 public:
  enum Slot { columns, column_grads, partials, kSlots };
  /// At least `floats` floats of `slot`, contents unspecified.
  float* reserve(Slot slot, std::size_t floats);

 private:
  std::array<std::vector<float>, kSlots> buffers_;
};

/// C[m,n] = Σ_k A(m,k)·B[k,n] (+ C[m,n] when `accumulate`), serial, each
/// element summed over k = 0..K-1 in order. A(m,k) = a[m·a_stride_m +
/// k·a_stride_k], so a row-major A [M,K] is (lda, 1) and a transposed one
/// stored as [K,M] is (1, lda). B [K,N] and C [M,N] are row-major with leading
/// dimensions ldb and ldc; the inner loop runs along their rows.
void gemm_nn(std::int64_t m, std::int64_t n, std::int64_t k, const float* a,
             std::int64_t a_stride_m, std::int64_t a_stride_k, const float* b, std::int64_t ldb,
             float* c, std::int64_t ldc, bool accumulate);

/// C[m,n] = Σ_k A[m,k]·B[n,k] (+ C[m,n] when `accumulate`), serial: row-major
/// A [M,K] (lda), B [N,K] (ldb), C [M,N] (ldc). Each element is a dot product
/// in a fixed lane order (k mod 8 lanes, then a fixed pairwise fold).
void gemm_nt(std::int64_t m, std::int64_t n, std::int64_t k, const float* a, std::int64_t lda,
             const float* b, std::int64_t ldb, float* c, std::int64_t ldc, bool accumulate);

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
/// rule) with the planes (images × channels) shared out among the threads.
void max_pool_forward(const Pool2dShape& s, const float* x, float* y);

/// ref::max_pool_backward with the planes shared out among the threads.
void max_pool_backward(const Pool2dShape& s, const float* x, const float* dy, float* dx);

/// ref::integer_conv2d with the examples shared out among the threads (exact
/// integers: the same codes for any thread count).
void integer_conv2d(const Conv2dShape& s, const std::uint8_t* x, std::int32_t x_zero_point, int x_fraction_bits,
                    const std::uint8_t* w, const std::int32_t* w_zero_point,
                    const std::int32_t* bias, int accumulator_shift, const Requantization& r,
                    std::uint8_t* y);

}  // namespace lowbit::cpu
