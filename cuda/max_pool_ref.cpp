// CPU reference of max_pool.cu, and the CPU backend's max pooling (which runs
// it on a share of the planes per thread): unrolled for LeNet's 2x2/2 window
// (and 3x3/2), vectorisable in the backward, where the window loops run
// outside the one over a row's outputs.
#include <algorithm>
#include <cstdint>

#include "checks.hpp"
#include "lowbit/nn_element.hpp"
#include "lowbit/ref.hpp"

namespace lowbit::ref {
namespace {

using std::int64_t;

// The first maximum of one window. Kernel and Stride > 0 fix the window at
// compile time (0 reads s.kernel, s.stride): the compiler unrolls it then.
// replaces_max is a select, not a branch: a branch on random data mispredicts
// half of the time.
template <int Kernel>
float window_max(const Pool2dShape& s, const float* window) {
  const int64_t k = Kernel > 0 ? Kernel : s.kernel, width = s.width;
  float best = window[0];
  for (int64_t r = 0; r < k; ++r)
    for (int64_t q = 0; q < k; ++q) {
      const float v = window[r * width + q];
      best = replaces_max(v, best) ? v : best;
    }
  return best;
}

// Maxima of the windows [first, first + count) of output row oy (best[j]) and
// the offset of each one's first occurrence from the window's corner (at[j]).
// The loops over the window run outside the one over outputs, so that the
// index selects become vector masks.
template <int Kernel, int Stride>
void window_maxima(const Pool2dShape& s, const float* plane, int64_t oy, int64_t first,
                   int64_t count, float* __restrict__ best, std::int32_t* __restrict__ at) {
  const int64_t k = Kernel > 0 ? Kernel : s.kernel;
  const int64_t stride = Stride > 0 ? Stride : s.stride, width = s.width;
  const float* corner = plane + (oy * width + first) * stride;
  for (int64_t j = 0; j < count; ++j) {
    best[j] = corner[j * stride];
    at[j] = 0;
  }
  for (int64_t r = 0; r < k; ++r)
    for (int64_t q = 0; q < k; ++q) {
      const auto offset = static_cast<std::int32_t>(r * width + q);
      const float* src = corner + offset;
      for (int64_t j = 0; j < count; ++j) {
        const float v = src[j * stride];
        const bool take = replaces_max(v, best[j]);
        best[j] = take ? v : best[j];
        at[j] = take ? offset : at[j];
      }
    }
}

// Outputs of a row that window_maxima handles at once (its arrays live on
// the stack).
constexpr int64_t kPoolChunk = 64;

template <int Kernel, int Stride>
struct MaxPoolForward {
  static void run(const Pool2dShape& s, const float* x, float* y) {
    const int64_t oh = s.out_height(), ow = s.out_width();
    const int64_t stride = Stride > 0 ? Stride : s.stride;
    const int64_t planes = s.batch * s.channels;
    for (int64_t plane = 0; plane < planes; ++plane) {
      const float* in = x + plane * s.height * s.width;
      float* out = y + plane * oh * ow;
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox)
          out[oy * ow + ox] = window_max<Kernel>(s, in + (oy * s.width + ox) * stride);
    }
  }
};

// dx gets dy at each window's first maximum; elements of several windows
// add their gradients in output order.
template <int Kernel, int Stride>
struct MaxPoolBackward {
  static void run(const Pool2dShape& s, const float* x, const float* dy, float* dx) {
    const int64_t oh = s.out_height(), ow = s.out_width();
    const int64_t planes = s.batch * s.channels;
    for (int64_t plane = 0; plane < planes; ++plane) {
      const float* in = x + plane * s.height * s.width;
      const float* grad = dy + plane * oh * ow;
      float* out = dx + plane * s.height * s.width;
      std::fill(out, out + s.height * s.width, 0.0f);
      float best[kPoolChunk];
      std::int32_t at[kPoolChunk];
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t first = 0; first < ow; first += kPoolChunk) {
          const int64_t count = std::min(kPoolChunk, ow - first);
          window_maxima<Kernel, Stride>(s, in, oy, first, count, best, at);
          float* corner = out + (oy * s.width + first) * s.stride;
          for (int64_t j = 0; j < count; ++j)
            corner[j * s.stride + at[j]] += grad[oy * ow + first + j];
        }
    }
  }
};

// Runs op<Kernel, Stride> with LeNet's 2x2/2 window (and 3x3/2) known at
// compile time.
template <template <int, int> class Op, class... Args>
void dispatch_window(const Pool2dShape& s, Args... args) {
  if (s.kernel == 2 && s.stride == 2) return Op<2, 2>::run(s, args...);
  if (s.kernel == 3 && s.stride == 2) return Op<3, 2>::run(s, args...);
  Op<0, 0>::run(s, args...);
}

}  // namespace

void max_pool_forward(const Pool2dShape& s, const float* x, float* y) {
  detail::check_max_pool_forward(s, x, y);
  dispatch_window<MaxPoolForward>(s, x, y);
}

void max_pool_backward(const Pool2dShape& s, const float* x, const float* dy, float* dx) {
  detail::check_max_pool_backward(s, x, dy, dx);
  dispatch_window<MaxPoolBackward>(s, x, dy, dx);
}

}  // namespace lowbit::ref
