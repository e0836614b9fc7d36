// lowbit's quantizers as PyTorch operators (torch.ops.lowbit.*), with
// autograd through the 1-bit mask the forward saves. CPU tensors run the CPU
// backend's kernels (host/backends/cpu_quant.hpp), the same bits as
// lowbit::ref; each op states which torch op it equals bit for bit.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "backends/cpu_quant.hpp"
#include "backends/cpu_reductions.hpp"
#include "lowbit/error.hpp"
#include "lowbit/types.hpp"

namespace lowbit::torch_ops {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

/// The axis value that marks one range for the whole tensor.
constexpr std::int64_t kPerTensor = -1;

/// Runs f, turning a lowbit::Error into torch's error (a RuntimeError in
/// Python) with the same message.
template <class F>
void translating_errors(const char* op, const F& f) {
  try {
    f();
  } catch (const lowbit::Error& e) {
    TORCH_CHECK(false, "lowbit::", op, ": ", e.what());
  }
}

void check_float_cpu(const Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), what, " must be a CPU tensor (the CUDA ops are not built yet)");
  TORCH_CHECK(t.scalar_type() == at::kFloat, what, " must be float32, got ", t.scalar_type());
}

std::vector<std::int64_t> shape_of(const Tensor& t) {
  return std::vector<std::int64_t>(t.sizes().begin(), t.sizes().end());
}

/// One channel for the whole tensor (axis kPerTensor), or one per index of
/// `axis`.
ChannelLayout layout_of(const std::vector<std::int64_t>& shape, std::int64_t axis) {
  if (axis != kPerTensor) return ChannelLayout::per_channel(shape, static_cast<int>(axis));
  std::int64_t n = 1;
  for (const std::int64_t d : shape) n *= d;
  return ChannelLayout::per_tensor(n);
}

/// Scratch for a per-channel reduction over `layout`.
Tensor new_workspace(const ChannelLayout& layout) {
  return at::empty({static_cast<std::int64_t>(reduction_workspace_bytes(layout))},
                   at::TensorOptions().dtype(at::kByte));
}

Workspace workspace_of(Tensor& bytes) {
  return {bytes.data_ptr(), static_cast<std::size_t>(bytes.numel())};
}

/// The saved straight-through mask: mask_words(n) 32-bit words in an int32
/// tensor, bit i % 32 of word i / 32 set where element i passed.
Tensor new_mask(std::int64_t n) {
  return at::empty({mask_words(n)}, at::TensorOptions().dtype(at::kInt));
}

std::uint32_t* mask_data(Tensor& mask) {
  return reinterpret_cast<std::uint32_t*>(mask.data_ptr<std::int32_t>());
}

/// y = fake quant of x with per-channel (or one) scale and zero point; the
/// mask for the backward goes to `mask`.
Tensor affine_forward(const Tensor& x, const Tensor& scale, const Tensor& zero_point,
                      const ChannelLayout& layout, AffineQuant quant, Tensor& mask) {
  const Tensor xc = x.contiguous();
  const Tensor s = scale.to(at::kFloat).contiguous();
  const Tensor z = zero_point.to(at::kInt).contiguous();
  Tensor y = at::empty_like(xc);
  mask = new_mask(layout.size());
  translating_errors("fake_quant_affine", [&] {
    cpu::fake_quant_affine(xc.data_ptr<float>(), y.data_ptr<float>(), layout, s.data_ptr<float>(),
                           z.data_ptr<std::int32_t>(), quant, mask_data(mask));
  });
  return y;
}

Tensor ste(const Tensor& dy, Tensor mask) {
  const Tensor g = dy.to(at::kFloat).contiguous();
  Tensor dx = at::empty_like(g);
  cpu::ste_backward(g.data_ptr<float>(), mask_data(mask), MaskFormat::pass, g.numel(),
                    dx.data_ptr<float>());
  return dx;
}

