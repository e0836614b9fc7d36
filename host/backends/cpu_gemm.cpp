// GEMM kernels written once with GCC vector extensions and compiled for
// each level (at_active_isa, into whose level functions every template below
// inlines): V is the level's widest vector, 4, 8 or 16 floats. The tiles
// differ per level; the order of each element's sum does not.
#include "backends/cpu_gemm.hpp"

#include <algorithm>
#include <cstring>

#include "backends/cpu_isa.hpp"

namespace lowbit::cpu {
namespace {

using std::int64_t;

typedef float v4f __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));

#define LOWBIT_INLINE inline __attribute__((always_inline))

template <class V>
constexpr int kLanes = sizeof(V) / sizeof(float);

// Unaligned vector access (by reference: a vector passed by value would
// warn of the ABI of the levels without it).
template <class V>
LOWBIT_INLINE V& load(V& v, const float* p) {
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Keeps a loaded vector in a register: GCC would otherwise fold the load into
// every multiply that uses it, loading it again for each.
template <class V>
LOWBIT_INLINE void in_register([[maybe_unused]] V& v) {
#if defined(__x86_64__)
  asm("" : "+v"(v));
#endif
}

template <class V>
LOWBIT_INLINE void store(float* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

// ---- gemm_nn: outer products, C tiles of R rows × NS vectors in registers ----

// k-steps per pass: bounds the packed A panel and B tail on the stack.
constexpr int64_t kDepth = 256;

// Where B's rows are: `ld` apart, or at offsets from b.
struct StridedRows {
  const float* b;
  int64_t ld;
  LOWBIT_INLINE const float* operator[](int64_t p) const { return b + p * ld; }
  LOWBIT_INLINE StridedRows from(int64_t p) const { return {b + p * ld, ld}; }
};

struct OffsetRows {
  const float* b;
  const int64_t* offsets;
  LOWBIT_INLINE const float* operator[](int64_t p) const { return b + offsets[p]; }
  LOWBIT_INLINE OffsetRows from(int64_t p) const { return {b, offsets + p}; }
};

// C[0:R, 0:NS·L] = (C or 0) + Σ_p A(i,p)·B[p, j + :] over p = 0..kc-1 in
// order, A(i,p) = a[p·lda + i].
template <class V, int R, int NS, class Rows>
LOWBIT_INLINE void nn_tile(int64_t kc, const float* a, int64_t lda, const Rows& b, int64_t j,
                           float* c, int64_t ldc, bool load_c) {
  constexpr int L = kLanes<V>;
  V acc[R][NS];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int s = 0; s < NS; ++s) {
      acc[i][s] = V{};
      if (load_c) load(acc[i][s], c + i * ldc + s * L);
    }
  for (int64_t p = 0; p < kc; ++p) {
    const float* row = b[p] + j;
    V bv[NS];
#pragma GCC unroll 4
    for (int s = 0; s < NS; ++s) in_register(load(bv[s], row + s * L));
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const float ai = a[p * lda + i];
#pragma GCC unroll 4
      for (int s = 0; s < NS; ++s) acc[i][s] += ai * bv[s];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int s = 0; s < NS; ++s) store(c + i * ldc + s * L, acc[i][s]);
}

// R rows of C over all n columns: NS vectors at a time, then single ones,
// then the last n mod L columns through zero-padded copies (b_tail holds
// B's [kc, L]).
template <class V, int R, int NS, class Rows>
LOWBIT_INLINE void nn_panel(int64_t n, int64_t kc, const float* a, int64_t lda, const Rows& b,
                            const float* b_tail, float* c, int64_t ldc, bool load_c) {
  constexpr int L = kLanes<V>;
  const int64_t full = n / L * L;
  int64_t j = 0;
  for (; j + NS * L <= full; j += NS * L) nn_tile<V, R, NS>(kc, a, lda, b, j, c + j, ldc, load_c);
  for (; j < full; j += L) nn_tile<V, R, 1>(kc, a, lda, b, j, c + j, ldc, load_c);
  if (full == n) return;
  const int64_t width = n - full;
  float tile[R * L];
  for (int i = 0; i < R; ++i)
    for (int l = 0; l < L; ++l)
      tile[i * L + l] = load_c && l < width ? c[i * ldc + full + l] : 0.0f;
  nn_tile<V, R, 1>(kc, a, lda, StridedRows{b_tail, L}, 0, tile, L, true);
  for (int i = 0; i < R; ++i)
    for (int64_t l = 0; l < width; ++l) c[i * ldc + full + l] = tile[i * L + l];
}

// nn_panel for the rows left (1..R), known at compile time.
template <class V, int R, int NS, class Rows>
LOWBIT_INLINE void nn_rows(int rows, int64_t n, int64_t kc, const float* a, int64_t lda,
                           const Rows& b, const float* b_tail, float* c, int64_t ldc, bool load_c) {
  if constexpr (R > 0) {
    if (rows == R) return nn_panel<V, R, NS>(n, kc, a, lda, b, b_tail, c, ldc, load_c);
    nn_rows<V, R - 1, NS>(rows, n, kc, a, lda, b, b_tail, c, ldc, load_c);
  }
}

// Passes of kDepth k-steps (C carries the sums between them, so the order
// stays k = 0..K-1), panels of MR rows, tiles of MR × NS vectors.
template <class V, int MR, int NS, class Rows>
LOWBIT_INLINE void nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_stride_m,
                      int64_t a_stride_k, const Rows& b, float* c, int64_t ldc, bool accumulate) {
  constexpr int L = kLanes<V>;
  float packed[MR * kDepth];
  float b_tail[kDepth * L];
  const int64_t full = n / L * L;
  int64_t k0 = 0;
  do {
    const int64_t kc = std::min(kDepth, k - k0);
    const bool load_c = accumulate || k0 > 0;
    const Rows b_pass = b.from(k0);
    if (full < n)
      for (int64_t p = 0; p < kc; ++p)
        for (int64_t l = 0; l < L; ++l)
          b_tail[p * L + l] = full + l < n ? b_pass[p][full + l] : 0.0f;
    for (int64_t i0 = 0; i0 < m; i0 += MR) {
      const int rows = static_cast<int>(std::min<int64_t>(MR, m - i0));
      const float* panel = a + i0 * a_stride_m + k0 * a_stride_k;
      int64_t lda = a_stride_k;
      if (a_stride_m != 1) {  // pack A(i0.., k0..) as [kc, rows]
        for (int i = 0; i < rows; ++i)
          for (int64_t p = 0; p < kc; ++p)
            packed[p * rows + i] = panel[i * a_stride_m + p * a_stride_k];
        panel = packed;
        lda = rows;
      }
      nn_rows<V, MR, NS>(rows, n, kc, panel, lda, b_pass, b_tail, c + i0 * ldc, ldc, load_c);
    }
    k0 += kc;
  } while (k0 < k);
}

