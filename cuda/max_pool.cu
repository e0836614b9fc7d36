// Max pooling (square kernel×kernel window, stride apart, no padding) with the
// first-maximum rule of replaces_max (nn_element.hpp), bit for bit the CPU
// reference's:
//
//   forward:  y[p,oy,ox]  = the first maximum, in row-major order, of the
//                           window at (oy·stride, ox·stride) of plane p
//   backward: dx[p,iy,ix] = 0.0f + Σ dy[p,oy,ox] over the windows whose first
//                           maximum is (iy, ix), in row-major output order
//
// The backward gathers where the reference scatters: one thread per input
// element walks the windows that cover it, in row-major order, and adds dy
// where the window picked it. That is the reference's order of additions, so
// overlapping windows (stride < kernel) give the same bits, and no two threads
// write one element (no atomics).
#include <cstdint>

#include "checks.hpp"
#include "launch.cuh"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "lowbit/nn_element.hpp"

namespace lowbit::cuda {
namespace {

using std::int64_t;

/// The first maximum of a window: its value, and its row and column in it.
struct WindowMax {
  float value;
  int64_t row, column;
};

/// Walks the window whose top-left element is `corner` in row-major order.
/// Kernel > 0 fixes the window at compile time (0 reads `kernel`), so LeNet's
/// 2x2 window unrolls.
template <int Kernel>
__device__ WindowMax first_max(const float* corner, int64_t width, int64_t kernel) {
  const int64_t k = Kernel > 0 ? Kernel : kernel;
  WindowMax m{corner[0], 0, 0};
  for (int64_t r = 0; r < k; ++r)
    for (int64_t q = 0; q < k; ++q) {
      const float v = corner[r * width + q];
      const bool take = replaces_max(v, m.value);
      m.value = take ? v : m.value;
      m.row = take ? r : m.row;
      m.column = take ? q : m.column;
    }
  return m;
}

/// Along one axis, the first window that covers input index i: the smallest
/// o with o·stride + kernel > i.
__device__ int64_t first_covering(int64_t i, int64_t kernel, int64_t stride) {
  return i < kernel ? 0 : (i - kernel) / stride + 1;
}

// ---------------------------------------------------------------------------
// Kernels. Kernel, Stride > 0 fix the window at compile time; 0 reads s.

/// One thread per output (grid-stride).
template <int Kernel, int Stride>
__global__ void max_pool_forward_kernel(Pool2dShape s, const float* x, float* y) {
  const int64_t stride = Stride > 0 ? Stride : s.stride;
  const int64_t oh = s.out_height(), ow = s.out_width();
  const int64_t n = s.batch * s.channels * oh * ow;
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t row = i / ow, ox = i - row * ow;  // row = plane·oh + oy
    const int64_t plane = row / oh, oy = row - plane * oh;
    const float* corner = x + (plane * s.height + oy * stride) * s.width + ox * stride;
    y[i] = first_max<Kernel>(corner, s.width, s.kernel).value;
  }
}

/// One thread per input element (grid-stride): windows oy·stride <= iy <
/// oy·stride + kernel (ox likewise), in row-major order.
template <int Kernel, int Stride>
__global__ void max_pool_backward_kernel(Pool2dShape s, const float* x, const float* dy,
                                         float* dx) {
  const int64_t kernel = Kernel > 0 ? Kernel : s.kernel;
  const int64_t stride = Stride > 0 ? Stride : s.stride;
  const int64_t oh = s.out_height(), ow = s.out_width();
  const int64_t n = s.batch * s.channels * s.height * s.width;
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t row = i / s.width, ix = i - row * s.width;  // row = plane·height + iy
    const int64_t plane = row / s.height, iy = row - plane * s.height;
    const float* in = x + plane * s.height * s.width;
    const float* grad = dy + plane * oh * ow;
    // One past the last covering window: o·stride <= i, and o < oh (ow).
    const int64_t oy_end = iy / stride < oh ? iy / stride + 1 : oh;
    const int64_t ox_end = ix / stride < ow ? ix / stride + 1 : ow;
    float sum = 0.0f;
    for (int64_t oy = first_covering(iy, kernel, stride); oy < oy_end; ++oy)
      for (int64_t ox = first_covering(ix, kernel, stride); ox < ox_end; ++ox) {
        const float* corner = in + oy * stride * s.width + ox * stride;
        const WindowMax m = first_max<Kernel>(corner, s.width, kernel);
        if (oy * stride + m.row == iy && ox * stride + m.column == ix) sum += grad[oy * ow + ox];
      }
    dx[i] = sum;
  }
}

/// Launches the forward (backward) kernel for a window fixed at compile time
/// (0: read from s) and checks the launch.
template <int Kernel, int Stride>
void launch_forward(unsigned grid, const Pool2dShape& s, const float* x, float* y,
                    cudaStream_t stream) {
  max_pool_forward_kernel<Kernel, Stride><<<grid, detail::kBlockThreads, 0, stream>>>(s, x, y);
  LOWBIT_LAUNCH_CHECK();
}

template <int Kernel, int Stride>
void launch_backward(unsigned grid, const Pool2dShape& s, const float* x, const float* dy,
                     float* dx, cudaStream_t stream) {
  max_pool_backward_kernel<Kernel, Stride><<<grid, detail::kBlockThreads, 0, stream>>>(s, x, dy,
                                                                                       dx);
  LOWBIT_LAUNCH_CHECK();
}

}  // namespace

void max_pool_forward(const Pool2dShape& s, const float* x, float* y, cudaStream_t stream) {
  lowbit::detail::check_max_pool_forward(s, x, y);
  const int64_t n = s.batch * s.channels * s.out_height() * s.out_width();
  if (n == 0) return;
  const unsigned grid = detail::grid_for(n, detail::kBlockThreads);
  if (s.kernel == 2 && s.stride == 2) return launch_forward<2, 2>(grid, s, x, y, stream);
  if (s.kernel == 3 && s.stride == 2) return launch_forward<3, 2>(grid, s, x, y, stream);
  launch_forward<0, 0>(grid, s, x, y, stream);
}

void max_pool_backward(const Pool2dShape& s, const float* x, const float* dy, float* dx,
                       cudaStream_t stream) {
  lowbit::detail::check_max_pool_backward(s, x, dy, dx);
  const int64_t n = s.batch * s.channels * s.height * s.width;
  if (n == 0) return;
  const unsigned grid = detail::grid_for(n, detail::kBlockThreads);
  if (s.kernel == 2 && s.stride == 2) return launch_backward<2, 2>(grid, s, x, dy, dx, stream);
  if (s.kernel == 3 && s.stride == 2) return launch_backward<3, 2>(grid, s, x, dy, dx, stream);
  launch_backward<0, 0>(grid, s, x, dy, dx, stream);
}

}  // namespace lowbit::cuda
