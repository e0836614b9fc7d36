// Kernel benchmarks: lowbit's memory-bound ops against two baselines measured
// in the same run (DESIGN.md §4): a device-to-device copy ("copy", the
// roofline) and our fp32 path's bias + ReLU pass ("fp32_bias_relu"), which
// is what a QAT step's fused fake quant replaces.
//
// With a CUDA device it times lowbit::cuda (names start "gpu/"): CUDA-event
// time per call, after one untimed warm-up call, with L2 flushed before every
// timed call so that inputs come from device memory. Without a device it times
// the CPU backend's ops, lowbit::cpu on every core (names start "cpu/"; the
// copy is shared out among the cores too), and beside them the single-threaded
// reference lowbit::ref ("ref/", measured against the same copy), at 2^16,
// 2^20 and 2^24 elements: in the caches, in the last-level cache, and in
// memory (64 MiB per tensor), where the copy is the memory roofline.
//
// The fake quant, STE and EMA ops also run on bf16 tensors (names with
// "/bf16" after the op): 2-byte elements, computed in float.
//
// Counters:
//   bytes_per_elem  the fewest bytes the op must move per element: each input
//                   read once, each output written once (4 bytes a float, 2 a
//                   bf16), 1/8 byte per mask plane
//   GB/s            bytes_per_elem·n over the time per call, in 10^9 B/s
//                   (bytes_per_second is the same figure in B/s)
//   pct_of_copy     100·GB/s / (the copy's GB/s at the same n in this run):
//                   100 is copy speed for the bytes the op must move; DESIGN.md
//                   §4 asks ≥ 90 for fake quant. Absent if the copy at that n
//                   was filtered out.
// The binary exits 1 if any benchmark failed (harness.hpp).
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "backends/cpu_parallel.hpp"
#include "backends/cpu_quant.hpp"
#include "backends/cpu_reductions.hpp"
#include "harness.hpp"
#include "lowbit/cuda.hpp"
#include "lowbit/device_buffer.hpp"
#include "lowbit/element.hpp"
#include "lowbit/error.hpp"
#include "lowbit/ref.hpp"
#include "lowbit/types.hpp"

namespace {

using lowbit::bf16;
using lowbit::ChannelLayout;
using lowbit::EmaMode;
using lowbit::MaskFormat;

using lowbit::bench::fail;
using lowbit::cuda::DeviceBuffer;

class CudaEvent {
 public:
  CudaEvent() { LOWBIT_CUDA_TRY(cudaEventCreate(&event_)); }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  ~CudaEvent() {
    if (const cudaError_t status = cudaEventDestroy(event_); status != cudaSuccess)
      std::fprintf(stderr, "cudaEventDestroy: %s\n", cudaGetErrorString(status));
  }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

/// Times one iteration, rmm style: the constructor flushes L2 (untimed) and
/// records the start; the destructor records the stop, waits and reports the
/// elapsed time. Destructor errors are reported, never thrown.
class CudaEventTimer {
 public:
  CudaEventTimer(benchmark::State& state, DeviceBuffer<std::byte>& l2_flush, const CudaEvent& start,
                 const CudaEvent& stop, cudaStream_t stream, double& total_seconds)
      : state_(state), start_(start), stop_(stop), stream_(stream), total_(total_seconds) {
    // Writing 2x L2 evicts the previous call's data. It leaves dirty lines that
    // the timed call may have to write back; the copy baseline pays the same.
    LOWBIT_CUDA_TRY(cudaMemsetAsync(l2_flush.data(), 0, l2_flush.bytes(), stream_));
    LOWBIT_CUDA_TRY(cudaEventRecord(start_.get(), stream_));
  }
  CudaEventTimer(const CudaEventTimer&) = delete;
  CudaEventTimer& operator=(const CudaEventTimer&) = delete;
  ~CudaEventTimer() {
    float ms = 0.0f;
    cudaError_t status = cudaEventRecord(stop_.get(), stream_);
    if (status == cudaSuccess) status = cudaEventSynchronize(stop_.get());
    if (status == cudaSuccess) status = cudaEventElapsedTime(&ms, start_.get(), stop_.get());
    if (status != cudaSuccess) {
      fail(state_, std::string("timed call: ") + cudaGetErrorString(status));
      return;
    }
    state_.SetIterationTime(ms * 1e-3);
    total_ += ms * 1e-3;
  }

