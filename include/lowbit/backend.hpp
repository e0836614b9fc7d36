// lowbit::Backend — the one interface through which the layer graph computes.
// Two implementations: the CPU reference (plain loops, OpenMP) and CUDA
// (cuDNN, cuBLAS and the lowbit kernels on one stream). No CUDA type appears
// here, so layers and the trainer compile without the CUDA headers.
//
// Pointers passed to a backend point into memory it allocated. Calls are
// queued in order; only download() and synchronize() wait for them. Nothing
// allocates after setup, so a training step can be captured and replayed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lowbit/types.hpp"

namespace lowbit {

enum class DeviceKind { cpu, cuda };

/// Move-only owner of one allocation in a backend's memory.
class Buffer {
 public:
  using Release = void (*)(void*) noexcept;
  Buffer() = default;
  Buffer(void* data, std::size_t bytes, Release release) noexcept;
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  Workspace as_workspace() const { return {data_, bytes_}; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  Release release_ = nullptr;
};

/// A recorded training step: replay() runs it again (a CUDA graph on the GPU).
class StepGraph {
 public:
  virtual ~StepGraph() = default;
  virtual void replay() = 0;
};

/// Timestamps taken in queue order, for benchmarks that split a step into
/// stages: CUDA events on the GPU, the host clock on the CPU (whose calls are
/// done when they return).
class Timeline {
 public:
  virtual ~Timeline() = default;
  /// Queues a timestamp; throws lowbit::Error beyond the capacity.
  virtual void stamp() = 0;
  /// Milliseconds from each stamp to the next, once the queued work is done;
  /// then starts again with no stamps.
  virtual std::vector<double> take_intervals_ms() = 0;
};

/// Fully connected layer: x [batch, in], w [out, in] (PyTorch's layout).
struct LinearShape {
  std::int64_t batch = 1, in_features = 1, out_features = 1;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual DeviceKind kind() const = 0;
  /// For logs: "cpu (2 threads)", "cuda: NVIDIA H200 (sm_90)".
  virtual std::string description() const = 0;

  // ---- Memory ----
  /// Zero-filled memory. Throws lowbit::Error when it cannot allocate.
  virtual Buffer allocate(std::size_t bytes) = 0;
  virtual void upload(void* dst, const void* host_src, std::size_t bytes) = 0;
  /// Waits for the queued work, then copies to the host.
  virtual void download(void* host_dst, const void* src, std::size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, std::size_t bytes) = 0;
  virtual void fill_zero(void* dst, std::size_t bytes) = 0;
  virtual void synchronize() = 0;
  /// Records the work `step` queues, without running it, and returns a
  /// graph whose replay() runs it (a CUDA graph; on the CPU, `step` itself).
  /// Everything `step` touches must be set up by an earlier eager call.
  virtual std::unique_ptr<StepGraph> capture(const std::function<void()>& step) = 0;
  /// A timeline of up to `capacity` stamps (not for use inside capture()).
  virtual std::unique_ptr<Timeline> make_timeline(std::size_t capacity) = 0;

  // ---- Convolution, pooling, fully connected (no bias: bias_activation adds it) ----
  /// y[n,k] = Σ_{c,r,s} x[n,c,oy·stride+r-pad, ox·stride+s-pad]·w[k,c,r,s]
  virtual void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, float* y) = 0;
  /// dx (skipped when null) and dw of conv2d_forward; both are overwritten.
  virtual void conv2d_backward(const Conv2dShape& s, const float* x, const float* w,
                               const float* dy, float* dx, float* dw) = 0;
  /// y[b,o] = Σ_i x[b,i]·w[o,i]
  virtual void linear_forward(const LinearShape& s, const float* x, const float* w, float* y) = 0;
  /// dx = dy·w (skipped when null), dw = dyᵀ·x; both are overwritten.
  virtual void linear_backward(const LinearShape& s, const float* x, const float* w,
                               const float* dy, float* dx, float* dw) = 0;
  /// y = the first maximum of each window (ref::max_pool_forward's rule, on
  /// both backends bit for bit).
  virtual void max_pool_forward(const Pool2dShape& s, const float* x, float* y) = 0;
  /// dx gets dy at the first maximum of each window, 0 elsewhere (overlapping
  /// windows add in one fixed order: ref::max_pool_backward).
  virtual void max_pool_backward(const Pool2dShape& s, const float* x, const float* y,
                                 const float* dy, float* dx) = 0;