// ---- gemm_nt: dot products in 16 lanes, R × S of them in registers ----

constexpr int kDotLanes = 16;

// acc[i][j] (16 lanes as 16/L vectors) += a[i][p + l]·b[j][p + l] for l < 16.
template <class V, int R, int S>
LOWBIT_INLINE void dot_step(V (&acc)[R][S][kDotLanes / kLanes<V>], const float* const (&a)[R],
                            const float* const (&b)[S], int64_t p) {
  constexpr int L = kLanes<V>;
#pragma GCC unroll 4
  for (int g = 0; g < kDotLanes / L; ++g) {
    V av[R], bv[S];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) in_register(load(av[i], a[i] + p + g * L));
#pragma GCC unroll 8
    for (int j = 0; j < S; ++j) in_register(load(bv[j], b[j] + p + g * L));
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < S; ++j) acc[i][j][g] += av[i] * bv[j];
  }
}

// dst[0, n) = src[0, n) for n < 16 in fixed-size moves (a loop would become
// a library call).
LOWBIT_INLINE void copy_tail(const float* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (const int64_t part : {8, 4, 2, 1})
    if (n - i >= part) {
      std::memcpy(dst + i, src + i, static_cast<std::size_t>(part) * sizeof(float));
      i += part;
    }
}

// The 16 lanes folded pairwise: (l, l+8), (l, l+4), (l, l+2), (0, 1).
template <class V>
LOWBIT_INLINE float fold(const V (&acc)[kDotLanes / kLanes<V>]) {
  float lanes[kDotLanes];
  std::memcpy(lanes, acc, sizeof lanes);
  v4f part[4];
  for (int q = 0; q < 4; ++q) load(part[q], lanes + 4 * q);
  const v4f quarter = (part[0] + part[2]) + (part[1] + part[3]);
  return (quarter[0] + quarter[2]) + (quarter[1] + quarter[3]);
}

// out[i][j] = a[i]·b[j] over k elements; the last k mod 16 go through
// zero-padded copies (+0 leaves a lane unchanged: it starts at +0, so it is
// never -0).
template <class V, int R, int S>
LOWBIT_INLINE void dot_tile(int64_t k, const float* const (&a)[R], const float* const (&b)[S],
                            float (&out)[R][S]) {
  constexpr int G = kDotLanes / kLanes<V>;
  V acc[R][S][G];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < S; ++j)
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) acc[i][j][g] = V{};
  int64_t p = 0;
  for (; p + kDotLanes <= k; p += kDotLanes) dot_step<V, R, S>(acc, a, b, p);
  if (p < k) {
    float a_tail[R][kDotLanes] = {}, b_tail[S][kDotLanes] = {};
    const float* at[R];
    const float* bt[S];
    for (int i = 0; i < R; ++i) {
      copy_tail(a[i] + p, k - p, a_tail[i]);
      at[i] = a_tail[i];
    }
    for (int j = 0; j < S; ++j) {
      copy_tail(b[j] + p, k - p, b_tail[j]);
      bt[j] = b_tail[j];
    }
    dot_step<V, R, S>(acc, at, bt, 0);
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < S; ++j) out[i][j] = fold<V>(acc[i][j]);
}