 private:
  benchmark::State& state_;
  const CudaEvent& start_;
  const CudaEvent& stop_;
  cudaStream_t stream_;
  double& total_;
};

// ---------------------------------------------------------------------------
// Backends: one set of benchmark bodies runs on lowbit::cuda, lowbit::cpu or
// lowbit::ref, whose signatures differ only by the CUDA side's trailing stream.
// Packing and the EMA state's reset have one CPU version, the reference's.

#define LOWBIT_BENCH_OPS(X)                                                    \
  X(fake_quant_range)                                                          \
  X(fake_quant_affine) X(ste_backward) X(ste_backward_range) X(ema_fake_quant) \
      X(fake_quant_weights) X(lsq_forward) X(lsq_backward) X(bias_activation)
#define LOWBIT_BENCH_REF_ONLY_OPS(X) X(ema_state_init) X(pack_codes) X(unpack_codes)
#define LOWBIT_BENCH_GPU_OP(op)      \
  template <class... A>              \
  static void op(A... a) {           \
    lowbit::cuda::op(a..., kStream); \
  }
#define LOWBIT_BENCH_CPU_OP(op) \
  template <class... A>         \
  static void op(A... a) {      \
    lowbit::cpu::op(a...);      \
  }
#define LOWBIT_BENCH_REF_OP(op) \
  template <class... A>         \
  static void op(A... a) {      \
    lowbit::ref::op(a...);      \
  }

struct Gpu {
  static constexpr const char* kLabel = "gpu";
  static constexpr cudaStream_t kStream = nullptr;
  template <class T>
  using Buffer = DeviceBuffer<T>;
  inline static DeviceBuffer<std::byte>* l2_flush = nullptr;  // owned by main

  LOWBIT_BENCH_OPS(LOWBIT_BENCH_GPU_OP)
  LOWBIT_BENCH_REF_ONLY_OPS(LOWBIT_BENCH_GPU_OP)

  static void copy(float* dst, const float* src, std::int64_t n) {
    LOWBIT_CUDA_TRY(cudaMemcpyAsync(dst, src, sizeof(float) * static_cast<std::size_t>(n),
                                    cudaMemcpyDeviceToDevice, kStream));
  }

  /// Event-timed seconds of all iterations.
  template <class Op>
  static double time(benchmark::State& state, const Op& op) {
    op();  // module load and first touch stay out of the numbers
    LOWBIT_CUDA_TRY(cudaStreamSynchronize(kStream));
    const CudaEvent start;
    const CudaEvent stop;
    double seconds = 0.0;
    for (auto _ : state) {
      const CudaEventTimer timer(state, *l2_flush, start, stop, kStream, seconds);
      op();
    }
    return seconds;
  }
};

/// Wall time of all iterations on the host.
template <class Op>
double host_time(benchmark::State& state, const Op& op) {
  op();
  const auto begin = std::chrono::steady_clock::now();
  for (auto _ : state) op();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
}

struct Cpu {
  static constexpr const char* kLabel = "cpu";
  template <class T>
  using Buffer = std::vector<T>;

  LOWBIT_BENCH_OPS(LOWBIT_BENCH_CPU_OP)
  LOWBIT_BENCH_REF_ONLY_OPS(LOWBIT_BENCH_REF_OP)

