#include "nn/layers/layers.hpp"

namespace lowbit {
namespace {

std::int64_t element_count(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (const std::int64_t d : shape) n *= d;
  return n;
}

}  // namespace

AffineQuant affine_grid(const FakeQuantAttrs& a) {
  // LSQ steps have no zero point, so LSQ weights are always on a signed grid.
  const bool is_signed = a.weights ? a.symmetric || a.range == RangeMode::lsq : a.is_signed;
  if (!is_signed) return AffineQuant::unsigned_bits(a.bits);
  AffineQuant q = AffineQuant::signed_bits(a.bits);
  if (a.narrow_range) q.qmin += 1;
  return q;
}

FakeQuantLayer::FakeQuantLayer(std::string name, Backend& backend, const FakeQuantAttrs& attrs,
                               const std::vector<std::int64_t>& shape, Binding x, Binding y,
                               Binding scale, EmaRangeState* state, const std::int64_t* steps_done,
                               ClipCount* clips)
    : Layer(std::move(name), backend),
      attrs_(attrs),
      layout_(attrs.weights ? weight_layout(attrs, shape)
                            : ChannelLayout::per_tensor(element_count(shape))),
      x_(x),
      y_(y),
      scale_(scale),
      steps_done_(steps_done),
      clips_(clips) {
  expect(x.value && y.value && y.grad, "unbound tensor");
  expect(!attrs.weights || attrs.quant_delay == 0 || steps_done != nullptr,
         "a delayed weight quantizer needs the step count");
  const std::size_t channels = static_cast<std::size_t>(layout_.channels);
  const bool lsq = attrs.range == RangeMode::lsq;
  if (lsq) {
    expect(scale.value && scale.grad, "an lsq quantizer needs its scale parameter");
  } else {
    mask_ = backend.allocate(static_cast<std::size_t>(mask_words(layout_.size())) * 4);
  }
  if (!attrs.weights && !lsq) ema_ = std::make_unique<EmaRange>(backend, attrs, state);
  if (attrs.weights && !lsq) range_ = backend.allocate(2 * channels * sizeof(float));
  if (attrs.weights || lsq) workspace_ = backend.allocate(reduction_workspace_bytes(layout_));
  if (attrs.rounding == Rounding::pytorch)
    affine_ = backend.allocate(channels * (sizeof(float) + sizeof(std::int32_t)));
}

void FakeQuantLayer::forward_impl(Pass pass) {
  if (attrs_.range == RangeMode::lsq) {
    forward_lsq(pass);
  } else if (attrs_.weights) {
    forward_weights();
  } else {
    forward_ema(pass);
  }
}

void FakeQuantLayer::forward_weights() {
  float* min = range_.as<float>();
  float* max = min + layout_.channels;
  auto* mask = mask_.as<std::uint32_t>();
  if (attrs_.rounding == Rounding::tensorflow) {
    backend_.fake_quant_weights(x_.value, y_.value, layout_, {attrs_.bits, attrs_.narrow_range},
                                attrs_.symmetric, min, max, mask, workspace_.as_workspace());
  } else {
    const AffineQuant grid = affine_grid(attrs_);
    auto* scale = affine_.as<float>();
    auto* zero_point = reinterpret_cast<std::int32_t*>(scale + layout_.channels);
    backend_.weight_range(x_.value, layout_, attrs_.symmetric, min, max,
                          workspace_.as_workspace());
    backend_.affine_params_from_range(min, max, layout_.channels, grid, attrs_.symmetric, scale,
                                      zero_point);
    backend_.fake_quant_affine(x_.value, y_.value, layout_, scale, zero_point, grid, mask, nullptr);
  }
  // TensorFlow's quant_delay holds back weights as well as activations. The
  // step count lives with the backend, so a replayed CUDA graph stays right.
  if (attrs_.quant_delay > 0)
    backend_.quant_delay_identity(x_.value, y_.value, layout_.size(), steps_done_,
                                  attrs_.quant_delay, mask);
}

void FakeQuantLayer::forward_ema(Pass pass) {
  const EmaRange::Use ema = ema_->for_pass(pass);
  auto* mask = mask_.as<std::uint32_t>();
  ClipCount* clips = pass == Pass::train ? clips_ : nullptr;
  const std::int64_t n = layout_.size();
  if (attrs_.rounding == Rounding::tensorflow) {
    backend_.ema_fake_quant(x_.value, y_.value, n, ema.state, ema.config, mask, clips);
    return;
  }
  // PyTorch's order: observe, then quantize with qparams of the updated range.
  const AffineQuant grid = affine_grid(attrs_);
  auto* scale = affine_.as<float>();
  auto* zero_point = reinterpret_cast<std::int32_t*>(scale + 1);
  backend_.ema_fake_quant(x_.value, y_.value, n, ema.state, ema.config, nullptr, nullptr);
  backend_.affine_params_from_range(&ema.state->min, &ema.state->max, 1, grid, false, scale,
                                    zero_point);
  backend_.fake_quant_affine(x_.value, y_.value, layout_, scale, zero_point, grid, mask, clips);
}

void FakeQuantLayer::forward_lsq(Pass pass) {
  const LsqQuant grid = affine_grid(attrs_);
  if (pass == Pass::calibrate)
    backend_.lsq_init_scale(x_.value, layout_, grid, scale_.value, workspace_.as_workspace());
  backend_.lsq_forward(x_.value, y_.value, layout_, scale_.value, grid,
                       pass == Pass::train ? clips_ : nullptr);
}

void FakeQuantLayer::backward_impl() {
  if (attrs_.range == RangeMode::lsq) {
    expect(x_.grad != nullptr, "an lsq quantizer needs its input gradient");
    backend_.lsq_backward(y_.grad, x_.value, layout_, scale_.value, affine_grid(attrs_), x_.grad,
                          scale_.grad, workspace_.as_workspace());
  } else if (x_.grad != nullptr) {
    backend_.ste_backward(y_.grad, mask_.as<std::uint32_t>(), MaskFormat::pass, layout_.size(),
                          x_.grad);
  }
}

}  // namespace lowbit