// Tiles of R rows of A × S rows of B; at the edges the last row repeats and
// its results are dropped.
template <class V, int R, int S>
LOWBIT_INLINE void nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                      int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  for (int64_t i0 = 0; i0 < m; i0 += R) {
    const float* rows[R];
    for (int i = 0; i < R; ++i) rows[i] = a + std::min(i0 + i, m - 1) * lda;
    for (int64_t j0 = 0; j0 < n; j0 += S) {
      const float* cols[S];
      for (int j = 0; j < S; ++j) cols[j] = b + std::min(j0 + j, n - 1) * ldb;
      float out[R][S];
      dot_tile<V, R, S>(k, rows, cols, out);
      for (int i = 0; i < R && i0 + i < m; ++i)
        for (int j = 0; j < S && j0 + j < n; ++j) {
          float& dst = c[(i0 + i) * ldc + j0 + j];
          dst = accumulate ? dst + out[i][j] : out[i][j];
        }
    }
  }
}

// ---- The levels ----

#define LOWBIT_NN_PARAMS                                                                   \
  int64_t m, int64_t n, int64_t k, const float *a, int64_t a_stride_m, int64_t a_stride_k, \
      const float *b, int64_t ldb, const int64_t *b_offsets, float *c, int64_t ldc,        \
      bool accumulate
#define LOWBIT_NN_ARGS m, n, k, a, a_stride_m, a_stride_k, b, ldb, b_offsets, c, ldc, accumulate
#define LOWBIT_NT_PARAMS                                                                     \
  int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb, \
      float *c, int64_t ldc, bool accumulate
#define LOWBIT_NT_ARGS m, n, k, a, lda, b, ldb, c, ldc, accumulate

// gemm_nn with V and MR × NS tiles: B's rows `ldb` apart, or at
// b + b_offsets[p].
template <class V, int MR, int NS>
LOWBIT_INLINE void nn_rows_of(LOWBIT_NN_PARAMS) {
  if (b_offsets != nullptr)
    return nn<V, MR, NS>(m, n, k, a, a_stride_m, a_stride_k, OffsetRows{b, b_offsets}, c, ldc,
                         accumulate);
  nn<V, MR, NS>(m, n, k, a, a_stride_m, a_stride_k, StridedRows{b, ldb}, c, ldc, accumulate);
}

// The tiles of each level: baseline, 16 SSE registers; x86-64-v3, 16 AVX
// registers; x86-64-v4, 32 AVX-512 registers.
void nn_active(LOWBIT_NN_PARAMS) {
  at_active_isa([&](auto level) {
    if constexpr (level == Isa::x86_64_v4)
      nn_rows_of<v16f, 8, 2>(LOWBIT_NN_ARGS);
    else if constexpr (level == Isa::x86_64_v3)
      nn_rows_of<v8f, 6, 2>(LOWBIT_NN_ARGS);
    else
      nn_rows_of<v4f, 4, 2>(LOWBIT_NN_ARGS);
  });
}

}  // namespace

void gemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_stride_m,
             int64_t a_stride_k, const float* b, int64_t ldb, float* c, int64_t ldc,
             bool accumulate) {
  nn_active(m, n, k, a, a_stride_m, a_stride_k, b, ldb, nullptr, c, ldc, accumulate);
}

void gemm_nn_offsets(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_stride_m,
                     int64_t a_stride_k, const float* b, const int64_t* b_offsets, float* c,
                     int64_t ldc, bool accumulate) {
  nn_active(m, n, k, a, a_stride_m, a_stride_k, b, 0, b_offsets, c, ldc, accumulate);
}

void gemm_nt(LOWBIT_NT_PARAMS) {
  at_active_isa([&](auto level) {
    if constexpr (level == Isa::x86_64_v4) {
      // 4x4 dot products, or 6x3 where that wastes less at the edges
      // (LeNet's conv1 weight gradient, 6x25).
      const auto padded = [&](int64_t r, int64_t s) {
        return (m + r - 1) / r * r * ((n + s - 1) / s * s);
      };
      if (padded(6, 3) < padded(4, 4)) return nt<v16f, 6, 3>(LOWBIT_NT_ARGS);
      nt<v16f, 4, 4>(LOWBIT_NT_ARGS);
    } else if constexpr (level == Isa::x86_64_v3) {
      nt<v8f, 2, 2>(LOWBIT_NT_ARGS);
    } else {
      nt<v4f, 1, 2>(LOWBIT_NT_ARGS);
    }
  });
}

}  // namespace lowbit::cpu