  /// The machine's copy bandwidth: one share per thread, as the ops split,
  /// each a plain vector loop that stores as the ops do (memcpy turns to
  /// non-temporal stores on large blocks, which made the baseline vary by
  /// a third from run to run).
  static void copy(float* dst, const float* src, std::int64_t n) {
    lowbit::cpu::parallel_rows(n, [&](std::int64_t begin, std::int64_t end) {
      copy_loop(dst + begin, src + begin, end - begin);
    });
  }
  // Kept a loop: GCC would otherwise call memcpy for it.
  __attribute__((optimize("no-tree-loop-distribute-patterns"))) static void copy_loop(
      float* __restrict__ dst, const float* __restrict__ src, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) dst[i] = src[i];
  }

  template <class Op>
  static double time(benchmark::State& state, const Op& op) {
    return host_time(state, op);
  }
};

struct Ref {
  static constexpr const char* kLabel = "ref";
  template <class T>
  using Buffer = std::vector<T>;

  LOWBIT_BENCH_OPS(LOWBIT_BENCH_REF_OP)
  LOWBIT_BENCH_REF_ONLY_OPS(LOWBIT_BENCH_REF_OP)

  template <class Op>
  static double time(benchmark::State& state, const Op& op) {
    return host_time(state, op);
  }
};

#undef LOWBIT_BENCH_GPU_OP
#undef LOWBIT_BENCH_CPU_OP
#undef LOWBIT_BENCH_REF_OP
#undef LOWBIT_BENCH_REF_ONLY_OPS
#undef LOWBIT_BENCH_OPS

template <class B, class T>
using Buf = typename B::template Buffer<T>;

// ---------------------------------------------------------------------------
// Inputs and counters

/// Deterministic values in [lo, hi) from a multiplicative hash of the index:
/// never constant, never all zero (zeros can run faster than real data).
/// Cached: Google Benchmark calls each body several times.
const std::vector<float>& pattern(std::int64_t n, std::uint32_t seed, float lo, float hi) {
  static std::map<std::pair<std::int64_t, std::uint32_t>, std::vector<float>> cache;
  std::vector<float>& values = cache[{n, seed}];
  values.reserve(static_cast<std::size_t>(n));
  for (std::int64_t i = static_cast<std::int64_t>(values.size()); i < n; ++i) {
    const std::uint32_t hash = (static_cast<std::uint32_t>(i) ^ seed) * 2654435761u;
    values.push_back(lo + (hi - lo) * static_cast<float>(hash >> 8) * 0x1p-24f);
  }
  return values;
}
const std::vector<float>& inputs(std::int64_t n) { return pattern(n, 0x9e3779b9u, -3.0f, 3.0f); }
const std::vector<float>& grads(std::int64_t n) { return pattern(n, 0x85ebca6bu, -1.0f, 1.0f); }

/// Values as elements of type E (float, or bf16 rounded once).
template <class E>
std::vector<E> as_elements(const std::vector<float>& values) {
  if constexpr (std::is_same_v<E, float>) {
    return values;
  } else {
    std::vector<E> out;
    out.reserve(values.size());
    for (const float v : values) out.push_back(lowbit::from_float<E>(v));
    return out;
  }
}

/// Bytes of one element: the x read and the y written each move this.
template <class E>
constexpr double kElementBytes = static_cast<double>(sizeof(E));

std::vector<std::uint8_t> codes(std::int64_t n, int bits) {
  std::vector<std::uint8_t> values;
  for (const float v : inputs(n))  // [-3, 3) onto the code range
    values.push_back(static_cast<std::uint8_t>(static_cast<int>((v + 3.0f) * 85.0f) % (1 << bits)));
  return values;
}

/// One value per channel, a little apart so that channels differ.
std::vector<float> per_channel(std::int64_t channels, float first, float step) {
  std::vector<float> values;
  for (std::int64_t c = 0; c < channels; ++c)
    values.push_back(first + step * static_cast<float>(c));
  return values;
}

// Activations: per tensor, or NCHW [64, 64, n/4096] on axis 1.
ChannelLayout activation_layout(std::int64_t n, bool channels) {
  return channels ? ChannelLayout{64, 64, n / 4096} : ChannelLayout::per_tensor(n);
}

template <class B>
lowbit::Workspace workspace(Buf<B, std::byte>& buffer) {
  return {buffer.data(), buffer.size()};
}

/// Copy GB/s by n. The copies are registered first, so they run first.
std::map<std::int64_t, double>& copy_gbps() {
  static std::map<std::int64_t, double> by_n;
  return by_n;
}

/// Times `op` on backend B and sets the counters described at the top.
template <class B, class Op>
void measure(benchmark::State& state, std::int64_t n, double bytes_per_elem, const Op& op,
             bool is_copy = false) {
  const double seconds = B::time(state, op);
  if (state.error_occurred() || seconds <= 0.0) return;
  const double bytes =
      bytes_per_elem * static_cast<double>(n) * static_cast<double>(state.iterations());
  const double gbps = bytes / seconds * 1e-9;
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes));
  state.counters["bytes_per_elem"] = bytes_per_elem;
  state.counters["GB/s"] = gbps;
  if (is_copy)
    copy_gbps()[n] = gbps;
  else if (const auto copy = copy_gbps().find(n); copy != copy_gbps().end())
    state.counters["pct_of_copy"] = 100.0 * gbps / copy->second;
}

