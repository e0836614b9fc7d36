// lowbit's quantizers as PyTorch operators (torch.ops.lowbit.*), with
// autograd through the 1-bit mask the forward saves. kernels.hpp runs them on
// the tensors' device; each op states which torch or TensorFlow op it equals
// bit for bit.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "kernels.hpp"
#include "lowbit/types.hpp"

namespace lowbit::torch_ops {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

void check_axis(const Tensor& x, std::int64_t axis) {
  TORCH_CHECK(axis == kPerTensor || (axis >= 0 && axis < x.dim()), "axis ", axis, " is outside 0..",
              x.dim() - 1);
}

AffineQuant grid(std::int64_t quant_min, std::int64_t quant_max) {
  return {static_cast<int>(quant_min), static_cast<int>(quant_max)};
}

/// The backward of an op whose one gradient is x's straight-through one, from
/// the mask its forward saved first; `inputs` counts the forward's arguments.
tensor_list x_gradient_only(AutogradContext* ctx, const tensor_list& grads, std::size_t inputs) {
  tensor_list gradients(inputs);
  gradients[0] = ste_backward(grads[0], ctx->get_saved_variables()[0]);
  return gradients;
}

/// torch.fake_quantize_per_tensor_affine's semantics and bits: y =
/// (clamp(nearbyint(x·(1/scale)) + zero_point, qmin, qmax) - zero_point)·scale,
/// dx = dy where the unclamped level lies within [qmin, qmax].
class PerTensorAffine : public torch::autograd::Function<PerTensorAffine> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, double scale,
                        std::int64_t zero_point, std::int64_t quant_min, std::int64_t quant_max) {
    check_elements(x, "x");
    const Tensor s = at::full({1}, scale, x.options().dtype(at::kFloat));
    const Tensor z = at::full({1}, zero_point, x.options().dtype(at::kInt));
    Tensor mask;
    Tensor y = fake_quant_affine(x, ChannelLayout::per_tensor(x.numel()), s, z,
                                 grid(quant_min, quant_max), mask);
    ctx->save_for_backward({mask});
    return y;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    return x_gradient_only(ctx, grads, 5);
  }
};

/// torch.fake_quantize_per_channel_affine's semantics and bits, one scale
/// and zero point per index of `axis`.
class PerChannelAffine : public torch::autograd::Function<PerChannelAffine> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& scale,
                        const Tensor& zero_point, std::int64_t axis, std::int64_t quant_min,
                        std::int64_t quant_max) {
    check_elements(x, "x");
    TORCH_CHECK(axis >= 0 && axis < x.dim(), "axis ", axis, " is outside 0..", x.dim() - 1);
    TORCH_CHECK(scale.dim() == 1 && scale.numel() == x.size(axis), "scale must hold ", x.size(axis),
                " values (x.size(axis))");
    TORCH_CHECK(zero_point.dim() == 1 && zero_point.numel() == x.size(axis),
                "zero_point must hold ", x.size(axis), " values (x.size(axis))");
    TORCH_CHECK(!at::isFloatingType(zero_point.scalar_type()),
                "zero_point must be an integer tensor (int32), got ", zero_point.scalar_type(),
                ": torch's floating zero points round x/scale + zero_point, another grid");
    Tensor mask;
    Tensor y = fake_quant_affine(x, layout_of(shape_of(x), axis), scale, zero_point,
                                 grid(quant_min, quant_max), mask);
    ctx->save_for_backward({mask});
    return y;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    return x_gradient_only(ctx, grads, 6);
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
    check_elements(x, "x");
    check_axis(x, axis);
    const ChannelLayout layout = layout_of(shape_of(x), axis);
    TORCH_CHECK(min.numel() == layout.channels && max.numel() == layout.channels,
                "min and max must hold ", layout.channels,
                axis == kPerTensor ? " value" : " values (x.size(axis))");
    Tensor mask;
    Tensor y = fake_quant_range(x, layout, min, max,
                                RangeQuant{static_cast<int>(num_bits), narrow_range}, mask);
    ctx->save_for_backward({mask, min, max});
    ctx->saved_data["axis"] = axis;
    ctx->saved_data["shape"] = x.sizes();
    return y;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const tensor_list saved = ctx->get_saved_variables();
    const ChannelLayout layout =
        layout_of(ctx->saved_data["shape"].toIntVector(), ctx->saved_data["axis"].toInt());
    const std::vector<Tensor> g = ste_backward_range(grads[0], saved[0], layout);
    return {g[0],    g[1].view(saved[1].sizes()), g[2].view(saved[2].sizes()), Tensor(), Tensor(),
            Tensor()};
  }
};