/// torch.fake_quantize_per_tensor_affine's semantics and bits: y =
/// (clamp(nearbyint(x·(1/scale)) + zero_point, qmin, qmax) - zero_point)·scale,
/// dx = dy where the unclamped level lies within [qmin, qmax].
class PerTensorAffine : public torch::autograd::Function<PerTensorAffine> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, double scale,
                        std::int64_t zero_point, std::int64_t quant_min, std::int64_t quant_max) {
    check_float_cpu(x, "x");
    const Tensor s = at::full({1}, scale, at::TensorOptions().dtype(at::kFloat));
    const Tensor z = at::full({1}, zero_point, at::TensorOptions().dtype(at::kInt));
    Tensor mask;
    Tensor y =
        affine_forward(x, s, z, ChannelLayout::per_tensor(x.numel()),
                       AffineQuant{static_cast<int>(quant_min), static_cast<int>(quant_max)}, mask);
    ctx->save_for_backward({mask});
    return y;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const Tensor dx = ste(grads[0], ctx->get_saved_variables()[0]);
    return {dx, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

/// torch.fake_quantize_per_channel_affine's semantics and bits, one scale
/// and zero point per index of `axis`.
class PerChannelAffine : public torch::autograd::Function<PerChannelAffine> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& scale,
                        const Tensor& zero_point, std::int64_t axis, std::int64_t quant_min,
                        std::int64_t quant_max) {
    check_float_cpu(x, "x");
    TORCH_CHECK(axis >= 0 && axis < x.dim(), "axis ", axis, " is outside 0..", x.dim() - 1);
    TORCH_CHECK(scale.dim() == 1 && scale.numel() == x.size(axis), "scale must hold ", x.size(axis),
                " values (x.size(axis))");
    TORCH_CHECK(zero_point.dim() == 1 && zero_point.numel() == x.size(axis),
                "zero_point must hold ", x.size(axis), " values (x.size(axis))");
    Tensor mask;
    Tensor y = affine_forward(
        x, scale, zero_point, ChannelLayout::per_channel(shape_of(x), static_cast<int>(axis)),
        AffineQuant{static_cast<int>(quant_min), static_cast<int>(quant_max)}, mask);
    ctx->save_for_backward({mask});
    return y;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const Tensor dx = ste(grads[0], ctx->get_saved_variables()[0]);
    return {dx, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

/// TensorFlow's range fake quant with its gradients: FakeQuantWithMinMaxVars
/// (one range: min and max hold one value) and
/// FakeQuantWithMinMaxVarsPerChannel (a range per index of `axis`; TensorFlow
/// takes the last), bit for bit, outputs and dx, d_min, d_max.
class Range : public torch::autograd::Function<Range> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& min, const Tensor& max,
                        std::int64_t axis, std::int64_t num_bits, bool narrow_range) {
    check_float_cpu(x, "x");
    const bool per_tensor = axis == kPerTensor;
    TORCH_CHECK(per_tensor || (axis >= 0 && axis < x.dim()), "axis ", axis, " is outside 0..",
                x.dim() - 1);
    const std::int64_t channels = per_tensor ? 1 : x.size(axis);
    TORCH_CHECK(min.numel() == channels && max.numel() == channels, "min and max must hold ",
                channels, per_tensor ? " value" : " values (x.size(axis))");
    const ChannelLayout layout = layout_of(shape_of(x), axis);
    const Tensor xc = x.contiguous();
    const Tensor lo = min.detach().to(at::kFloat).contiguous();
    const Tensor hi = max.detach().to(at::kFloat).contiguous();
    Tensor y = at::empty_like(xc);
    Tensor mask = at::empty({mask_words(layout.size(), MaskFormat::sides)},
                            at::TensorOptions().dtype(at::kInt));
    translating_errors("fake_quant_range", [&] {
      cpu::fake_quant_range(xc.data_ptr<float>(), y.data_ptr<float>(), layout, lo.data_ptr<float>(),
                            hi.data_ptr<float>(),
                            RangeQuant{static_cast<int>(num_bits), narrow_range}, mask_data(mask),
                            MaskFormat::sides);
    });
    ctx->save_for_backward({mask, min, max});
    ctx->saved_data["axis"] = axis;
    ctx->saved_data["shape"] = x.sizes();
    return y;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const tensor_list saved = ctx->get_saved_variables();
    Tensor mask = saved[0];
    const ChannelLayout layout =
        layout_of(ctx->saved_data["shape"].toIntVector(), ctx->saved_data["axis"].toInt());
    const Tensor dy = grads[0].to(at::kFloat).contiguous();
    Tensor dx = at::empty_like(dy);
    Tensor d_min = at::empty({layout.channels}, dy.options());
    Tensor d_max = at::empty({layout.channels}, dy.options());
    Tensor workspace = new_workspace(layout);
    cpu::ste_backward_range(dy.data_ptr<float>(), mask_data(mask), layout, dx.data_ptr<float>(),
                            d_min.data_ptr<float>(), d_max.data_ptr<float>(),
                            workspace_of(workspace));
    return {dx,      d_min.view(saved[1].sizes()), d_max.view(saved[2].sizes()), Tensor(), Tensor(),
            Tensor()};
  }
};

Tensor fake_quant_range(const Tensor& x, const Tensor& min, const Tensor& max,
                        std::int64_t num_bits, bool narrow_range) {
  return Range::apply(x, min, max, kPerTensor, num_bits, narrow_range);
}

Tensor fake_quant_range_per_channel(const Tensor& x, const Tensor& min, const Tensor& max,
                                    std::int64_t axis, std::int64_t num_bits, bool narrow_range) {
  TORCH_CHECK(axis != kPerTensor, "axis must be a dimension of x");
  return Range::apply(x, min, max, axis, num_bits, narrow_range);
}

/// The learned step size quantizer (LSQ, Esser et al. 2019): y =
/// clamp(round_half_even(x/s), qmin, qmax)·s, the forward of
/// torch._fake_quantize_learnable_per_*_affine with zero point 0 bit for bit;
/// dx = dy strictly inside the grid, and d_scale scaled by LSQ's gradient
/// scale 1/sqrt(elements per scale · qmax) (docs/numerics.md).
class Lsq : public torch::autograd::Function<Lsq> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& scale,
                        std::int64_t axis, std::int64_t quant_min, std::int64_t quant_max) {
    check_float_cpu(x, "x");
    TORCH_CHECK(axis == kPerTensor || (axis >= 0 && axis < x.dim()), "axis ", axis,
                " is outside 0..", x.dim() - 1);
    const ChannelLayout layout = layout_of(shape_of(x), axis);
    TORCH_CHECK(scale.numel() == layout.channels, "scale must hold ", layout.channels,
                axis == kPerTensor ? " value" : " values (x.size(axis))");
    const Tensor xc = x.contiguous();
    const Tensor s = scale.detach().to(at::kFloat).contiguous();
    Tensor y = at::empty_like(xc);
    translating_errors("lsq_fake_quant", [&] {
      cpu::lsq_forward(xc.data_ptr<float>(), y.data_ptr<float>(), layout, s.data_ptr<float>(),
                       LsqQuant{static_cast<int>(quant_min), static_cast<int>(quant_max)});
    });
    ctx->save_for_backward({xc, scale});
    ctx->saved_data["axis"] = axis;
    ctx->saved_data["quant_min"] = quant_min;
    ctx->saved_data["quant_max"] = quant_max;
    return y;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const tensor_list saved = ctx->get_saved_variables();
    const Tensor& x = saved[0];
    const ChannelLayout layout = layout_of(shape_of(x), ctx->saved_data["axis"].toInt());
    const LsqQuant quant{static_cast<int>(ctx->saved_data["quant_min"].toInt()),
                         static_cast<int>(ctx->saved_data["quant_max"].toInt())};
    const Tensor s = saved[1].detach().to(at::kFloat).contiguous();
    const Tensor dy = grads[0].to(at::kFloat).contiguous();
    Tensor dx = at::empty_like(dy);
    Tensor d_scale = at::empty({layout.channels}, dy.options());
    Tensor workspace = new_workspace(layout);
    cpu::lsq_backward(dy.data_ptr<float>(), x.data_ptr<float>(), layout, s.data_ptr<float>(), quant,
                      dx.data_ptr<float>(), d_scale.data_ptr<float>(), workspace_of(workspace));
    return {dx, d_scale.view(saved[1].sizes()), Tensor(), Tensor(), Tensor()};
  }
};

