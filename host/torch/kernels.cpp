#include "kernels.hpp"

#if defined(LOWBIT_TORCH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <cstdint>
#include <vector>

#include "backends/cpu_quant.hpp"
#include "backends/cpu_reductions.hpp"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "lowbit/ref.hpp"

namespace lowbit::torch_ops {
namespace {

using at::Tensor;

/// Runs on_cpu() for a CPU tensor x and on_cuda(stream) for a CUDA one, on
/// x's device and torch's current stream there, turning a lowbit::Error into
/// torch's error (a RuntimeError in Python) with the same message.
template <class OnCpu, class OnCuda>
void run(const char* op, const Tensor& x, const OnCpu& on_cpu, const OnCuda& on_cuda) {
  try {
    if (!x.is_cuda()) {
      on_cpu();
      return;
    }
#if defined(LOWBIT_TORCH_CUDA)
    const c10::cuda::CUDAGuard guard(x.device());
    on_cuda(c10::cuda::getCurrentCUDAStream().stream());
#else
    (void)on_cuda;
    TORCH_CHECK(false, "lowbit::", op,
                ": this lowbit_torch was built against a libtorch without CUDA");
#endif
  } catch (const lowbit::Error& e) {
    TORCH_CHECK(false, "lowbit::", op, ": ", e.what());
  }
}

/// Calls f(T{}) with T the lowbit element type of x's dtype (float, bf16 or
/// fp16; check_elements admits no other).
template <class F>
void with_element_type(const Tensor& x, const F& f) {
  switch (x.scalar_type()) {
    case at::kBFloat16:
      return f(bf16{});
    case at::kHalf:
      return f(fp16{});
    default:
      return f(float{});
  }
}

template <class T>
T* elements(Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}
template <class T>
const T* elements(const Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}

float* floats(Tensor& t) { return t.data_ptr<float>(); }
const float* floats(const Tensor& t) { return t.data_ptr<float>(); }
std::uint32_t* words(Tensor& mask) {
  return reinterpret_cast<std::uint32_t*>(mask.data_ptr<std::int32_t>());
}
const std::uint32_t* words(const Tensor& mask) {
  return reinterpret_cast<const std::uint32_t*>(mask.data_ptr<std::int32_t>());
}
EmaRangeState* ema_state(Tensor& state) {
  return reinterpret_cast<EmaRangeState*>(state.data_ptr<std::uint8_t>());
}

/// `t` as contiguous float32 on x's device, detached: ranges, scales, dy,
/// and the elements of the ops without 2-byte kernels (weights, LSQ).
Tensor float_like(const Tensor& t, const Tensor& x) {
  return t.detach().to(x.device(), at::kFloat).contiguous();
}

/// Scratch for a per-channel reduction over `layout` on x's device.
Tensor new_workspace(const ChannelLayout& layout, const Tensor& x) {
  return at::empty({static_cast<std::int64_t>(reduction_workspace_bytes(layout))},
                   x.options().dtype(at::kByte));
}

Workspace workspace_of(Tensor& bytes) {
  return {bytes.data_ptr(), static_cast<std::size_t>(bytes.numel())};
}

}  // namespace

std::vector<std::int64_t> shape_of(const Tensor& t) {
  return std::vector<std::int64_t>(t.sizes().begin(), t.sizes().end());
}

ChannelLayout layout_of(const std::vector<std::int64_t>& shape, std::int64_t axis) {
  if (axis != kPerTensor) return ChannelLayout::per_channel(shape, static_cast<int>(axis));
  std::int64_t n = 1;
  for (const std::int64_t d : shape) n *= d;
  return ChannelLayout::per_tensor(n);
}

void check_elements(const Tensor& x, const char* what) {
  TORCH_CHECK(x.device().is_cpu() || x.device().is_cuda(), what,
              " must be a CPU or CUDA tensor, got ", x.device());
  const at::ScalarType type = x.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kBFloat16 || type == at::kHalf, what,
              " must be float32, bfloat16 or float16, got ", type);
}

Tensor new_mask(std::int64_t n, MaskFormat format, const Tensor& like) {
  return at::empty({mask_words(n, format)}, like.options().dtype(at::kInt));
}

Tensor new_ema_state(at::Device device) {
  Tensor state = at::empty({static_cast<std::int64_t>(sizeof(EmaRangeState))},
                           at::TensorOptions().dtype(at::kByte).device(device));
  run(
      "new_ema_state", state, [&] { ref::ema_state_init(ema_state(state)); },
      [&](cudaStream_t stream) { cuda::ema_state_init(ema_state(state), stream); });
  return state;
}