/// TensorFlow's weight quantization (tf.contrib.quantize, lowbit's weight
/// FakeQuant): the range of the weights themselves per channel of `axis` (or
/// of the whole tensor), symmetric [-max|w|, max|w|] or [min(w), max(w)],
/// then FakeQuantWithMinMaxVars(PerChannel). group_size > 0 gives each run
/// of group_size consecutive elements along the last dimension its own range
/// instead. dx = dy inside the range; the range takes no gradient.
class Weights : public torch::autograd::Function<Weights> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& w, std::int64_t num_bits,
                        bool narrow_range, bool symmetric, std::int64_t axis,
                        std::int64_t group_size) {
    check_elements(w, "w");
    check_axis(w, axis);
    ChannelLayout layout = layout_of(shape_of(w), axis);
    if (group_size > 0) {
      TORCH_CHECK(w.dim() >= 1 && w.size(-1) % group_size == 0, "group_size ", group_size,
                  " must divide the last dimension of w (", w.dim() ? w.size(-1) : 0, ")");
      layout = {1, w.numel() / group_size, group_size};
    }
    Tensor mask;
    Tensor y = fake_quant_weights(w, layout, RangeQuant{static_cast<int>(num_bits), narrow_range},
                                  symmetric, mask);
    ctx->save_for_backward({mask});
    return y;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    return x_gradient_only(ctx, grads, 6);
  }
};

/// TensorFlow's activation quantization: an EMA of each batch's min and max
/// (debiased, in `state`, updated in place on x's device without a host
/// sync) and FakeQuantWithMinMaxVars with it. dx = dy inside the range.
class Ema : public torch::autograd::Function<Ema> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, Tensor state, std::int64_t num_bits,
                        bool narrow_range, double decay, bool lagged, std::int64_t quant_delay,
                        std::int64_t freeze_step) {
    check_elements(x, "x");
    EmaConfig config;
    config.quant = RangeQuant{static_cast<int>(num_bits), narrow_range};
    config.decay = static_cast<float>(decay);
    config.mode = lagged ? EmaMode::lagged : EmaMode::exact;
    config.quant_delay = quant_delay;
    config.freeze_step = freeze_step < 0 ? kNeverFreeze : freeze_step;
    Tensor mask;
    Tensor y = ema_fake_quant(x, state, config, mask);
    ctx->save_for_backward({mask});
    return y;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    return x_gradient_only(ctx, grads, 8);
  }
};

/// The learned step size quantizer (LSQ, Esser et al. 2019): y =
/// clamp(round_half_even(x/s), qmin, qmax)·s, the forward of
/// torch._fake_quantize_learnable_per_*_affine with zero point 0 bit for bit;
/// dx = dy strictly inside the grid, and d_scale scaled by LSQ's gradient
/// scale 1/sqrt(elements per scale · qmax) (docs/numerics.md).
class Lsq : public torch::autograd::Function<Lsq> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& scale,
                        std::int64_t axis, std::int64_t quant_min, std::int64_t quant_max) {
    check_elements(x, "x");
    check_axis(x, axis);
    const ChannelLayout layout = layout_of(shape_of(x), axis);
    TORCH_CHECK(scale.numel() == layout.channels, "scale must hold ", layout.channels,
                axis == kPerTensor ? " value" : " values (x.size(axis))");
    const Tensor xc = x.contiguous();
    Tensor y = lsq_forward(xc, layout, scale, grid(quant_min, quant_max));
    ctx->save_for_backward({xc, scale});
    ctx->saved_data["axis"] = axis;
    ctx->saved_data["quant_min"] = quant_min;
    ctx->saved_data["quant_max"] = quant_max;
    return y;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const tensor_list saved = ctx->get_saved_variables();
    const Tensor& x = saved[0];
    const std::vector<Tensor> g = lsq_backward(
        grads[0], x, layout_of(shape_of(x), ctx->saved_data["axis"].toInt()), saved[1],
        grid(ctx->saved_data["quant_min"].toInt(), ctx->saved_data["quant_max"].toInt()));
    return {g[0], g[1].view(saved[1].sizes()), Tensor(), Tensor(), Tensor()};
  }
};

Tensor fake_quant_per_tensor_affine_op(const Tensor& x, double scale, std::int64_t zero_point,
                                       std::int64_t quant_min, std::int64_t quant_max) {
  return PerTensorAffine::apply(x, scale, zero_point, quant_min, quant_max);
}

