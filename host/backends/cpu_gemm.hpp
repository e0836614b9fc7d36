// lowbit::cpu — the fp32 matrix products of the CPU backend's convolution and
// fully connected layers: register-blocked kernels compiled for each level of
// cpu_isa.hpp (baseline SSE2, x86-64-v3 with AVX2, x86-64-v4 with AVX-512),
// with tiles of their own, and picked at run time by at_active_isa.
//
// Every result is the same bits for every level and every blocking: each
// element is summed in an order fixed by the sizes alone (stated below), with
// separate multiplies and adds (no FMA contraction) in every level.
#pragma once

#include <cstdint>

namespace lowbit::cpu {

/// C[m,n] = Σ_k A(m,k)·B[k,n] (+ C[m,n] when `accumulate`), serial, each
/// element summed over k = 0..K-1 in order (from C[m,n] or from +0).
/// A(m,k) = a[m·a_stride_m + k·a_stride_k], so a row-major A [M,K] is (lda, 1)
/// and a transposed one stored as [K,M] is (1, lda) (read in place; any other
/// strides are packed). B [K,N] and C [M,N] are row-major with leading
/// dimensions ldb and ldc.
void gemm_nn(std::int64_t m, std::int64_t n, std::int64_t k, const float* a,
             std::int64_t a_stride_m, std::int64_t a_stride_k, const float* b, std::int64_t ldb,
             float* c, std::int64_t ldc, bool accumulate);

/// gemm_nn with B's row p at b + b_offsets[p] (n floats each, anywhere: an
/// im2col read in place from an image, for one).
void gemm_nn_offsets(std::int64_t m, std::int64_t n, std::int64_t k, const float* a,
                     std::int64_t a_stride_m, std::int64_t a_stride_k, const float* b,
                     const std::int64_t* b_offsets, float* c, std::int64_t ldc, bool accumulate);

/// C[m,n] = Σ_k A[m,k]·B[n,k] (+ C[m,n] when `accumulate`), serial: row-major
/// A [M,K] (lda), B [N,K] (ldb), C [M,N] (ldc). Each element is a dot product
/// in 16 lanes: lane l sums the terms k ≡ l (mod 16) in order of k, then the
/// lanes fold pairwise, (l, l+8), (l, l+4), (l, l+2), (0, 1), and the result
/// is added to C[m,n] when accumulating.
void gemm_nt(std::int64_t m, std::int64_t n, std::int64_t k, const float* a, std::int64_t lda,
             const float* b, std::int64_t ldb, float* c, std::int64_t ldc, bool accumulate);

}  // namespace lowbit::cpu