  // ---- Integer inference (ref.hpp documents each) ----
  virtual void integer_conv2d(const Conv2dShape& s, const std::uint8_t* x,
                              std::int32_t x_zero_point, int x_fraction_bits, const std::uint8_t* w,
                              const std::int32_t* w_zero_point, const std::int32_t* bias,
                              int accumulator_shift, const Requantization& r, std::uint8_t* y) = 0;
  virtual void max_pool_codes(const Pool2dShape& s, const std::uint8_t* x, std::uint8_t* y) = 0;

  // ---- lowbit kernels (ref.hpp documents each) ----
  virtual void bias_activation(const float* x, const float* bias, const ChannelLayout& layout,
                               bool relu, float* y) = 0;
  virtual void bias_activation_backward(const float* dy, const float* y,
                                        const ChannelLayout& layout, bool relu,
                                        const std::uint32_t* pass_mask, float* dx,
                                        float* d_bias, Workspace workspace) = 0;
  virtual void bias_relu_ema_fake_quant(const float* x, const float* bias,
                                        const ChannelLayout& layout, float* y, EmaRangeState* state,
                                        const EmaConfig& config, std::uint32_t* mask,
                                        ClipCount* clip_count) = 0;
  virtual void add(const float* a, const float* b, std::int64_t n, float* y) = 0;
  virtual void softmax_cross_entropy(const float* logits, const std::int32_t* labels,
                                     std::int64_t batch, int classes, float* d_logits,
                                     LossTotals* totals) = 0;
  virtual void sgd_step(float* params, const float* grads, float* velocity, std::int64_t n,
                        std::int64_t decay_count, SgdConfig config) = 0;
  virtual std::size_t shuffle_workspace_bytes(std::int64_t n) const = 0;
  virtual void shuffle_indices(std::uint64_t seed, std::int64_t epoch, std::int64_t n,
                               std::int32_t* perm, Workspace workspace) = 0;
  virtual void gather_batch(const std::uint8_t* images, const std::uint8_t* labels,
                            std::int64_t n, std::int64_t example_size, const std::int32_t* perm,
                            const std::int64_t* cursor, std::int64_t batch, Normalization norm,
                            float* x, std::int32_t* labels_out) = 0;
  virtual void advance_cursor(std::int64_t* cursor) = 0;

  virtual void fake_quant_affine(const float* x, float* y, const ChannelLayout& layout,
                                 const float* scale, const std::int32_t* zero_point,
                                 AffineQuant quant, std::uint32_t* mask, ClipCount* clip_count) = 0;
  virtual void ste_backward(const float* dy, const std::uint32_t* mask, MaskFormat mask_format,
                            std::int64_t n, float* dx) = 0;
  virtual void ema_state_init(EmaRangeState* state) = 0;
  virtual void ema_fake_quant(const float* x, float* y, std::int64_t n, EmaRangeState* state,
                              const EmaConfig& config, std::uint32_t* mask,
                              ClipCount* clip_count) = 0;
  virtual void weight_range(const float* w, const ChannelLayout& layout, bool symmetric,
                            float* min, float* max, Workspace workspace) = 0;
  virtual void fake_quant_weights(const float* w, float* y, const ChannelLayout& layout,
                                  RangeQuant quant, bool symmetric, float* min, float* max,
                                  std::uint32_t* mask, Workspace workspace) = 0;
  virtual void quant_delay_identity(const float* x, float* y, std::int64_t n,
                                    const std::int64_t* step, std::int64_t quant_delay,
                                    std::uint32_t* mask) = 0;
  virtual void affine_params_from_range(const float* min, const float* max,
                                        std::int64_t channels, AffineQuant quant,
                                        bool symmetric, float* scale,
                                        std::int32_t* zero_point) = 0;
  virtual void lsq_forward(const float* x, float* y, const ChannelLayout& layout,
                           const float* scale, LsqQuant quant, ClipCount* clip_count) = 0;
  virtual void lsq_backward(const float* dy, const float* x, const ChannelLayout& layout,
                            const float* scale, LsqQuant quant, float* dx, float* d_scale,
                            Workspace workspace) = 0;
  virtual void lsq_init_scale(const float* x, const ChannelLayout& layout, LsqQuant quant,
                              float* scale, Workspace workspace) = 0;
};

/// The CPU reference backend on `threads` OpenMP threads (0: the calling
/// thread's OpenMP setting, one per core unless OMP_NUM_THREADS says
/// otherwise). Results do not depend on the thread count.
std::unique_ptr<Backend> make_cpu_backend(int threads = 0);

/// The CUDA backend on the current device. Throws lowbit::Error, saying why,
/// when no usable device is present.
std::unique_ptr<Backend> make_cuda_backend();

/// Why the CUDA backend cannot run here ("no CUDA device found", or the CUDA
/// runtime's error); empty when a usable device is present.
std::string cuda_device_problem();

}  // namespace lowbit
