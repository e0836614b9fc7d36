// Plain types shared by the CPU reference (lowbit::ref) and the CUDA kernels
// (lowbit::cuda). Everything here is trivially copyable so that it can be
// passed to a kernel by value or live in device memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

/// Marks functions shared by host and device code.
#if defined(__CUDACC__)
#define LOWBIT_HD __host__ __device__ __forceinline__
#else
#define LOWBIT_HD inline
#endif

namespace lowbit {

/// bfloat16 storage: the top 16 bits of a float32 (sign, 8 exponent bits, 7
/// mantissa bits), the layout of torch.bfloat16 and __nv_bfloat16. The
/// quantizer ops that take it compute in float32 (to_float/to_bf16 in
/// element.hpp) and round their result to it once.
struct bf16 {
  std::uint16_t bits;
};

/// IEEE 754 binary16 storage (sign, 5 exponent bits, 10 mantissa bits), the
/// layout of torch.float16 and __half. Used like bf16 (to_float/to_fp16).
struct fp16 {
  std::uint16_t bits;
};

inline constexpr int kMinBits = 2;
inline constexpr int kMaxBits = 16;

/// A tensor viewed as [outer, channels, inner] (row-major): element i belongs
/// to channel (i / inner) % channels. Per-tensor quantization is channels == 1.
struct ChannelLayout {
  std::int64_t outer = 1;
  std::int64_t channels = 1;
  std::int64_t inner = 0;

  LOWBIT_HD constexpr std::int64_t size() const { return outer * channels * inner; }

  /// The whole tensor as one channel.
  static constexpr ChannelLayout per_tensor(std::int64_t n) { return {1, 1, n}; }

  /// Channels along `axis` of a row-major tensor of `shape`: [K,C,R,S] weights
  /// use axis 0, NCHW activations axis 1. Throws lowbit::Error for an axis
  /// outside the rank or a negative dimension.
  static ChannelLayout per_channel(const std::vector<std::int64_t>& shape, int axis);
};

/// TensorFlow range quantizer (FakeQuantWithMinMaxVars): integers
/// [qmin, qmax] = [narrow_range ? 1 : 0, 2^bits - 1], with the float range
/// nudged so that 0.0 is exactly representable.
struct RangeQuant {
  int bits = 8;
  bool narrow_range = false;

  LOWBIT_HD constexpr int qmin() const { return narrow_range ? 1 : 0; }
  LOWBIT_HD constexpr int qmax() const { return (1 << bits) - 1; }
};

/// How a range quantizer turns the clamped, shifted input into grid units.
/// TensorFlow's kernels differ here, and next to a rounding tie the two give
/// levels one apart, so lowbit follows each kernel exactly.
enum class RangeScaling : std::uint8_t {
  /// (x - nudged_min) / scale: FakeQuantWithMinMaxVars (per tensor).
  divide,
  /// (x - nudged_min) · inv_scale: FakeQuantWithMinMaxVarsPerChannel and
  /// FakeQuantWithMinMaxArgs.
  multiply,
};

/// The scaling of a range op over `layout`: one channel is per tensor
/// (FakeQuantWithMinMaxVars), several are per channel.
LOWBIT_HD constexpr RangeScaling range_scaling(const ChannelLayout& layout) {
  return layout.channels == 1 ? RangeScaling::divide : RangeScaling::multiply;
}

/// PyTorch affine quantizer (fake_quantize_per_{tensor,channel}_affine):
/// q = nearbyint(x / scale) + zero_point clamped to [qmin, qmax]. Scales and
/// zero points are per channel arrays; the grid must span 2..16 bits.
struct AffineQuant {
  int qmin = 0;
  int qmax = 255;

  static constexpr AffineQuant unsigned_bits(int bits) { return {0, (1 << bits) - 1}; }
  static constexpr AffineQuant signed_bits(int bits) {
    return {-(1 << (bits - 1)), (1 << (bits - 1)) - 1};
  }
};

/// Learned step size quantizer (LSQ, Esser et al. 2019): y = clamp(round(x/s),
/// qmin, qmax)·s with s a trained per-channel parameter, zero point 0.
using LsqQuant = AffineQuant;

/// Smallest step size LSQ uses: a trained scale at or below it (or NaN) is
/// replaced by it, so the quantizer never divides by zero.
inline constexpr float kLsqMinScale = 1e-8f;

/// What the forward pass saves for the straight-through-estimator backward.
/// Bit i % 32 of word i / 32 of a plane belongs to element i.
enum class MaskFormat : std::uint8_t {
  /// One plane: 1 where the input was inside the range (dx = dy there).
  pass,
  /// Two planes (range mode only): plane 0 is x >= nudged_min, plane 1 is
  /// x <= nudged_max. Inside is both, below is plane 1 only, above is plane 0
  /// only, NaN is neither; the backward derives d_min and d_max from them.
  sides,
};

/// Number of 32-bit words a mask for n elements takes.
constexpr std::int64_t mask_words(std::int64_t n, MaskFormat format = MaskFormat::pass) {
  return (format == MaskFormat::sides ? 2 : 1) * ((n + 31) / 32);
}

/// NCHW input, KCRS weights, square stride and symmetric zero padding.
struct Conv2dShape {
  std::int64_t batch = 1, in_channels = 1, height = 1, width = 1;
  std::int64_t out_channels = 1, kernel = 1, stride = 1, padding = 0;