void check_ema_state(const Tensor& state, const Tensor& x) {
  TORCH_CHECK(state.scalar_type() == at::kByte && state.dim() == 1 &&
                  state.numel() == static_cast<std::int64_t>(sizeof(EmaRangeState)) &&
                  state.is_contiguous() &&
                  reinterpret_cast<std::uintptr_t>(state.data_ptr()) % alignof(EmaRangeState) == 0,
              "state must be an EMA observer state from new_ema_state (", sizeof(EmaRangeState),
              " bytes)");
  TORCH_CHECK(state.device() == x.device(), "state is on ", state.device(), ", x on ", x.device());
}

Tensor fake_quant_range(const Tensor& x, const ChannelLayout& layout, const Tensor& min,
                        const Tensor& max, RangeQuant quant, Tensor& sides_mask) {
  const Tensor xc = x.contiguous();
  const Tensor lo = float_like(min, x);
  const Tensor hi = float_like(max, x);
  Tensor y = at::empty_like(xc);
  sides_mask = new_mask(layout.size(), MaskFormat::sides, x);
  with_element_type(x, [&](auto element) {
    using T = decltype(element);
    run(
        "fake_quant_range", x,
        [&] {
          cpu::fake_quant_range(elements<T>(xc), elements<T>(y), layout, floats(lo), floats(hi),
                                quant, words(sides_mask), MaskFormat::sides);
        },
        [&](cudaStream_t stream) {
          cuda::fake_quant_range(elements<T>(xc), elements<T>(y), layout, floats(lo), floats(hi),
                                 quant, words(sides_mask), MaskFormat::sides, stream);
        });
  });
  return y;
}

Tensor fake_quant_affine(const Tensor& x, const ChannelLayout& layout, const Tensor& scale,
                         const Tensor& zero_point, AffineQuant quant, Tensor& mask) {
  const Tensor xc = x.contiguous();
  const Tensor s = float_like(scale, x);
  const Tensor z = zero_point.detach().to(x.device(), at::kInt).contiguous();
  Tensor y = at::empty_like(xc);
  mask = new_mask(layout.size(), MaskFormat::pass, x);
  const std::int32_t* zp = z.data_ptr<std::int32_t>();
  with_element_type(x, [&](auto element) {
    using T = decltype(element);
    run(
        "fake_quant_affine", x,
        [&] {
          cpu::fake_quant_affine(elements<T>(xc), elements<T>(y), layout, floats(s), zp, quant,
                                 words(mask));
        },
        [&](cudaStream_t stream) {
          cuda::fake_quant_affine(elements<T>(xc), elements<T>(y), layout, floats(s), zp, quant,
                                  words(mask), nullptr, stream);
        });
  });
  return y;
}

Tensor fake_quant_weights(const Tensor& w, const ChannelLayout& layout, RangeQuant quant,
                          bool symmetric, Tensor& mask) {
  const Tensor wc = float_like(w, w);
  Tensor y = at::empty_like(wc);
  Tensor min = at::empty({layout.channels}, wc.options());
  Tensor max = at::empty({layout.channels}, wc.options());
  Tensor workspace = new_workspace(layout, w);
  mask = new_mask(layout.size(), MaskFormat::pass, w);
  run(
      "fake_quant_weights", w,
      [&] {
        cpu::fake_quant_weights(floats(wc), floats(y), layout, quant, symmetric, floats(min),
                                floats(max), words(mask), workspace_of(workspace));
      },
      [&](cudaStream_t stream) {
        cuda::fake_quant_weights(floats(wc), floats(y), layout, quant, symmetric, floats(min),
                                 floats(max), words(mask), workspace_of(workspace), stream);
      });
  return y.to(w.scalar_type());
}

Tensor ema_fake_quant(const Tensor& x, Tensor& state, const EmaConfig& config, Tensor& mask) {
  check_ema_state(state, x);
  const Tensor xc = x.contiguous();
  Tensor y = at::empty_like(xc);
  const std::int64_t n = xc.numel();
  mask = new_mask(n, MaskFormat::pass, x);
  with_element_type(x, [&](auto element) {
    using T = decltype(element);
    run(
        "ema_fake_quant", x,
        [&] {
          cpu::ema_fake_quant(elements<T>(xc), elements<T>(y), n, ema_state(state), config,
                              words(mask));
        },
        [&](cudaStream_t stream) {
          cuda::ema_fake_quant(elements<T>(xc), elements<T>(y), n, ema_state(state), config,
                               words(mask), MaskFormat::pass, nullptr, stream);
        });
  });
  return y;
}