// ---------------------------------------------------------------------------
// Benchmark bodies. Ranges of about [-2, 2.5] against inputs in [-3, 3) put
// some elements below and some above the range, as real activations are.

template <class B>
void bench_copy(benchmark::State& state, std::int64_t n) {
  const Buf<B, float> x(inputs(n));
  Buf<B, float> y(n);
  const auto copy = [&] { B::copy(y.data(), x.data(), n); };
  measure<B>(state, n, 8.0, copy, true);
}

// Our fp32 path's pass where QAT fake-quantizes: bias + ReLU on NCHW
// [64, 64, n/4096]. Read x, write y: 8 B/elem.
template <class B>
void bench_fp32_bias_relu(benchmark::State& state, std::int64_t n) {
  const ChannelLayout layout = activation_layout(n, true);
  const Buf<B, float> x(inputs(n)), bias(per_channel(layout.channels, -0.5f, 0.01f));
  Buf<B, float> y(n);
  measure<B>(state, n, 8.0,
             [&] { B::bias_activation(x.data(), bias.data(), layout, true, y.data()); });
}

// Read x, write y, 1 mask bit: 8.125 B/elem (bf16: 4.125).
template <class B, class E = float>
void bench_fake_quant_range(benchmark::State& state, std::int64_t n, int bits, bool channels) {
  const ChannelLayout layout = activation_layout(n, channels);
  const Buf<B, E> x(as_elements<E>(inputs(n)));
  const Buf<B, float> min(per_channel(layout.channels, -2.0f, -0.01f)),
      max(per_channel(layout.channels, 2.5f, 0.01f));
  Buf<B, E> y(n);
  Buf<B, std::uint32_t> mask(lowbit::mask_words(n));
  measure<B>(state, n, 2 * kElementBytes<E> + 0.125, [&] {
    B::fake_quant_range(x.data(), y.data(), layout, min.data(), max.data(),
                        lowbit::RangeQuant{bits, false}, mask.data(), MaskFormat::pass);
  });
}

// Read x, write y, 1 mask bit: 8.125 B/elem (bf16: 4.125).
template <class B, class E = float>
void bench_fake_quant_affine(benchmark::State& state, std::int64_t n, int bits, bool channels) {
  const ChannelLayout layout = activation_layout(n, channels);
  const auto quant = lowbit::AffineQuant::unsigned_bits(bits);
  const float step = 4.5f / static_cast<float>(quant.qmax - quant.qmin);
  const Buf<B, E> x(as_elements<E>(inputs(n)));
  const Buf<B, float> scale(per_channel(layout.channels, step, step * 1e-3f));
  const Buf<B, std::int32_t> zero_point(
      std::vector<std::int32_t>(layout.channels, (quant.qmax + 1) / 2));
  Buf<B, E> y(n);
  Buf<B, std::uint32_t> mask(lowbit::mask_words(n));
  measure<B>(state, n, 2 * kElementBytes<E> + 0.125, [&] {
    B::fake_quant_affine(x.data(), y.data(), layout, scale.data(), zero_point.data(), quant,
                         mask.data(), nullptr);
  });
}

