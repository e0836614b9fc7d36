// Fused EMA range observer + per-tensor range fake quant (TensorFlow's
// activation quantization), with all state in device memory.
//
//   batch range: v = [min(min(x), 0), max(max(x), 0)]
//   EMA:         ema_range_step (element.hpp), skipped for a non-finite v
//   quantize:    fake_quant(x, nudge_range(ema), divide) or identity (quant_delay);
//                per tensor, so FakeQuantWithMinMaxVars's division
//
// Every block folds its min/max into the state with integer atomics (min and
// max do not depend on order, so this is deterministic), and the last block to
// finish applies the EMA step: no host sync, no second reduction launch.
// exact:  observe launch (4 B/elem) + quantize launch (8 B/elem + mask)
// lagged: one launch quantizing with the previous range (8 B/elem + mask)
// (bf16/fp16 elements: half of each, the observer seeing the widened values)
//
// bias_relu_ema_fake_quant does the same to v = relu(x + bias[c]), computed
// from x in each launch rather than stored, so the activation after a
// Conv2d/Linear costs what ema_fake_quant of x costs.
#include "checks.hpp"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"
#include "reduction.cuh"
#include "tiles.cuh"

namespace lowbit::cuda {
namespace {

/// Monotone map of floats to unsigned keys (-0 folded onto +0), so atomicMax
/// on keys is max on floats; min uses the complemented key.
__device__ std::uint32_t ordered_key(float v) {
  const std::uint32_t u = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ float from_ordered_key(std::uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

struct EmaObserver {
  EmaRangeState* state;
  EmaConfig config;
  float lo = INFINITY;   // NaN-propagating per-thread min
  float hi = -INFINITY;  // and max

  __device__ void observe(float v) {
    lo = min_nan(lo, v);
    hi = max_nan(hi, v);
  }

  /// Block reduce, fold into the state, and let the last block do the step.
  __device__ void commit() {
    __shared__ float scratch[32];
    __shared__ bool last_block;
    const float block_lo = -detail::block_reduce(-lo, lowbit::detail::MaxOp{}, scratch);
    const float block_hi = detail::block_reduce(hi, lowbit::detail::MaxOp{}, scratch);
    if (threadIdx.x == 0) {
      const bool empty = block_lo == INFINITY && block_hi == -INFINITY;
      if (!empty) {
        if (is_finite(block_lo) && is_finite(block_hi)) {
          atomicMax(&state->key_min, ~ordered_key(block_lo));
          atomicMax(&state->key_max, ordered_key(block_hi));
        } else {
          atomicOr(&state->nonfinite, 1u);
        }
      }
      __threadfence();
      last_block = atomicAdd(&state->blocks_done, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (last_block && threadIdx.x == 0) {
      __threadfence();
      volatile EmaRangeState* s = state;
      const bool finite = s->nonfinite == 0u;
      const float batch_min = finite ? from_ordered_key(~s->key_min) : NAN;
      const float batch_max = finite ? from_ordered_key(s->key_max) : NAN;
      EmaRangeState next = *state;
      ema_range_step(next, batch_min, batch_max, config);
      next.key_min = 0u;
      next.key_max = 0u;
      next.nonfinite = 0u;
      next.blocks_done = 0u;
      *state = next;
    }
  }
};

/// Range quantizer reading the EMA state; `call_offset` turns state->steps
/// into this call's index (1 after exact mode's update, 0 in lagged mode).
struct EmaQuantizer : detail::PlainInput {
  static constexpr bool kHasSides = true;
  struct Params {
    RangeParams range;
    bool identity;
  };
  const EmaRangeState* state;
  EmaConfig config;
  std::int64_t call_offset;
  bool pass_plane;  // plane 0 is the pass bit (MaskFormat::pass)

  __device__ Params params(std::int64_t) const {
    const EmaRangeState s = *state;
    const bool quantizes = ema_quantizes(s, s.steps - call_offset, config);
    return {nudge_range(s.min, s.max, config.quant.qmin(), config.quant.qmax()), !quantizes};
  }
  /// One range for every channel: nothing to reload.
  __device__ void set_channel(Params&, std::int64_t) const {}
  __device__ float apply(float x, const Params& p) const {
    return p.identity ? x : fake_quant(x, p.range, RangeScaling::divide);
  }
  __device__ bool plane0(float x, const Params& p) const {
    if (p.identity) return x == x;
    return pass_plane ? ste_pass(x, p.range) : at_or_above_min(x, p.range);
  }
  __device__ bool plane1(float x, const Params& p) const {
    return p.identity ? x == x : at_or_below_max(x, p.range);
  }
  __device__ bool quantizes(const Params& p) const { return !p.identity; }
  __device__ bool clipped(float x, const Params& p) const {
    return !p.identity && clips(x, p.range);
  }
};

/// EmaQuantizer of v = relu(x + bias[c]) (bias null: relu(x)), whose pass bit
/// is both backward steps at once: the STE's (or the identity phase's) and
/// the ReLU's (v > 0). The range is read and nudged once per thread; a
/// channel change (every element of a Linear output) reloads only the bias.
struct BiasReluEmaQuantizer {
  static constexpr bool kHasSides = false;
  struct Params {
    EmaQuantizer::Params ema;
    float bias;
  };
  EmaQuantizer ema;
  const float* bias;

  __device__ Params params(std::int64_t c) const {
    return {ema.params(c), bias != nullptr ? bias[c] : 0.0f};
  }
  __device__ void set_channel(Params& p, std::int64_t c) const {
    if (bias != nullptr) p.bias = bias[c];
  }
  __device__ float input(float x, const Params& p) const {
    return relu(bias != nullptr ? x + p.bias : x);
  }
  __device__ float apply(float v, const Params& p) const { return ema.apply(v, p.ema); }
  __device__ bool plane0(float v, const Params& p) const {
    return v > 0.0f && ema.plane0(v, p.ema);
  }
  __device__ bool quantizes(const Params& p) const { return ema.quantizes(p.ema); }
  __device__ bool clipped(float v, const Params& p) const { return ema.clipped(v, p.ema); }
};

// ---------------------------------------------------------------------------
// Kernels (the observe and quantize passes are tiles.cuh's kernel)

__global__ void ema_state_init_kernel(EmaRangeState* state) { *state = EmaRangeState{}; }

// ---------------------------------------------------------------------------
// Launch plan shared by both ops

/// exact: an observe-only pass, then a quantize pass with the updated range;
/// lagged: one pass quantizing with the range from before this batch while
/// observing it. quantizer(call_offset) gives the pass's quantizer. The
/// quantizing pass counts clips.
template <class T, class MakeQuantizer>
void launch_ema_passes(const T* x, T* y, std::uint32_t* mask, MaskFormat mask_format,
                       const ChannelLayout& layout, EmaRangeState* state, const EmaConfig& config,
                       ClipCount* clip_count, MakeQuantizer quantizer, cudaStream_t stream) {
  const EmaObserver observer{state, config};
  if (config.mode == EmaMode::exact) {
    detail::launch_quantize_tiles(x, nullptr, nullptr, MaskFormat::pass, layout, quantizer(0),
                                  stream, observer);
    detail::launch_quantize_tiles(x, y, mask, mask_format, layout, quantizer(1), stream,
                                  detail::NoObserver{}, clip_count);
  } else {
    detail::launch_quantize_tiles(x, y, mask, mask_format, layout, quantizer(0), stream, observer,
                                  clip_count);
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Launchers

void ema_state_init(EmaRangeState* state, cudaStream_t stream) {
  LOWBIT_EXPECTS(state != nullptr, "state is null");
  ema_state_init_kernel<<<1, 1, 0, stream>>>(state);
  LOWBIT_LAUNCH_CHECK();
}

namespace {

template <class T>
void ema_fake_quant_as(const T* x, T* y, std::int64_t n, EmaRangeState* state,
                       const EmaConfig& config, std::uint32_t* mask, MaskFormat mask_format,
                       ClipCount* clip_count, cudaStream_t stream) {
  lowbit::detail::check_ema_fake_quant(x, y, n, state, config);
  if (n == 0) return;
  const bool pass_plane = mask_format == MaskFormat::pass;
  launch_ema_passes(
      x, y, mask, mask_format, ChannelLayout::per_tensor(n), state, config, clip_count,
      [&](std::int64_t call_offset) {
        return EmaQuantizer{{}, state, config, call_offset, pass_plane};
      },
      stream);
}

}  // namespace

void ema_fake_quant(const float* x, float* y, std::int64_t n, EmaRangeState* state,
                    const EmaConfig& config, std::uint32_t* mask, MaskFormat mask_format,
                    ClipCount* clip_count, cudaStream_t stream) {
  ema_fake_quant_as(x, y, n, state, config, mask, mask_format, clip_count, stream);
}

void ema_fake_quant(const bf16* x, bf16* y, std::int64_t n, EmaRangeState* state,
                    const EmaConfig& config, std::uint32_t* mask, MaskFormat mask_format,
                    ClipCount* clip_count, cudaStream_t stream) {
  ema_fake_quant_as(x, y, n, state, config, mask, mask_format, clip_count, stream);
}

void ema_fake_quant(const fp16* x, fp16* y, std::int64_t n, EmaRangeState* state,
                    const EmaConfig& config, std::uint32_t* mask, MaskFormat mask_format,
                    ClipCount* clip_count, cudaStream_t stream) {
  ema_fake_quant_as(x, y, n, state, config, mask, mask_format, clip_count, stream);
}

void bias_relu_ema_fake_quant(const float* x, const float* bias, const ChannelLayout& layout,
                              float* y, EmaRangeState* state, const EmaConfig& config,
                              std::uint32_t* mask, ClipCount* clip_count, cudaStream_t stream) {
  lowbit::detail::check_bias_relu_ema_fake_quant(x, layout, y, state, config);
  const std::int64_t n = layout.size();
  if (n == 0) return;
  // Without a bias there is no channel to track: the per-tensor kernel.
  const ChannelLayout walk = bias != nullptr ? layout : ChannelLayout::per_tensor(n);
  launch_ema_passes(
      x, y, mask, MaskFormat::pass, walk, state, config, clip_count,
      [&](std::int64_t call_offset) {
        const EmaQuantizer ema{{}, state, config, call_offset, true};
        return BiasReluEmaQuantizer{ema, bias};
      },
      stream);
}

}  // namespace lowbit::cuda