Tensor lsq_forward(const Tensor& x, const ChannelLayout& layout, const Tensor& scale,
                   LsqQuant quant) {
  const Tensor xc = float_like(x, x);
  const Tensor s = float_like(scale, x);
  Tensor y = at::empty_like(xc);
  run(
      "lsq_fake_quant", x,
      [&] { cpu::lsq_forward(floats(xc), floats(y), layout, floats(s), quant); },
      [&](cudaStream_t stream) {
        cuda::lsq_forward(floats(xc), floats(y), layout, floats(s), quant, nullptr, stream);
      });
  return y.to(x.scalar_type());
}

Tensor lsq_init_scale(const Tensor& x, const ChannelLayout& layout, LsqQuant quant) {
  const Tensor xc = float_like(x, x);
  Tensor scale = at::empty({layout.channels}, xc.options());
  Tensor workspace = new_workspace(layout, x);
  run(
      "lsq_init_scale", x,
      [&] {
        cpu::lsq_init_scale(floats(xc), layout, quant, floats(scale), workspace_of(workspace));
      },
      [&](cudaStream_t stream) {
        cuda::lsq_init_scale(floats(xc), layout, quant, floats(scale), workspace_of(workspace),
                             stream);
      });
  return scale;
}

Tensor ste_backward(const Tensor& dy, const Tensor& mask) {
  const Tensor g = dy.contiguous();
  check_elements(g, "the gradient");
  Tensor dx = at::empty_like(g);
  with_element_type(g, [&](auto element) {
    using T = decltype(element);
    run(
        "ste_backward", g,
        [&] {
          cpu::ste_backward(elements<T>(g), words(mask), MaskFormat::pass, g.numel(),
                            elements<T>(dx));
        },
        [&](cudaStream_t stream) {
          cuda::ste_backward(elements<T>(g), words(mask), MaskFormat::pass, g.numel(),
                             elements<T>(dx), stream);
        });
  });
  return dx;
}

std::vector<Tensor> ste_backward_range(const Tensor& dy, const Tensor& sides_mask,
                                       const ChannelLayout& layout) {
  const Tensor g = dy.contiguous();
  check_elements(g, "the gradient");
  Tensor dx = at::empty_like(g);
  Tensor d_min = at::empty({layout.channels}, g.options().dtype(at::kFloat));
  Tensor d_max = at::empty({layout.channels}, g.options().dtype(at::kFloat));
  Tensor workspace = new_workspace(layout, g);
  with_element_type(g, [&](auto element) {
    using T = decltype(element);
    run(
        "fake_quant_range backward", g,
        [&] {
          cpu::ste_backward_range(elements<T>(g), words(sides_mask), layout, elements<T>(dx),
                                  floats(d_min), floats(d_max), workspace_of(workspace));
        },
        [&](cudaStream_t stream) {
          cuda::ste_backward_range(elements<T>(g), words(sides_mask), layout, elements<T>(dx),
                                   floats(d_min), floats(d_max), workspace_of(workspace), stream);
        });
  });
  return {dx, d_min, d_max};
}

std::vector<Tensor> lsq_backward(const Tensor& dy, const Tensor& x, const ChannelLayout& layout,
                                 const Tensor& scale, LsqQuant quant) {
  const Tensor g = float_like(dy, x);
  const Tensor xf = float_like(x, x);
  const Tensor s = float_like(scale, x);
  Tensor dx = at::empty_like(g);
  Tensor d_scale = at::empty({layout.channels}, g.options());
  Tensor workspace = new_workspace(layout, x);
  run(
      "lsq_fake_quant backward", x,
      [&] {
        cpu::lsq_backward(floats(g), floats(xf), layout, floats(s), quant, floats(dx),
                          floats(d_scale), workspace_of(workspace));
      },
      [&](cudaStream_t stream) {
        cuda::lsq_backward(floats(g), floats(xf), layout, floats(s), quant, floats(dx),
                           floats(d_scale), workspace_of(workspace), stream);
      });
  return {dx.to(x.scalar_type()), d_scale};
}

}  // namespace lowbit::torch_ops