// From a mask saved by a real forward. pass: read dy, write dx, 1 mask bit
// (8.125 B/elem; bf16 4.125). sides: 2 mask bits for d_min and d_max (8.25
// B/elem; bf16 4.25).
template <class B, class E = float>
void bench_ste_backward(benchmark::State& state, std::int64_t n, MaskFormat format) {
  const ChannelLayout layout = ChannelLayout::per_tensor(n);
  const Buf<B, E> x(as_elements<E>(inputs(n))), dy(as_elements<E>(grads(n)));
  const Buf<B, float> min(std::vector<float>{-2.0f}), max(std::vector<float>{2.5f});
  Buf<B, E> dx(n);
  Buf<B, float> d_min(1), d_max(1);
  Buf<B, std::uint32_t> mask(lowbit::mask_words(n, format));
  Buf<B, std::byte> ws(lowbit::reduction_workspace_bytes(layout));
  B::fake_quant_range(x.data(), dx.data(), layout, min.data(), max.data(),
                      lowbit::RangeQuant{4, false}, mask.data(), format);
  const double elements = 2 * kElementBytes<E>;
  if (format == MaskFormat::pass)
    measure<B>(state, n, elements + 0.125,
               [&] { B::ste_backward(dy.data(), mask.data(), format, n, dx.data()); });
  else
    measure<B>(state, n, elements + 0.25, [&] {
      B::ste_backward_range(dy.data(), mask.data(), layout, dx.data(), d_min.data(), d_max.data(),
                            workspace<B>(ws));
    });
}

// exact reads x twice (batch range, then quantize): 12.125 B/elem; lagged
// reads it once: 8.125 B/elem (bf16: 6.125 and 4.125).
template <class B, class E = float>
void bench_ema_fake_quant(benchmark::State& state, std::int64_t n, int bits, EmaMode mode) {
  const Buf<B, E> x(as_elements<E>(inputs(n)));
  Buf<B, E> y(n);
  Buf<B, std::uint32_t> mask(lowbit::mask_words(n));
  Buf<B, lowbit::EmaRangeState> ema(1);
  B::ema_state_init(ema.data());
  lowbit::EmaConfig config;
  config.quant = lowbit::RangeQuant{bits, false};
  config.mode = mode;
  // The warm-up call makes the first update, so lagged mode quantizes too.
  const double passes = mode == EmaMode::exact ? 3 : 2;  // x read (twice), y written
  measure<B>(state, n, passes * kElementBytes<E> + 0.125, [&] {
    B::ema_fake_quant(x.data(), y.data(), n, ema.data(), config, mask.data(), MaskFormat::pass,
                      nullptr);
  });
}

// Weights [64, n/64] on axis 0, symmetric, narrow. Range, then quantize: read
// w twice, write y (12 B/elem). No mask: the range is the weights' own.
template <class B>
void bench_fake_quant_weights(benchmark::State& state, std::int64_t n, int bits) {
  const ChannelLayout layout{1, 64, n / 64};
  const Buf<B, float> w(inputs(n));
  Buf<B, float> y(n), min(layout.channels), max(layout.channels);
  Buf<B, std::byte> ws(lowbit::reduction_workspace_bytes(layout));
  measure<B>(state, n, 12.0, [&] {
    B::fake_quant_weights(w.data(), y.data(), layout, lowbit::RangeQuant{bits, true}, true,
                          min.data(), max.data(), nullptr, workspace<B>(ws));
  });
}