Tensor lsq_fake_quant(const Tensor& x, const Tensor& scale, std::int64_t quant_min,
                      std::int64_t quant_max) {
  return Lsq::apply(x, scale, kPerTensor, quant_min, quant_max);
}

Tensor lsq_fake_quant_per_channel(const Tensor& x, const Tensor& scale, std::int64_t axis,
                                  std::int64_t quant_min, std::int64_t quant_max) {
  TORCH_CHECK(axis != kPerTensor, "axis must be a dimension of x");
  return Lsq::apply(x, scale, axis, quant_min, quant_max);
}

Tensor fake_quant_per_tensor_affine(const Tensor& x, double scale, std::int64_t zero_point,
                                    std::int64_t quant_min, std::int64_t quant_max) {
  return PerTensorAffine::apply(x, scale, zero_point, quant_min, quant_max);
}

Tensor fake_quant_per_channel_affine(const Tensor& x, const Tensor& scale, const Tensor& zero_point,
                                     std::int64_t axis, std::int64_t quant_min,
                                     std::int64_t quant_max) {
  return PerChannelAffine::apply(x, scale, zero_point, axis, quant_min, quant_max);
}

}  // namespace

TORCH_LIBRARY(lowbit, m) {
  m.def(
      "fake_quant_per_tensor_affine(Tensor x, float scale, int zero_point, int quant_min, "
      "int quant_max) -> Tensor",
      &fake_quant_per_tensor_affine);
  m.def(
      "fake_quant_per_channel_affine(Tensor x, Tensor scale, Tensor zero_point, int axis, "
      "int quant_min, int quant_max) -> Tensor",
      &fake_quant_per_channel_affine);
  m.def(
      "fake_quant_range(Tensor x, Tensor min, Tensor max, int num_bits=8, "
      "bool narrow_range=False) -> Tensor",
      &fake_quant_range);
  m.def(
      "fake_quant_range_per_channel(Tensor x, Tensor min, Tensor max, int axis, "
      "int num_bits=8, bool narrow_range=False) -> Tensor",
      &fake_quant_range_per_channel);
  m.def("lsq_fake_quant(Tensor x, Tensor scale, int quant_min, int quant_max) -> Tensor",
        &lsq_fake_quant);
  m.def(
      "lsq_fake_quant_per_channel(Tensor x, Tensor scale, int axis, int quant_min, "
      "int quant_max) -> Tensor",
      &lsq_fake_quant_per_channel);
}

}  // namespace lowbit::torch_ops
