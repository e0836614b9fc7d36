// Learned step size quantization (LSQ, Esser et al. 2019), per tensor or per
// channel, zero point 0:
//   forward:  y = clamp(round(x/s), qmin, qmax)·s
//   backward: dx = dy strictly inside (qmin < v < qmax, v = x/s),
//             d_s = g·Σ dy·{round(v)-v | qmin | qmax}, g = 1/sqrt(N·qmax),
//             N elements per channel (Esser et al.'s definition)
//   init:     s = 2·mean|x|/sqrt(qmax)
#include <cmath>

#include "checks.hpp"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "reduction.cuh"
#include "tiles.cuh"

namespace lowbit::cuda {
namespace {

struct LsqQuantizer : detail::PlainInput {
  static constexpr bool kHasSides = false;
  using Params = LsqParams;
  const float* scale;
  int qmin;
  int qmax;

  __device__ Params params(std::int64_t c) const { return make_lsq(scale[c], qmin, qmax); }
  __device__ void set_channel(Params& p, std::int64_t c) const { p = params(c); }
  __device__ float apply(float x, const Params& p) const { return fake_quant(x, p); }
  __device__ bool plane0(float x, const Params& p) const { return lsq_passes(x, p); }
  __device__ bool quantizes(const Params&) const { return true; }
  __device__ bool clipped(float x, const Params& p) const { return clips(x, p); }
};

struct LsqBackwardBody {
  static constexpr int kQuantities = 1;
  const float* dy;
  const float* x;
  const float* scale;
  int qmin;
  int qmax;
  float* dx;

  struct Element {
    const float* dy;
    const float* x;
    float* dx;
    LsqParams p;
    template <class Op>
    __device__ void operator()(std::int64_t i, float (&acc)[1], Op op) const {
      const float g = dy[i];
      const float xi = x[i];
      dx[i] = ste_gradient(g, lsq_passes(xi, p));
      acc[0] = op(acc[0], lsq_scale_grad_term(xi, g, p));
    }
  };
  __device__ Element bind(std::int64_t c) const {
    return Element{dy, x, dx, make_lsq(scale[c], qmin, qmax)};
  }
};

struct LsqGradFinish {
  static constexpr int kQuantities = 1;
  float* d_scale;
  float grad_scale;
  __device__ void operator()(std::int64_t c, const float (&totals)[1]) const {
    d_scale[c] = totals[0] * grad_scale;
  }
};

struct AbsSumBody {
  static constexpr int kQuantities = 1;
  const float* x;
  struct Element {
    const float* x;
    template <class Op>
    __device__ void operator()(std::int64_t i, float (&acc)[1], Op op) const {
      acc[0] = op(acc[0], fabsf(x[i]));
    }
  };
  __device__ Element bind(std::int64_t) const { return Element{x}; }
};

struct LsqInitFinish {
  static constexpr int kQuantities = 1;
  float* scale;
  std::int64_t count;
  int qmax;
  __device__ void operator()(std::int64_t c, const float (&totals)[1]) const {
    scale[c] = lsq_initial_scale(totals[0], count, qmax);
  }
};

}  // namespace

void lsq_forward(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                 LsqQuant quant, ClipCount* clip_count, cudaStream_t stream) {
  lowbit::detail::check_lsq_forward(x, y, layout, scale, quant);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  detail::launch_quantize_tiles(x, y, nullptr, MaskFormat::pass, layout,
                                LsqQuantizer{{}, scale, quant.qmin, quant.qmax}, stream,
                                detail::NoObserver{}, clip_count);
}

void lsq_backward(const float* dy, const float* x, const ChannelLayout& layout,
                  const float* scale, LsqQuant quant, float* dx, float* d_scale,
                  Workspace workspace, cudaStream_t stream) {
  lowbit::detail::check_lsq_backward(dy, x, layout, scale, quant, dx, d_scale, workspace);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  const float grad_scale = lowbit::detail::lsq_gradient_scale(layout, quant);
  detail::launch_channel_reduction(layout,
                                   LsqBackwardBody{dy, x, scale, quant.qmin, quant.qmax, dx},
                                   lowbit::detail::SumOp{}, LsqGradFinish{d_scale, grad_scale},
                                   workspace, stream);
}

void lsq_init_scale(const float* x, const ChannelLayout& layout, LsqQuant quant, float* scale,
                    Workspace workspace, cudaStream_t stream) {
  lowbit::detail::check_lsq_init_scale(x, layout, quant, scale, workspace);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  detail::launch_channel_reduction(
      layout, AbsSumBody{x}, lowbit::detail::SumOp{},
      LsqInitFinish{scale, layout.outer * layout.inner, quant.qmax}, workspace, stream);
}

}  // namespace lowbit::cuda
