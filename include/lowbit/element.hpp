// The element math that decides every result: nudging, rounding, clamping,
// the STE masks and the EMA step. The CPU reference and the CUDA kernels both
// call these functions, so they agree bit for bit and CPU tests cover the
// GPU's arithmetic. (Both sides are built without FMA contraction.)
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "lowbit/types.hpp"

namespace lowbit {

/// Finite and not NaN, without relying on library isfinite overloads.
LOWBIT_HD bool is_finite(float v) { return fabsf(v) <= FLT_MAX; }

/// Round half away from zero (std::round), used for the nudged zero point.
LOWBIT_HD float round_half_away(float v) { return roundf(v); }

/// Round half to even (nearbyint in the default rounding mode).
LOWBIT_HD float round_half_even(float v) { return rintf(v); }

/// v limited to [lo, hi] by explicit compares (lo <= hi): NaN stays NaN, and
/// a zero keeps its sign unless a bound replaces it. fminf/fmaxf are not used
/// anywhere in the element math: IEEE lets them return either zero for
/// (-0, +0), and the host and the device choose differently.
LOWBIT_HD float clamp_to(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

/// A subnormal v as a zero of its sign. TensorFlow's CPU kernels run with
/// denormals-are-zero and flush-to-zero set, so the range family does this to
/// its inputs, its range and its one intermediate that can be subnormal.
LOWBIT_HD float flush_subnormal(float v) { return fabsf(v) < FLT_MIN ? copysignf(0.0f, v) : v; }

/// The straight-through estimator's gradient: dy where the element passed,
/// otherwise dy·0, as TensorFlow's and PyTorch's dy·mask give it. A blocked
/// negative dy gives -0, and a blocked non-finite dy gives NaN.
LOWBIT_HD float ste_gradient(float dy, bool pass) { return pass ? dy : dy * 0.0f; }

// ---------------------------------------------------------------------------
// bf16 and fp16 elements
//
// The quantizer ops that take bf16 or fp16 tensors widen each element to
// float exactly, run the float math unchanged, and round the float result to
// the storage type once. The conversions are integer code, so the host and
// the device give the same bits without intrinsics.

/// The bits of a float (memcpy, defined on host and device).
LOWBIT_HD std::uint32_t float_bits(float v) {
  std::uint32_t u;
  memcpy(&u, &v, sizeof u);
  return u;
}

/// The float with bits u.
LOWBIT_HD float float_from_bits(std::uint32_t u) {
  float v;
  memcpy(&v, &u, sizeof v);
  return v;
}

/// The element as a float (float: itself), so templated code reads any
/// element type alike.
LOWBIT_HD float to_float(float v) { return v; }

/// Exact: bf16 is the top half of a float (NaN payloads kept).
LOWBIT_HD float to_float(bf16 h) { return float_from_bits(std::uint32_t{h.bits} << 16); }

/// Exact, subnormals included; Inf stays Inf and a NaN keeps its sign and
/// payload (in the top mantissa bits), quieted as torch's and F16C's
/// conversions do.
LOWBIT_HD float to_float(fp16 h) {
  const std::uint32_t sign = std::uint32_t{h.bits & 0x8000u} << 16;
  const std::uint32_t exponent = (h.bits >> 10) & 0x1fu;
  std::uint32_t mantissa = h.bits & 0x3ffu;
  if (exponent == 0x1fu) {
    const std::uint32_t quiet = mantissa != 0u ? 0x400000u : 0u;
    return float_from_bits(sign | 0x7f800000u | quiet | (mantissa << 13));
  }
  if (exponent != 0u) return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0u) return float_from_bits(sign);
  // Subnormal mantissa·2^-24: normalise so that bit 10 is the implicit one.
  std::uint32_t float_exponent = 113u;  // 2^-14, biased
  while ((mantissa & 0x400u) == 0u) {
    mantissa <<= 1;
    --float_exponent;
  }
  return float_from_bits(sign | (float_exponent << 23) | ((mantissa & 0x3ffu) << 13));
}

/// v rounded to bfloat16, to nearest with ties to even (finite values beyond
/// the largest bf16 round to ±Inf). Every NaN gives 0x7FC0, the quiet NaN of
/// c10's scalar conversion (c10::BFloat16), whatever its sign and payload, so
/// the host and the device, whose float NaNs differ, give the same bits.
LOWBIT_HD bf16 to_bf16(float v) {
  const std::uint32_t u = float_bits(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{0x7fc0u};
  return bf16{static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

/// v rounded to IEEE binary16, to nearest with ties to even: |v| >= 65520
/// (halfway past the largest finite, 65504) gives ±Inf, and values below
/// 2^-14 round to fp16 subnormals (|v| <= 2^-25 to ±0). Every NaN gives
/// 0x7E00, c10::Half's quiet NaN, whatever its sign and payload (c10 keeps a
/// negative NaN's sign, 0xFE00; lowbit does not, so that host and device
/// agree bit for bit).
LOWBIT_HD fp16 to_fp16(float v) {
  const std::uint32_t u = float_bits(v);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return fp16{0x7e00u};
  if (a >= 0x477ff000u) return fp16{static_cast<std::uint16_t>(sign | 0x7c00u)};
  if (a >= 0x38800000u) {  // normal: rebias the exponent, round off 13 bits
    const std::uint32_t r = a - 0x38000000u;
    return fp16{static_cast<std::uint16_t>(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13))};
  }
  const std::uint32_t exponent = a >> 23;
  if (exponent < 102u) return fp16{static_cast<std::uint16_t>(sign)};  // below 2^-25
  // Subnormal: the 24-bit significand in units of 2^-24, rounded.
  const std::uint32_t significand = (a & 0x7fffffu) | 0x800000u;
  const std::uint32_t shift = 126u - exponent;  // 14..24
  const std::uint32_t half = 1u << (shift - 1u);
  const std::uint32_t rest = significand & ((1u << shift) - 1u);
  std::uint32_t q = significand >> shift;
  if (rest > half || (rest == half && (q & 1u) != 0u)) ++q;
  return fp16{static_cast<std::uint16_t>(sign | q)};
}

/// v rounded once to the element type T: float (v itself), bf16 or fp16.
template <class T>
LOWBIT_HD T from_float(float v);
template <>
LOWBIT_HD float from_float<float>(float v) {
  return v;
}
template <>
LOWBIT_HD bf16 from_float<bf16>(float v) {
  return to_bf16(v);
}
template <>
LOWBIT_HD fp16 from_float<fp16>(float v) {
  return to_fp16(v);
}

// ---------------------------------------------------------------------------
// Range mode (TensorFlow)

/// A nudged range. scale == 0 marks a zero-width (or invalid) range, which
/// maps every input to +0 and passes every gradient.
struct RangeParams {
  float nudged_min = 0.0f;
  float nudged_max = 0.0f;
  float scale = 0.0f;
  float inv_scale = 0.0f;   ///< (qmax - qmin)/(max - min), recomputed as TensorFlow does
  float quant_zero = 0.0f;  ///< floor(-nudged_min·inv_scale + 0.5)
};

/// Nudges [min, max] so that 0 falls on the integer grid [qmin, qmax], as
/// TensorFlow's Nudge() does (subnormal bounds count as 0). min == max (0 or
/// not), a non-finite bound, min > max, or a scale that is not a normal float
/// give the zero-width range: device-side sanitising, since the host API
/// rejects the non-finite and reversed ones. (TensorFlow returns NaN for
/// min == max != 0; docs/numerics.md lists these differences.)
LOWBIT_HD RangeParams nudge_range(float min, float max, int qmin, int qmax) {
  RangeParams p;
  min = flush_subnormal(min);
  max = flush_subnormal(max);
  if (!(is_finite(min) && is_finite(max) && min < max)) return p;
  const float qmin_f = static_cast<float>(qmin);
  const float qmax_f = static_cast<float>(qmax);
  const float scale = (max - min) / (qmax_f - qmin_f);
  const float inv_scale = (qmax_f - qmin_f) / (max - min);
  if (!(scale >= FLT_MIN && is_finite(scale) && is_finite(inv_scale))) return p;
  const float zero_point_from_min = qmin_f - min / scale;
  const float nudged_zero_point = zero_point_from_min < qmin_f ? qmin_f
                                  : zero_point_from_min > qmax_f
                                      ? qmax_f
                                      : round_half_away(zero_point_from_min);
  p.scale = scale;
  p.inv_scale = inv_scale;
  p.nudged_min = (qmin_f - nudged_zero_point) * scale;
  p.nudged_max = (qmax_f - nudged_zero_point) * scale;
  p.quant_zero = floorf(-p.nudged_min * inv_scale + 0.5f);
  return p;
}

/// The integer level t of fake_quant(x): fake_quant(x) = t·scale exactly, t
/// in [-quant_zero, qmax - qmin - quant_zero] (an integer-valued float; NaN
/// for NaN; 0 in a zero-width range). The code of the grid is t + qmin +
/// quant_zero, its zero point qmin + quant_zero.
LOWBIT_HD float quant_level(float x, const RangeParams& p, RangeScaling scaling) {
  if (p.scale == 0.0f) return 0.0f;
  const float clamped = clamp_to(flush_subnormal(x), p.nudged_min, p.nudged_max);
  const float shifted = flush_subnormal(clamped - p.nudged_min);
  const float units = scaling == RangeScaling::divide ? shifted / p.scale : shifted * p.inv_scale;
  return floorf(units - p.quant_zero + 0.5f);
}

/// TensorFlow's range fake quant, with cs = clamp(x, nudged_min, nudged_max)
/// - nudged_min:
///   divide:   y = floor(cs / scale - quant_zero + 0.5)·scale
///   multiply: y = floor(cs·inv_scale - quant_zero + 0.5)·scale
/// Ties round up; a zero output is +0 (0 maps to exactly +0); NaN stays NaN;
/// ±Inf clamp to the ends; a zero-width range gives +0 for every x.
LOWBIT_HD float fake_quant(float x, const RangeParams& p, RangeScaling scaling) {
  if (p.scale == 0.0f) return 0.0f;
  return quant_level(x, p, scaling) * p.scale;
}

/// MaskFormat::sides plane 0: x >= nudged_min (on the flushed x; true for
/// every x in a zero-width range, as TensorFlow passes all there).
LOWBIT_HD bool at_or_above_min(float x, const RangeParams& p) {
  return p.scale == 0.0f || flush_subnormal(x) >= p.nudged_min;
}

/// MaskFormat::sides plane 1: x <= nudged_max.
LOWBIT_HD bool at_or_below_max(float x, const RangeParams& p) {
  return p.scale == 0.0f || flush_subnormal(x) <= p.nudged_max;
}

/// STE pass bit: nudged_min <= x <= nudged_max, inclusive at both ends and
/// false for NaN (both planes).
LOWBIT_HD bool ste_pass(float x, const RangeParams& p) {
  return at_or_above_min(x, p) && at_or_below_max(x, p);
}

/// Clipped: x lies beyond the nudged range, so the output saturates at an end
/// and the STE stops its gradient (never for NaN, nor in a zero-width range,
/// which passes everything).
LOWBIT_HD bool clips(float x, const RangeParams& p) { return x == x && !ste_pass(x, p); }

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
  p.zero_point = clamp_to(static_cast<float>(zero_point), p.qmin, p.qmax);
  return p;
}

/// The unclamped integer q = nearbyint(x·inv_scale) + zero_point, as a float.
/// Adding the zero point (an integer, never -0) turns rint's -0 into +0, as
/// PyTorch's integer arithmetic does.
LOWBIT_HD float affine_q(float x, const AffineParams& p) {
  return round_half_even(x * p.inv_scale) + p.zero_point;
}

/// The code clamp(q, qmin, qmax), as a float (NaN for NaN).
LOWBIT_HD float affine_code(float x, const AffineParams& p) {
  return clamp_to(affine_q(x, p), p.qmin, p.qmax);
}

/// y = (affine_code(x) - zero_point)·scale. A zero output is +0; NaN stays
/// NaN.
LOWBIT_HD float fake_quant(float x, const AffineParams& p) {
  if (x != x) return x;
  return (affine_code(x, p) - p.zero_point) * p.scale;
}

/// STE pass bit: qmin <= q <= qmax.
LOWBIT_HD bool ste_pass(float x, const AffineParams& p) {
  const float q = affine_q(x, p);
  return q >= p.qmin && q <= p.qmax;
}

/// Clipped: q lies beyond [qmin, qmax] (never for NaN).
LOWBIT_HD bool clips(float x, const AffineParams& p) { return x == x && !ste_pass(x, p); }

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
  p.scale = scale > kLsqMinScale ? scale : kLsqMinScale;  // NaN becomes the floor too
  p.inv_scale = 1.0f / p.scale;
  p.qmin = static_cast<float>(qmin);
  p.qmax = static_cast<float>(qmax);
  return p;
}

/// PyTorch's _fake_quantize_learnable_per_*_affine forward, which is affine
/// fake quant with zero point 0: y = clamp(round_half_even(x·(1/s)), qmin,
/// qmax)·s, a zero output +0.
LOWBIT_HD float fake_quant(float x, const LsqParams& p) {
  return fake_quant(x, AffineParams{p.scale, p.inv_scale, 0.0f, p.qmin, p.qmax});
}

/// Esser et al.'s data gradient: dx = dy strictly inside the grid, qmin <
/// x/s < qmax (the derivative of their clip); 0 at and beyond the ends and
/// for NaN. PyTorch decides by the rounded level instead (docs/numerics.md).
LOWBIT_HD bool lsq_passes(float x, const LsqParams& p) {
  const float v = x * p.inv_scale;
  return v > p.qmin && v < p.qmax;
}

/// Clipped: x/s lies beyond [qmin, qmax] (never for NaN). The ends themselves
/// are on the grid, though lsq_passes() stops their gradient.
LOWBIT_HD bool clips(float x, const LsqParams& p) {
  const float v = x * p.inv_scale;
  return v < p.qmin || v > p.qmax;
}

/// Per-element d_scale term before the gradient scale g, Esser et al.'s
/// dy·{round(v) - v inside, qmin at or below qmin, qmax at or above qmax},
/// v = x/s, and dy·0 for a NaN x.
LOWBIT_HD float lsq_scale_grad_term(float x, float dy, const LsqParams& p) {
  const float v = x * p.inv_scale;
  float factor = 0.0f;
  if (v <= p.qmin) {
    factor = p.qmin;
  } else if (v >= p.qmax) {
    factor = p.qmax;
  } else if (v == v) {
    factor = round_half_even(v) - v;
  }
  return dy * factor;
}

/// LSQ's initial step size from a channel's sum of |x| over `count` elements:
/// 2·mean|x|/sqrt(qmax), kept positive.
LOWBIT_HD float lsq_initial_scale(float sum_abs, std::int64_t count, int qmax) {
  const float mean = sum_abs / static_cast<float>(count);
  const float scale = 2.0f * mean / sqrtf(static_cast<float>(qmax));
  return scale > kLsqMinScale ? scale : kLsqMinScale;
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