// Per tensor. Forward: read x, write y (8 B/elem). Backward: read dy and x,
// write dx (12 B/elem); d_scale is one float.
template <class B>
void bench_lsq(benchmark::State& state, std::int64_t n, int bits, bool backward) {
  const ChannelLayout layout = ChannelLayout::per_tensor(n);
  const auto quant = lowbit::LsqQuant::signed_bits(bits);
  const Buf<B, float> x(inputs(n)), dy(grads(n)),
      scale(std::vector<float>{2.5f / static_cast<float>(quant.qmax)});
  Buf<B, float> out(n), d_scale(1);
  Buf<B, std::byte> ws(lowbit::reduction_workspace_bytes(layout));
  if (!backward)
    measure<B>(state, n, 8.0,
               [&] { B::lsq_forward(x.data(), out.data(), layout, scale.data(), quant, nullptr); });
  else
    measure<B>(state, n, 12.0, [&] {
      B::lsq_backward(dy.data(), x.data(), layout, scale.data(), quant, out.data(), d_scale.data(),
                      workspace<B>(ws));
    });
}

// One byte per code on one side, bits/8 bytes on the other.
template <class B>
void bench_pack(benchmark::State& state, std::int64_t n, int bits, bool unpack) {
  Buf<B, std::uint8_t> unpacked(codes(n, bits)), packed(lowbit::packed_bytes(n, bits));
  B::pack_codes(unpacked.data(), n, bits, packed.data());
  const double bytes_per_elem = 1.0 + bits / 8.0;
  if (unpack)
    measure<B>(state, n, bytes_per_elem,
               [&] { B::unpack_codes(packed.data(), n, bits, unpacked.data()); });
  else
    measure<B>(state, n, bytes_per_elem,
               [&] { B::pack_codes(unpacked.data(), n, bits, packed.data()); });
}

// ---------------------------------------------------------------------------
// Registration

template <class B, class Body>
void add(const std::string& name, Body body) {
  auto* bench = lowbit::bench::add_guarded(std::string(B::kLabel) + "/" + name, body);
  bench->Unit(benchmark::kMicrosecond);
  if constexpr (std::is_same_v<B, Gpu>)
    bench->UseManualTime();
  else
    bench->UseRealTime();
}

std::string suffix(int bits, std::int64_t n) {
  return (bits > 0 ? "/bits:" + std::to_string(bits) : std::string()) + "/n:" + std::to_string(n);
}

