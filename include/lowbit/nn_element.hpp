// The element math of the training building blocks (bias + ReLU, max pooling,
// softmax cross-entropy, SGD, shuffling, batch gathering, PyTorch qparams). As in
// element.hpp, lowbit::ref and lowbit::cuda call these same functions, built
// without FMA contraction, so both sides compute the same bits (softmax's
// expf/logf excepted: the device's differ from the host's in the last ulps).
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "lowbit/element.hpp"
#include "lowbit/types.hpp"

namespace lowbit {

// ---------------------------------------------------------------------------
// Bias and activation

/// max(v, 0) with NaN kept as NaN (and -0 mapped to +0).
LOWBIT_HD float relu(float v) { return (v > 0.0f || v != v) ? v : 0.0f; }

/// The output of bias_activation for v = x + bias.
LOWBIT_HD float activation_forward(float v, bool use_relu) { return use_relu ? relu(v) : v; }

/// Whether bias_activation_backward passes element i's gradient: where the
/// ReLU passed (use_relu: y[i] > 0, so a NaN output passes nothing; y is read
/// only then) and, with a pass_mask, where its bit i is set (MaskFormat::pass).
/// dx is then ste_gradient(dy, passes): a blocked dy gives dy·0 (TensorFlow's
/// ReluGrad), as the STE's masks do, so one mask, or the mask folded in here,
/// gives the same bits as the ops in turn.
LOWBIT_HD bool activation_passes(const float* y, bool use_relu, const std::uint32_t* pass_mask,
                                 std::int64_t i) {
  if (use_relu && !(y[i] > 0.0f)) return false;
  return pass_mask == nullptr || ((pass_mask[i >> 5] >> (i & 31)) & 1u) != 0u;
}

// ---------------------------------------------------------------------------
// Max pooling

/// Whether v, which comes after `best` in a pooling window's row-major order,
/// replaces it as the window's maximum: only a strictly greater number does,
/// so among equal values (-0 and +0 included) the first stays, and the first
/// NaN wins over numbers and over later NaNs. Both sides walk each window from
/// its first element with this rule, so they pick the same element.
LOWBIT_HD bool replaces_max(float v, float best) { return !(v <= best) && best == best; }

// ---------------------------------------------------------------------------
// Softmax cross-entropy

/// Most classes softmax_cross_entropy takes (one warp walks a row).
inline constexpr int kMaxSoftmaxClasses = 1024;

/// A label that counts: in [0, classes). -1 marks a padding row; the CUDA op
/// treats any other out-of-range label as padding too (the reference throws).
LOWBIT_HD bool is_labelled(std::int32_t label, int classes) {
  return label >= 0 && label < classes;
}

/// Argmax order: a larger value wins, equal values go to the lower index, and
/// NaN never wins. Any fold order over a row gives its first maximum.
LOWBIT_HD bool argmax_takes(float value, int index, float best, int best_index) {
  return value > best || (value == best && index < best_index);
}

/// The row's top-1 by argmax_takes (classes when every value is NaN).
LOWBIT_HD int first_maximum(const float* row, int classes) {
  float best = -INFINITY;
  int best_index = classes;
  for (int c = 0; c < classes; ++c)
    if (argmax_takes(row[c], c, best, best_index)) {
      best = row[c];
      best_index = c;
    }
  return best_index;
}

/// -log softmax of the label: log Σ exp(x - max) - (x[label] - max).
LOWBIT_HD float softmax_row_loss(float exp_sum, float shifted_label_logit) {
  return logf(exp_sum) - shifted_label_logit;
}

/// d_logit = (softmax - onehot) / labelled rows, with exp_shifted =
/// exp(x - max) and exp_sum its row sum.
LOWBIT_HD float softmax_logit_grad(float exp_shifted, float exp_sum, bool is_label,
                                   float labelled_rows) {
  return (exp_shifted / exp_sum - (is_label ? 1.0f : 0.0f)) / labelled_rows;
}

// ---------------------------------------------------------------------------
// SGD

/// PyTorch's torch.optim.SGD step (dampening 0, no Nesterov):
/// g = grad + weight_decay·p (only where `decay` and weight_decay != 0),
/// v = momentum·v + g, p = p - lr·v.
LOWBIT_HD void sgd_update(float& param, float grad, float& velocity, bool decay,
                          const SgdConfig& config) {
  const float g = decay && config.weight_decay != 0.0f ? grad + config.weight_decay * param : grad;
  velocity = config.momentum * velocity + g;
  param = param - config.learning_rate * velocity;
}

// ---------------------------------------------------------------------------
// Shuffling and batches

/// SplitMix64's finaliser (Steele et al. 2014): a bijection of 64-bit words
/// with full avalanche.
LOWBIT_HD std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// Counter-based sort key of example `index` in epoch `epoch`: no state, so
/// any epoch's permutation can be recomputed (resume) on any device. For one
/// (seed, epoch) it is a bijection of index, so no two keys are equal.
LOWBIT_HD std::uint64_t shuffle_key(std::uint64_t seed, std::int64_t epoch, std::int64_t index) {
  const std::uint64_t stream = splitmix64(seed ^ splitmix64(static_cast<std::uint64_t>(epoch)));
  return splitmix64(stream ^ static_cast<std::uint64_t>(index));
}

/// x = (pixel/255 - mean) / std, in float.
LOWBIT_HD float normalize_pixel(std::uint8_t pixel, const Normalization& norm) {
  return (static_cast<float>(pixel) / 255.0f - norm.mean) / norm.std;
}

/// The example that batch position `position` (= cursor·batch + row) takes:
/// perm[position], or position itself without a permutation; -1 (a padding
/// row) past the end of the data. The CUDA op also maps a position or a
/// permutation entry outside [0, n) to -1 (the reference throws for those).
LOWBIT_HD std::int64_t batch_example(std::int64_t position, std::int64_t n,
                                     const std::int32_t* perm) {
  if (position < 0 || position >= n) return -1;
  const std::int64_t e = perm != nullptr ? perm[position] : position;
  return e >= 0 && e < n ? e : -1;
}

// ---------------------------------------------------------------------------
// PyTorch qparams (torch.ao.quantization observers, _calculate_qparams)

struct AffineQparams {
  float scale = 1.0f;
  std::int32_t zero_point = 0;
};

/// PyTorch's smallest scale: torch.finfo(torch.float32).eps.
inline constexpr float kQparamsMinScale = FLT_EPSILON;

/// scale and zero point of [min, max] for the grid [qmin, qmax], as PyTorch
/// 1.13's observers compute them (float32 throughout):
///   min_neg = min(min, 0), max_pos = max(max, 0)
///   symmetric: scale = max(-min_neg, max_pos) / ((qmax - qmin) / 2)
///              zero_point = 0 for a signed grid (qmin < 0), else
///              (qmin + qmax) / 2 rounded down (torch's quint8 observer with
///              a custom quant_min/quant_max, as FakeQuantize passes them)
///   affine:    scale = (max_pos - min_neg) / (qmax - qmin)
///              zero_point = clamp(qmin - round_half_even(min_neg / scale), qmin, qmax)
/// with scale = max(scale, FLT_EPSILON). A range that is not finite or has
/// min > max (device-side sanitising; the host API rejects it) gets PyTorch's
/// defaults for an observer that has seen nothing: scale 1, zero point 0
/// (clamped into the grid).
LOWBIT_HD AffineQparams affine_qparams(float min, float max, int qmin, int qmax, bool symmetric) {
  AffineQparams p;
  const float qmin_f = static_cast<float>(qmin);
  const float qmax_f = static_cast<float>(qmax);
  if (!(is_finite(min) && is_finite(max) && min <= max)) {
    p.zero_point = static_cast<std::int32_t>(clamp_to(0.0f, qmin_f, qmax_f));
    return p;
  }
  const float min_neg = min < 0.0f ? min : 0.0f;
  const float max_pos = max > 0.0f ? max : 0.0f;
  if (symmetric) {
    const float magnitude = -min_neg > max_pos ? -min_neg : max_pos;
    const float scale = magnitude / ((qmax_f - qmin_f) / 2.0f);
    p.scale = scale > kQparamsMinScale ? scale : kQparamsMinScale;
    p.zero_point = qmin < 0 ? 0 : (qmin + qmax) / 2;
    return p;
  }
  const float scale = (max_pos - min_neg) / (qmax_f - qmin_f);
  p.scale = scale > kQparamsMinScale ? scale : kQparamsMinScale;
  const float zero_point = qmin_f - round_half_even(min_neg / p.scale);
  p.zero_point = static_cast<std::int32_t>(clamp_to(zero_point, qmin_f, qmax_f));
  return p;
}

}  // namespace lowbit
