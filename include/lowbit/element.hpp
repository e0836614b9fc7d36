// The element math that decides every result: nudging, rounding, clamping,
// the STE masks and the EMA step. The CPU reference and the CUDA kernels both
// call these functions, so they agree bit for bit and CPU tests cover the
// GPU's arithmetic. (Both sides are built without FMA contraction.)
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "lowbit/types.hpp"

namespace lowbit {

/// Finite and not NaN, without relying on library isfinite overloads.
LOWBIT_HD bool is_finite(float v) { return fabsf(v) <= FLT_MAX; }

/// Round half away from zero (std::round), used for the nudged zero point.
LOWBIT_HD float round_half_away(float v) { return roundf(v); }

/// Round half to even (nearbyint in the default rounding mode).
LOWBIT_HD float round_half_even(float v) { return rintf(v); }

// ---------------------------------------------------------------------------
// Range mode (TensorFlow)

/// A nudged range. scale == 0 marks a zero-width (or invalid) range, which
/// maps every input to 0 and passes every gradient.
struct RangeParams {
  float nudged_min = 0.0f;
  float nudged_max = 0.0f;
  float scale = 0.0f;
  float inv_scale = 0.0f;
  float quant_zero = 0.0f;  ///< floor(-nudged_min·inv_scale + 0.5)
};

/// Nudges [min, max] so that 0 falls on the integer grid [qmin, qmax].
/// min == max, a non-finite bound, or min > max give the zero-width range
/// (device-side sanitising; the host API rejects the last two).
LOWBIT_HD RangeParams nudge_range(float min, float max, int qmin, int qmax) {
  RangeParams p;
  if (!(is_finite(min) && is_finite(max) && min < max)) return p;
  const float qmin_f = static_cast<float>(qmin);
  const float qmax_f = static_cast<float>(qmax);
  const float scale = (max - min) / (qmax_f - qmin_f);
  // TensorFlow recomputes the inverse rather than taking 1/scale.
  const float inv_scale = (qmax_f - qmin_f) / (max - min);
  if (!(scale > 0.0f && is_finite(scale) && is_finite(inv_scale))) return p;
  const float zero_point_from_min = qmin_f - min / scale;
  const float nudged_zero_point = zero_point_from_min < qmin_f   ? qmin_f
                                  : zero_point_from_min > qmax_f ? qmax_f
                                                                 : round_half_away(zero_point_from_min);
  p.scale = scale;
  p.inv_scale = inv_scale;
  p.nudged_min = (qmin_f - nudged_zero_point) * scale;
  p.nudged_max = (qmax_f - nudged_zero_point) * scale;
  p.quant_zero = floorf(-p.nudged_min * inv_scale + 0.5f);
  return p;
}

/// y = (floor((clamp(x) - nudged_min)·inv_scale + 0.5) - quant_zero)·scale.
/// Ties round up; 0 maps to exactly 0; NaN stays NaN; ±Inf clamp.
LOWBIT_HD float fake_quant(float x, const RangeParams& p) {
  if (x != x) return x;
  if (p.scale == 0.0f) return 0.0f;
  const float clamped = fminf(fmaxf(x, p.nudged_min), p.nudged_max);
  return (floorf((clamped - p.nudged_min) * p.inv_scale + 0.5f) - p.quant_zero) * p.scale;
}

/// STE pass bit: nudged_min <= x <= nudged_max (inclusive; false for NaN).
LOWBIT_HD bool ste_pass(float x, const RangeParams& p) {
  if (p.scale == 0.0f) return x == x;
  return x >= p.nudged_min && x <= p.nudged_max;
}

/// MaskFormat::sides plane 0: x >= nudged_min.
LOWBIT_HD bool at_or_above_min(float x, const RangeParams& p) {
  return p.scale == 0.0f ? x == x : x >= p.nudged_min;
}

/// MaskFormat::sides plane 1: x <= nudged_max.
LOWBIT_HD bool at_or_below_max(float x, const RangeParams& p) {
  return p.scale == 0.0f ? x == x : x <= p.nudged_max;
}

// ---------------------------------------------------------------------------
// Affine mode (PyTorch)

struct AffineParams {
  float scale = 1.0f;
  float inv_scale = 1.0f;  ///< 1.0f / scale, as PyTorch computes it
  float zero_point = 0.0f;
  float qmin = 0.0f;
  float qmax = 255.0f;
};

/// Device-side sanitising: a zero point outside [qmin, qmax] is clamped into
/// it (the host API rejects it instead).
LOWBIT_HD AffineParams make_affine(float scale, std::int32_t zero_point, int qmin, int qmax) {
  AffineParams p;
  p.scale = scale;
  p.inv_scale = 1.0f / scale;
  p.qmin = static_cast<float>(qmin);
  p.qmax = static_cast<float>(qmax);
  const float zp = static_cast<float>(zero_point);
  p.zero_point = fminf(fmaxf(zp, p.qmin), p.qmax);
  return p;
}

/// The unclamped integer q = nearbyint(x·inv_scale) + zero_point, as a float.
LOWBIT_HD float affine_q(float x, const AffineParams& p) {
  return round_half_even(x * p.inv_scale) + p.zero_point;
}

/// y = (clamp(q, qmin, qmax) - zero_point)·scale. NaN stays NaN.
LOWBIT_HD float fake_quant(float x, const AffineParams& p) {
  if (x != x) return x;
  const float q = fminf(fmaxf(affine_q(x, p), p.qmin), p.qmax);
  return (q - p.zero_point) * p.scale;
}

/// STE pass bit: qmin <= q <= qmax.
LOWBIT_HD bool ste_pass(float x, const AffineParams& p) {
  const float q = affine_q(x, p);
  return q >= p.qmin && q <= p.qmax;
}

// ---------------------------------------------------------------------------
// LSQ (learned step size)

struct LsqParams {
  float scale = 1.0f;  ///< max(s, kLsqMinScale)
  float inv_scale = 1.0f;
  float qmin = 0.0f;
  float qmax = 255.0f;
};

LOWBIT_HD LsqParams make_lsq(float scale, int qmin, int qmax) {
  LsqParams p;
  p.scale = fmaxf(scale, kLsqMinScale);  // fmaxf(NaN, eps) is eps
  p.inv_scale = 1.0f / p.scale;
  p.qmin = static_cast<float>(qmin);
  p.qmax = static_cast<float>(qmax);
  return p;
}

/// y = clamp(round_half_even(x/s), qmin, qmax)·s, with x/s taken as x·(1/s).
LOWBIT_HD float fake_quant(float x, const LsqParams& p) {
  if (x != x) return x;
  const float q = fminf(fmaxf(round_half_even(x * p.inv_scale), p.qmin), p.qmax);
  return q * p.scale;
}

/// dx = dy where qmin <= x/s <= qmax.
LOWBIT_HD bool ste_pass(float x, const LsqParams& p) {
  const float v = x * p.inv_scale;
  return v >= p.qmin && v <= p.qmax;
}

/// Per-element d_scale term before the gradient scale g: dy·(round(v) - v)
/// inside, dy·qmin below, dy·qmax above, 0 for NaN.
LOWBIT_HD float lsq_scale_grad_term(float x, float dy, const LsqParams& p) {
  const float v = x * p.inv_scale;
  if (v < p.qmin) return dy * p.qmin;
  if (v > p.qmax) return dy * p.qmax;
  if (v >= p.qmin) return dy * (round_half_even(v) - v);
  return 0.0f;
}

/// LSQ's initial step size from a channel's sum of |x| over `count` elements:
/// 2·mean|x|/sqrt(qmax), kept positive.
LOWBIT_HD float lsq_initial_scale(float sum_abs, std::int64_t count, int qmax) {
  const float mean = sum_abs / static_cast<float>(count);
  return fmaxf(2.0f * mean / sqrtf(static_cast<float>(qmax)), kLsqMinScale);
}

// ---------------------------------------------------------------------------
// Range estimation

/// Min and max that propagate NaN (so a NaN batch is seen as non-finite).
LOWBIT_HD float min_nan(float a, float b) { return (a != a || a < b) ? a : b; }
LOWBIT_HD float max_nan(float a, float b) { return (a != a || a > b) ? a : b; }

/// One EMA observer step with a batch's min(x) and max(x). Mathematically the
/// zero-debiased EMA biased_t/(1 - d^t); written as the equivalent update
/// ema += (v - ema)·(1-d)/(1-d^t), whose weight is exactly 1 at the first
/// update, so step 1 yields the batch range bit for bit.
LOWBIT_HD void ema_range_step(EmaRangeState& s, float batch_min, float batch_max,
                              const EmaConfig& cfg) {
  const std::int64_t call = s.steps++;
  if (call >= cfg.freeze_step) return;
  if (!(is_finite(batch_min) && is_finite(batch_max))) {
    ++s.skipped;
    return;
  }
  const float v_min = batch_min < 0.0f ? batch_min : 0.0f;
  const float v_max = batch_max > 0.0f ? batch_max : 0.0f;
  s.decay_pow *= cfg.decay;
  const float weight = (1.0f - cfg.decay) / (1.0f - s.decay_pow);
  s.min += (v_min - s.min) * weight;
  s.max += (v_max - s.max) * weight;
  ++s.updates;
}

/// Whether call number `call` of an EMA op quantizes (false: identity), given
/// the state it quantizes with.
LOWBIT_HD bool ema_quantizes(const EmaRangeState& s, std::int64_t call, const EmaConfig& cfg) {
  return call >= cfg.quant_delay && s.updates > 0;
}

}  // namespace lowbit