  LOWBIT_HD constexpr std::int64_t out_height() const {
    return (height + 2 * padding - kernel) / stride + 1;
  }
  LOWBIT_HD constexpr std::int64_t out_width() const {
    return (width + 2 * padding - kernel) / stride + 1;
  }
};

/// Max pooling of NCHW input with a square kernel×kernel window, `stride`
/// apart, no padding.
struct Pool2dShape {
  std::int64_t batch = 1, channels = 1, height = 1, width = 1;
  std::int64_t kernel = 2, stride = 2;

  LOWBIT_HD constexpr std::int64_t out_height() const { return (height - kernel) / stride + 1; }
  LOWBIT_HD constexpr std::int64_t out_width() const { return (width - kernel) / stride + 1; }
};

/// Device-resident (or, for lowbit::ref, host-resident) state of an EMA range
/// observer. Initialise it with ema_state_init(); only lowbit ops write it.
struct EmaRangeState {
  float min = 0.0f;           ///< zero-debiased EMA of min(min(x), 0)
  float max = 0.0f;           ///< zero-debiased EMA of max(max(x), 0)
  float decay_pow = 1.0f;     ///< decay^updates, the debiasing term
  std::uint32_t skipped = 0;  ///< batches ignored for a non-finite min or max
  std::int64_t steps = 0;     ///< calls so far (quant_delay and freeze count these)
  std::int64_t updates = 0;   ///< batches folded into the EMA
  // Scratch of the one-pass GPU reduction; zero between calls.
  std::uint32_t key_min = 0;
  std::uint32_t key_max = 0;
  std::uint32_t nonfinite = 0;
  std::uint32_t blocks_done = 0;
};

/// When the quantizing range is taken relative to this step's EMA update.
enum class EmaMode : std::uint8_t {
  /// TensorFlow's order: update the EMA with this batch, then quantize with
  /// it. Two passes over x.
  exact,
  /// Quantize with the range from before this batch and update it in the same
  /// pass: one read of x.
  lagged,
};

inline constexpr std::int64_t kNeverFreeze = std::numeric_limits<std::int64_t>::max();

/// Options of the fused EMA observer + fake quant op.
struct EmaConfig {
  RangeQuant quant{};
  float decay = 0.999f;  ///< in [0, 1)
  EmaMode mode = EmaMode::exact;
  /// Calls before this index pass x through unchanged (ranges still track).
  std::int64_t quant_delay = 0;
  /// Calls at or after this index leave the EMA untouched.
  std::int64_t freeze_step = kNeverFreeze;
};

/// Scratch memory for ops with deterministic reductions (device memory for
/// lowbit::cuda, host memory for lowbit::ref). Size it with
/// reduction_workspace_bytes().
struct Workspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};

/// Bytes of Workspace that the reducing ops (ste_backward_range,
/// weight_range, lsq_backward, lsq_init_scale, bias_activation_backward with
/// d_bias) need for `layout`.
std::size_t reduction_workspace_bytes(const ChannelLayout& layout);

/// Bytes that pack_codes writes for n codes of `bits` (2, 4 or 8) bits.
constexpr std::int64_t packed_bytes(std::int64_t n, int bits) { return (n * bits + 7) / 8; }

/// Counters an activation quantizer adds to when an op is given one (device
/// memory for lowbit::cuda): the elements it quantized (an identity phase
/// quantizes none) and how many of those lay beyond the grid ends (clips() in
/// element.hpp), so the quantizer saturated them. Integer sums, so every
/// schedule and both namespaces count the same. Zero them to start a period.
struct ClipCount {
  unsigned long long quantized = 0;  ///< atomicAdd's type
  unsigned long long clipped = 0;
};

/// Requantization of int32 accumulators to a code grid (integer inference),
/// per output channel: code = clamp(zero_point + multiplier·2^(shift-31)·acc,
/// min, max) in fixed point (integer_element.hpp). The arrays are in the op's
/// memory (device memory for lowbit::cuda).
struct Requantization {
  const std::int32_t* multiplier = nullptr;  ///< [channels], in [2^30, 2^31), or 0
  const std::int32_t* shift = nullptr;       ///< [channels], in [-31, 30]
  std::int32_t zero_point = 0;
  std::int32_t min = 0;  ///< a fused ReLU raises it to zero_point
  std::int32_t max = 255;
};

/// Running totals of the softmax cross-entropy over the steps since they were
/// last zeroed (device memory for lowbit::cuda). Sums are in a fixed order.
struct LossTotals {
  double loss_sum = 0.0;      ///< Σ per-example loss
  std::int64_t correct = 0;   ///< examples whose argmax equals the label
  std::int64_t examples = 0;  ///< labelled examples seen (padding rows excluded)
};

/// SGD with momentum and weight decay, PyTorch's rule (dampening 0, no
/// Nesterov): g = grad + weight_decay·p, v = momentum·v + g, p -= lr·v.
struct SgdConfig {
  float learning_rate = 0.05f;
  float momentum = 0.9f;
  float weight_decay = 0.0f;
};

/// How 8-bit pixels become network inputs: x = (pixel/255 - mean) / std.
struct Normalization {
  float mean = 0.2860f;  ///< Fashion-MNIST training-set mean
  float std = 0.3530f;   ///< Fashion-MNIST training-set standard deviation
};

}  // namespace lowbit