/// B's ops, after the baselines they are measured against: the copy and our
/// fp32 pass (the reference has none of its own: the CPU backend's count).
template <class B>
void register_all(const std::vector<std::int64_t>& sizes, const std::vector<int>& widths) {
  using State = benchmark::State;
  if constexpr (!std::is_same_v<B, Ref>) {
    for (const std::int64_t n : sizes)
      add<B>("copy" + suffix(0, n), [n](State& s) { bench_copy<B>(s, n); });
    for (const std::int64_t n : sizes)
      add<B>("fp32_bias_relu" + suffix(0, n), [n](State& s) { bench_fp32_bias_relu<B>(s, n); });
  }
  // The STE backward reads only the mask, not the width: one per size.
  for (const std::int64_t n : sizes) {
    add<B>("ste_backward/pass" + suffix(0, n),
           [n](State& s) { bench_ste_backward<B>(s, n, MaskFormat::pass); });
    add<B>("ste_backward_range/sides" + suffix(0, n),
           [n](State& s) { bench_ste_backward<B>(s, n, MaskFormat::sides); });
    add<B>("ste_backward/pass/bf16" + suffix(0, n),
           [n](State& s) { bench_ste_backward<B, bf16>(s, n, MaskFormat::pass); });
    add<B>("ste_backward_range/sides/bf16" + suffix(0, n),
           [n](State& s) { bench_ste_backward<B, bf16>(s, n, MaskFormat::sides); });
  }
  for (const int bits : widths) {
    for (const std::int64_t n : sizes) {
      const std::string tail = suffix(bits, n);
      for (const bool channels : {false, true}) {
        const std::string layout = channels ? "/per_channel" : "/per_tensor";
        add<B>("fake_quant_range" + layout + tail,
               [=](State& s) { bench_fake_quant_range<B>(s, n, bits, channels); });
        add<B>("fake_quant_affine" + layout + tail,
               [=](State& s) { bench_fake_quant_affine<B>(s, n, bits, channels); });
        add<B>("fake_quant_range" + layout + "/bf16" + tail,
               [=](State& s) { bench_fake_quant_range<B, bf16>(s, n, bits, channels); });
        add<B>("fake_quant_affine" + layout + "/bf16" + tail,
               [=](State& s) { bench_fake_quant_affine<B, bf16>(s, n, bits, channels); });
      }
      add<B>("ema_fake_quant/exact" + tail,
             [=](State& s) { bench_ema_fake_quant<B>(s, n, bits, EmaMode::exact); });
      add<B>("ema_fake_quant/lagged" + tail,
             [=](State& s) { bench_ema_fake_quant<B>(s, n, bits, EmaMode::lagged); });
      add<B>("ema_fake_quant/exact/bf16" + tail,
             [=](State& s) { bench_ema_fake_quant<B, bf16>(s, n, bits, EmaMode::exact); });
      add<B>("ema_fake_quant/lagged/bf16" + tail,
             [=](State& s) { bench_ema_fake_quant<B, bf16>(s, n, bits, EmaMode::lagged); });
      add<B>("fake_quant_weights/per_channel" + tail,
             [=](State& s) { bench_fake_quant_weights<B>(s, n, bits); });
      add<B>("lsq_forward" + tail, [=](State& s) { bench_lsq<B>(s, n, bits, false); });
      add<B>("lsq_backward" + tail, [=](State& s) { bench_lsq<B>(s, n, bits, true); });
      if (bits > 8) continue;  // codes are packed at 2, 4 and 8 bits only
      add<B>("pack_codes" + tail, [=](State& s) { bench_pack<B>(s, n, bits, false); });
      add<B>("unpack_codes" + tail, [=](State& s) { bench_pack<B>(s, n, bits, true); });
    }
  }
}

std::string version(int v) {
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}

/// Names the card and CUDA versions in the output's context; returns L2 bytes.
std::size_t add_gpu_context() {
  int device = 0, driver = 0, runtime = 0;
  cudaDeviceProp prop{};
  LOWBIT_CUDA_TRY(cudaGetDevice(&device));
  LOWBIT_CUDA_TRY(cudaGetDeviceProperties(&prop, device));
  LOWBIT_CUDA_TRY(cudaDriverGetVersion(&driver));
  LOWBIT_CUDA_TRY(cudaRuntimeGetVersion(&runtime));
  benchmark::AddCustomContext("gpu", prop.name);
  benchmark::AddCustomContext("gpu_compute_capability",
                              std::to_string(prop.major) + "." + std::to_string(prop.minor));
  benchmark::AddCustomContext("gpu_sm_count", std::to_string(prop.multiProcessorCount));
  benchmark::AddCustomContext("gpu_l2_bytes", std::to_string(prop.l2CacheSize));
  benchmark::AddCustomContext("cuda_driver", version(driver));
  benchmark::AddCustomContext("cuda_runtime", version(runtime));
  return static_cast<std::size_t>(prop.l2CacheSize);
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<DeviceBuffer<std::byte>> l2_flush;  // outlives every benchmark
  return lowbit::bench::run_benchmarks(argc, argv, [&] {
    if (lowbit::cuda::device_available()) {
      Gpu::l2_flush = &l2_flush.emplace(2 * add_gpu_context());
      register_all<Gpu>({1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 26}, {2, 4, 8, 16});
    } else {
      benchmark::AddCustomContext(
          "backend", "cpu: lowbit::cpu on every core, beside lowbit::ref (no CUDA device)");
      const std::vector<std::int64_t> sizes = {1 << 16, 1 << 20, 1 << 24};
      register_all<Cpu>(sizes, {2, 4, 8, 16});
      register_all<Ref>(sizes, {2, 4, 8, 16});
    }
  });
}