Tensor fake_quant_per_channel_affine_op(const Tensor& x, const Tensor& scale,
                                        const Tensor& zero_point, std::int64_t axis,
                                        std::int64_t quant_min, std::int64_t quant_max) {
  return PerChannelAffine::apply(x, scale, zero_point, axis, quant_min, quant_max);
}

Tensor fake_quant_range_op(const Tensor& x, const Tensor& min, const Tensor& max,
                           std::int64_t num_bits, bool narrow_range) {
  return Range::apply(x, min, max, kPerTensor, num_bits, narrow_range);
}

Tensor fake_quant_range_per_channel_op(const Tensor& x, const Tensor& min, const Tensor& max,
                                       std::int64_t axis, std::int64_t num_bits,
                                       bool narrow_range) {
  TORCH_CHECK(axis != kPerTensor, "axis must be a dimension of x");
  return Range::apply(x, min, max, axis, num_bits, narrow_range);
}

Tensor fake_quant_weights_op(const Tensor& w, std::int64_t num_bits, bool narrow_range,
                             bool symmetric, std::int64_t axis, std::int64_t group_size) {
  return Weights::apply(w, num_bits, narrow_range, symmetric, axis, group_size);
}

Tensor ema_fake_quant_op(const Tensor& x, Tensor state, std::int64_t num_bits, bool narrow_range,
                         double decay, bool lagged, std::int64_t quant_delay,
                         std::int64_t freeze_step) {
  return Ema::apply(x, state, num_bits, narrow_range, decay, lagged, quant_delay, freeze_step);
}

Tensor new_ema_state_op(at::Device device) { return new_ema_state(device); }

Tensor lsq_fake_quant_op(const Tensor& x, const Tensor& scale, std::int64_t quant_min,
                         std::int64_t quant_max) {
  return Lsq::apply(x, scale, kPerTensor, quant_min, quant_max);
}

Tensor lsq_fake_quant_per_channel_op(const Tensor& x, const Tensor& scale, std::int64_t axis,
                                     std::int64_t quant_min, std::int64_t quant_max) {
  TORCH_CHECK(axis != kPerTensor, "axis must be a dimension of x");
  return Lsq::apply(x, scale, axis, quant_min, quant_max);
}

Tensor lsq_init_scale_op(const Tensor& x, std::int64_t axis, std::int64_t quant_min,
                         std::int64_t quant_max) {
  check_elements(x, "x");
  check_axis(x, axis);
  return lsq_init_scale(x, layout_of(shape_of(x), axis), grid(quant_min, quant_max));
}

}  // namespace

TORCH_LIBRARY(lowbit, m) {
  m.def(
      "fake_quant_per_tensor_affine(Tensor x, float scale, int zero_point, int quant_min, "
      "int quant_max) -> Tensor",
      &fake_quant_per_tensor_affine_op);
  m.def(
      "fake_quant_per_channel_affine(Tensor x, Tensor scale, Tensor zero_point, int axis, "
      "int quant_min, int quant_max) -> Tensor",
      &fake_quant_per_channel_affine_op);
  m.def(
      "fake_quant_range(Tensor x, Tensor min, Tensor max, int num_bits=8, "
      "bool narrow_range=False) -> Tensor",
      &fake_quant_range_op);
  m.def(
      "fake_quant_range_per_channel(Tensor x, Tensor min, Tensor max, int axis, "
      "int num_bits=8, bool narrow_range=False) -> Tensor",
      &fake_quant_range_per_channel_op);
  m.def(
      "fake_quant_weights(Tensor w, int num_bits=8, bool narrow_range=True, bool symmetric=True, "
      "int axis=0, int group_size=0) -> Tensor",
      &fake_quant_weights_op);
  m.def(
      "ema_fake_quant(Tensor x, Tensor(a!) state, int num_bits=8, bool narrow_range=False, "
      "float decay=0.999, bool lagged=False, int quant_delay=0, int freeze_step=-1) -> Tensor",
      &ema_fake_quant_op);
  m.def("new_ema_state(Device device) -> Tensor", &new_ema_state_op);
  m.def("lsq_fake_quant(Tensor x, Tensor scale, int quant_min, int quant_max) -> Tensor",
        &lsq_fake_quant_op);
  m.def(
      "lsq_fake_quant_per_channel(Tensor x, Tensor scale, int axis, int quant_min, "
      "int quant_max) -> Tensor",
      &lsq_fake_quant_per_channel_op);
  m.def("lsq_init_scale(Tensor x, int axis, int quant_min, int quant_max) -> Tensor",
        &lsq_init_scale_op);
}

}  // namespace lowbit::torch_ops
