// The CUDA backend: cuDNN convolutions, cuBLAS GEMMs and the lowbit kernels
// (max pooling too: cuDNN's tie rule in the backward is undocumented, and
// after ReLU and n-bit quantization ties are common), all on one non-blocking
// stream that the backend owns.
//
// Capture: nothing may allocate while a step is recorded into a CUDA graph.
// Descriptors and cuDNN workspaces are therefore created per shape, lazily, on
// the first call of that shape, and kept for the backend's lifetime; the
// cuBLAS workspace is allocated with the backend. The trainer runs one eager
// step before it captures; a shape first seen during capture() is an error.
//
// Determinism: per convolution shape, the first algorithm of cuDNN's ranking
// that is deterministic (no atomics) and on FMA math (conv_algorithm.hpp),
// chosen with the shape's descriptors, outside any capture; cuBLAS without
// atomics on one stream and one workspace. Plain FP32 (FMA) math everywhere,
// no TF32, so results stay within float rounding of the CPU reference; max
// pooling and the other lowbit kernels equal it bit for bit.
//
// cuDNN 9 marks this legacy convolution API CUDNN_DEPRECATED, but its headers
// only turn that into a warning when CUDNN_WARN_DEPRECATED is defined, which
// lowbit never does: nothing needs silencing here.
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backends/cuda/conv_algorithm.hpp"
#include "backends/cuda/cublas_handle.hpp"
#include "backends/cuda/cudnn_objects.hpp"
#include "backends/cuda/stream.hpp"
#include "lowbit/backend.hpp"
#include "lowbit/cuda.hpp"
#include "lowbit/error.hpp"

namespace lowbit {
namespace {

// cuBLAS's recommended workspace on Hopper (4 MiB suffices on older GPUs).
constexpr std::size_t kCublasWorkspaceBytes = std::size_t{32} << 20;

constexpr float kOne = 1.0f;
constexpr float kZero = 0.0f;

void release_device_memory(void* data) noexcept {
  gpu::log_if_failed(cudaFree(data), "cudaFree");
}

[[noreturn]] void throw_out_of_memory(std::size_t bytes) {
  std::size_t free_bytes = 0;
  std::size_t total_bytes = 0;
  const bool known = cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess;
  // The failed cudaMalloc is also the runtime's "last error"; clear it so the
  // next launch check does not report it again.
  (void)cudaGetLastError();
  const std::string memory = known ? "free " + std::to_string(free_bytes >> 20) + " MiB of " +
                                         std::to_string(total_bytes >> 20) + " MiB"
                                   : "free memory unknown";
  throw Error("out of GPU memory: cannot allocate " + std::to_string(bytes) + " bytes (" +
                  memory + ")",
              __FILE__, __LINE__);
}

std::string describe_device(int device) {
  cudaDeviceProp properties{};
  LOWBIT_CUDA_TRY(cudaGetDeviceProperties(&properties, device));
  const std::size_t cudnn = cudnnGetVersion();  // major·10000 + minor·100 + patch
  return std::string("cuda: ") + properties.name + " (sm_" + std::to_string(properties.major) +
         std::to_string(properties.minor) + ", " +
         std::to_string(properties.totalGlobalMem >> 20) + " MB), cuDNN " +
         std::to_string(cudnn / 10000) + "." + std::to_string(cudnn / 100 % 100) + "." +
         std::to_string(cudnn % 100);
}

int current_device() {
  int device = 0;
  LOWBIT_CUDA_TRY(cudaGetDevice(&device));
  return device;
}

/// cuDNN and cuBLAS take int sizes.
int to_int(std::int64_t value) { return static_cast<int>(value); }

std::string describe(const Conv2dShape& s) {
  return "conv2d [" + std::to_string(s.batch) + ", " + std::to_string(s.in_channels) + ", " +
         std::to_string(s.height) + ", " + std::to_string(s.width) + "] -> " +
         std::to_string(s.out_channels) + " channels, kernel " + std::to_string(s.kernel) +
         ", stride " + std::to_string(s.stride) + ", padding " + std::to_string(s.padding);
}

std::string describe(const Pool2dShape& s) {
  return "max_pool [" + std::to_string(s.batch) + ", " + std::to_string(s.channels) + ", " +
         std::to_string(s.height) + ", " + std::to_string(s.width) + "], kernel " +
         std::to_string(s.kernel) + ", stride " + std::to_string(s.stride);
}

std::string describe(const LinearShape& s) {
  return "linear [" + std::to_string(s.batch) + ", " + std::to_string(s.in_features) + "] -> " +
         std::to_string(s.out_features);
}

std::string first_call(const std::string& op) {
  return "the first call of " + op +
         " (it creates descriptors and workspace: run one eager step of the same shapes "
         "before capturing)";
}

bool fits_int(std::int64_t value) { return value >= 1 && value <= INT_MAX; }

void check_shape(const Conv2dShape& s) {
  LOWBIT_EXPECTS(fits_int(s.batch) && fits_int(s.in_channels) && fits_int(s.height) &&
                     fits_int(s.width) && fits_int(s.out_channels) && fits_int(s.kernel) &&
                     fits_int(s.stride) && s.padding >= 0 && s.padding < INT_MAX,
                 describe(s) + ": sizes and stride must be in 1..INT_MAX, padding >= 0");
  LOWBIT_EXPECTS(s.height + 2 * s.padding >= s.kernel && s.width + 2 * s.padding >= s.kernel,
                 describe(s) + ": the kernel is larger than the padded input");
  LOWBIT_EXPECTS(fits_int(s.out_height()) && fits_int(s.out_width()),
                 describe(s) + ": the output is too large");
}

void check_shape(const Pool2dShape& s) {
  LOWBIT_EXPECTS(fits_int(s.batch) && fits_int(s.channels) && fits_int(s.height) &&
                     fits_int(s.width) && fits_int(s.kernel) && fits_int(s.stride),
                 describe(s) + ": sizes and stride must be in 1..INT_MAX");
  LOWBIT_EXPECTS(s.height >= s.kernel && s.width >= s.kernel,
                 describe(s) + ": the window is larger than the input");
}

void check_shape(const LinearShape& s) {
  LOWBIT_EXPECTS(fits_int(s.batch) && fits_int(s.in_features) && fits_int(s.out_features),
                 describe(s) + ": sizes must be in 1..INT_MAX");
}

void check_pointers(std::initializer_list<const void*> pointers, const std::string& op) {
  for (const void* p : pointers) LOWBIT_EXPECTS(p != nullptr, op + ": a tensor pointer is null");
}

/// Descriptors and workspace of one convolution shape (forward and backward).
struct ConvPlan {
  gpu::TensorDescriptor x;
  gpu::FilterDescriptor w;
  gpu::TensorDescriptor y;
  gpu::ConvolutionDescriptor conv;
  cudnnConvolutionFwdAlgo_t forward{};
  cudnnConvolutionBwdDataAlgo_t backward_data{};
  cudnnConvolutionBwdFilterAlgo_t backward_filter{};
  Buffer workspace;
};

using ConvKey = std::array<std::int64_t, 8>;

/// A captured step. It replays on its backend's stream with that backend's
/// workspaces, so it must not outlive the backend that captured it.
class CudaStepGraph final : public StepGraph {
 public:
  CudaStepGraph(gpu::GraphExec exec, cudaStream_t stream)
      : exec_(std::move(exec)), stream_(stream) {}
  void replay() override { LOWBIT_CUDA_TRY(cudaGraphLaunch(exec_.get(), stream_)); }

 private:
  gpu::GraphExec exec_;
  cudaStream_t stream_;
};

/// Events recorded on the backend's stream; created up front, so stamping
/// costs one cudaEventRecord.
class CudaTimeline final : public Timeline {
 public:
  CudaTimeline(std::size_t capacity, cudaStream_t stream) : stream_(stream) {
    for (std::size_t i = 0; i < capacity; ++i) events_.push_back(gpu::make_timing_event());
  }

  void stamp() override {
    LOWBIT_EXPECTS(used_ < events_.size(),
                   "cuda timeline: more than " + std::to_string(events_.size()) + " stamps");
    LOWBIT_CUDA_TRY(cudaEventRecord(events_[used_].get(), stream_));
    ++used_;
  }

  std::vector<double> take_intervals_ms() override {
    std::vector<double> intervals;
    if (used_ > 0) LOWBIT_CUDA_TRY(cudaEventSynchronize(events_[used_ - 1].get()));
    for (std::size_t i = 1; i < used_; ++i) {
      float ms = 0.0f;
      LOWBIT_CUDA_TRY(cudaEventElapsedTime(&ms, events_[i - 1].get(), events_[i].get()));
      intervals.push_back(ms);
    }
    used_ = 0;
    return intervals;
  }

 private:
  cudaStream_t stream_;
  std::vector<gpu::Event> events_;
  std::size_t used_ = 0;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend()
      : stream_(gpu::make_non_blocking_stream()),
        cudnn_(gpu::make_cudnn_handle(stream_.get())),
        cublas_workspace_(allocate(kCublasWorkspaceBytes)),
        cublas_(gpu::make_cublas_handle(stream_.get(), cublas_workspace_.data(),
                                        cublas_workspace_.bytes())),
        description_(describe_device(current_device())) {}

  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  ~CudaBackend() override {
    // Queued work may still use the workspaces that are freed next.
    gpu::log_if_failed(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize");
  }

  DeviceKind kind() const override { return DeviceKind::cuda; }
  std::string description() const override { return description_; }

  // ---- Memory ----

  Buffer allocate(std::size_t bytes) override {
    expect_not_capturing("allocate()");
    if (bytes == 0) return Buffer();
    void* data = nullptr;
    const cudaError_t status = cudaMalloc(&data, bytes);
    if (status == cudaErrorMemoryAllocation) throw_out_of_memory(bytes);
    if (status != cudaSuccess) {
      (void)cudaGetLastError();  // as for out of memory: reported here, not again later
      throw Error(std::string("cudaMalloc of ") + std::to_string(bytes) +
                      " bytes failed: " + cudaGetErrorName(status) + ": " +
                      cudaGetErrorString(status),
                  __FILE__, __LINE__);
    }
    Buffer buffer(data, bytes, &release_device_memory);
    // Queued on the stream, so the memory is zero for all work queued later.
    LOWBIT_CUDA_TRY(cudaMemsetAsync(data, 0, bytes, stream_.get()));
    return buffer;
  }

  void upload(void* dst, const void* host_src, std::size_t bytes) override {
    // A capture would record the host pointer, not the data it holds now.
    expect_not_capturing("upload()");
    // From pageable memory (std::vector and the like) the data is staged
    // before this returns, so the caller may reuse host_src at once.
    if (bytes == 0) return;
    LOWBIT_CUDA_TRY(
        cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_.get()));
  }

  void download(void* host_dst, const void* src, std::size_t bytes) override {
    expect_not_capturing("download()");
    if (bytes == 0) return;
    LOWBIT_CUDA_TRY(
        cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_.get()));
    LOWBIT_CUDA_TRY(cudaStreamSynchronize(stream_.get()));
  }

  void copy(void* dst, const void* src, std::size_t bytes) override {
    if (bytes == 0) return;
    LOWBIT_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_.get()));
  }

  void fill_zero(void* dst, std::size_t bytes) override {
    if (bytes == 0) return;
    LOWBIT_CUDA_TRY(cudaMemsetAsync(dst, 0, bytes, stream_.get()));
  }

  void synchronize() override {
    expect_not_capturing("synchronize()");
    LOWBIT_CUDA_TRY(cudaStreamSynchronize(stream_.get()));
  }

  std::unique_ptr<StepGraph> capture(const std::function<void()>& step) override {
    expect_not_capturing("capture()");
    // Thread-local: an unsafe call (a cudaMalloc, a sync) from this thread
    // fails the capture, calls from other threads are not affected.
    LOWBIT_CUDA_TRY(cudaStreamBeginCapture(stream_.get(), cudaStreamCaptureModeThreadLocal));
    capturing_ = true;
    try {
      step();
    } catch (...) {
      abandon_capture();
      throw;
    }
    capturing_ = false;
    cudaGraph_t raw = nullptr;
    LOWBIT_CUDA_TRY(cudaStreamEndCapture(stream_.get(), &raw));
    const gpu::Graph graph(raw);
    return std::make_unique<CudaStepGraph>(gpu::instantiate(graph), stream_.get());
  }

  std::unique_ptr<Timeline> make_timeline(std::size_t capacity) override {
    expect_not_capturing("make_timeline()");
    return std::make_unique<CudaTimeline>(capacity, stream_.get());
  }

  // ---- Convolution (cuDNN), NCHW float ----

  void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, float* y) override {
    check_shape(s);
    check_pointers({x, w, y}, describe(s));
    const ConvPlan& p = conv_plan(s);
    // y = conv(x, w): x [N,C,H,W], w [K,C,R,S] -> y [N,K,OH,OW]
    LOWBIT_CUDNN_TRY(cudnnConvolutionForward(cudnn_.get(), &kOne, p.x.get(), x, p.w.get(), w,
                                             p.conv.get(), p.forward, p.workspace.data(),
                                             p.workspace.bytes(), &kZero, p.y.get(), y));
  }

  void conv2d_backward(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                       float* dx, float* dw) override {
    check_shape(s);
    check_pointers({x, w, dy, dw}, describe(s));
    const ConvPlan& p = conv_plan(s);
    if (dx != nullptr) {
      // dx = conv_transpose(dy, w): dy [N,K,OH,OW], w [K,C,R,S] -> dx [N,C,H,W]
      LOWBIT_CUDNN_TRY(cudnnConvolutionBackwardData(
          cudnn_.get(), &kOne, p.w.get(), w, p.y.get(), dy, p.conv.get(), p.backward_data,
          p.workspace.data(), p.workspace.bytes(), &kZero, p.x.get(), dx));
    }
    // dw[k,c,r,s] = Σ_{n,oy,ox} dy[n,k,oy,ox]·x[n,c,oy·stride+r-pad, ox·stride+s-pad]
    LOWBIT_CUDNN_TRY(cudnnConvolutionBackwardFilter(
        cudnn_.get(), &kOne, p.x.get(), x, p.y.get(), dy, p.conv.get(), p.backward_filter,
        p.workspace.data(), p.workspace.bytes(), &kZero, p.w.get(), dw));
  }

  // ---- Fully connected (cuBLAS) ----
  // Row-major A[r,c] is column-major Aᵀ with leading dimension c, so each
  // row-major product is computed as its transpose: (X·W)ᵀ = Wᵀ·Xᵀ.

  void linear_forward(const LinearShape& s, const float* x, const float* w, float* y) override {
    check_shape(s);
    check_pointers({x, w, y}, describe(s));
    const int batch = to_int(s.batch), in = to_int(s.in_features), out = to_int(s.out_features);
    // y[B,O] = x[B,F]·wᵀ as yᵀ[O,B] = (wᵀ[F,O])ᵀ·xᵀ[F,B]: gemm(T, N, O, B, F), ld F, F, O
    LOWBIT_CUBLAS_TRY(cublasSgemm(cublas_.get(), CUBLAS_OP_T, CUBLAS_OP_N, out, batch, in, &kOne,
                                  w, in, x, in, &kZero, y, out));
  }

  void linear_backward(const LinearShape& s, const float* x, const float* w, const float* dy,
                       float* dx, float* dw) override {
    check_shape(s);
    check_pointers({x, w, dy, dw}, describe(s));
    const int batch = to_int(s.batch), in = to_int(s.in_features), out = to_int(s.out_features);
    if (dx != nullptr) {
      // dx[B,F] = dy[B,O]·w[O,F] as dxᵀ[F,B] = wᵀ[F,O]·dyᵀ[O,B]: gemm(N, N, F, B, O), ld F, O, F
      LOWBIT_CUBLAS_TRY(cublasSgemm(cublas_.get(), CUBLAS_OP_N, CUBLAS_OP_N, in, batch, out,
                                    &kOne, w, in, dy, out, &kZero, dx, in));
    }
    // dw[O,F] = dyᵀ·x[B,F] as dwᵀ[F,O] = xᵀ[F,B]·(dyᵀ[O,B])ᵀ: gemm(N, T, F, O, B), ld F, O, F
    LOWBIT_CUBLAS_TRY(cublasSgemm(cublas_.get(), CUBLAS_OP_N, CUBLAS_OP_T, in, out, batch, &kOne,
                                  x, in, dy, out, &kZero, dw, in));
  }

  // ---- Max pooling (lowbit's kernels: the CPU's first-maximum rule, bit for bit) ----

  void max_pool_forward(const Pool2dShape& s, const float* x, float* y) override {
    check_shape(s);
    check_pointers({x, y}, describe(s));
    cuda::max_pool_forward(s, x, y, stream_.get());
  }

  // The maxima are found again in x, so y is not needed.
  void max_pool_backward(const Pool2dShape& s, const float* x, const float*, const float* dy,
                         float* dx) override {
    check_shape(s);
    check_pointers({x, dy, dx}, describe(s));
    cuda::max_pool_backward(s, x, dy, dx, stream_.get());
  }
  void integer_conv2d(const Conv2dShape& s, const std::uint8_t* x, std::int32_t x_zero_point, int x_fraction_bits,
                      const std::uint8_t* w, const std::int32_t* w_zero_point,
                      const std::int32_t* bias, int accumulator_shift, const Requantization& r,
                      std::uint8_t* y) override {
    cuda::integer_conv2d(s, x, x_zero_point, x_fraction_bits, w, w_zero_point, bias, accumulator_shift, r, y,
                         stream_.get());
  }
  void max_pool_codes(const Pool2dShape& s, const std::uint8_t* x, std::uint8_t* y) override {
    cuda::max_pool_codes(s, x, y, stream_.get());
  }

  // ---- lowbit kernels ----

  void bias_activation(const float* x, const float* bias, const ChannelLayout& layout, bool relu,
                       float* y) override {
    cuda::bias_activation(x, bias, layout, relu, y, stream_.get());
  }
  void bias_activation_backward(const float* dy, const float* y, const ChannelLayout& layout,
                                bool relu, const std::uint32_t* pass_mask, float* dx,
                                float* d_bias, Workspace workspace) override {
    cuda::bias_activation_backward(dy, y, layout, relu, pass_mask, dx, d_bias, workspace,
                                   stream_.get());
  }
  void bias_relu_ema_fake_quant(const float* x, const float* bias, const ChannelLayout& layout,
                                float* y, EmaRangeState* state, const EmaConfig& config,
                                std::uint32_t* mask, ClipCount* clip_count) override {
    cuda::bias_relu_ema_fake_quant(x, bias, layout, y, state, config, mask, clip_count,
                                   stream_.get());
  }
  void add(const float* a, const float* b, std::int64_t n, float* y) override {
    cuda::add(a, b, n, y, stream_.get());
  }
  void softmax_cross_entropy(const float* logits, const std::int32_t* labels, std::int64_t batch,
                             int classes, float* d_logits, LossTotals* totals) override {
    cuda::softmax_cross_entropy(logits, labels, batch, classes, d_logits, totals, stream_.get());
  }
  void sgd_step(float* params, const float* grads, float* velocity, std::int64_t n,
                std::int64_t decay_count, SgdConfig config) override {
    cuda::sgd_step(params, grads, velocity, n, decay_count, config, stream_.get());
  }
  std::size_t shuffle_workspace_bytes(std::int64_t n) const override {
    return cuda::shuffle_workspace_bytes(n);
  }
  void shuffle_indices(std::uint64_t seed, std::int64_t epoch, std::int64_t n,
                       std::int32_t* perm, Workspace workspace) override {
    cuda::shuffle_indices(seed, epoch, n, perm, workspace, stream_.get());
  }
  void gather_batch(const std::uint8_t* images, const std::uint8_t* labels, std::int64_t n,
                    std::int64_t example_size, const std::int32_t* perm,
                    const std::int64_t* cursor, std::int64_t batch, Normalization norm, float* x,
                    std::int32_t* labels_out) override {
    cuda::gather_batch(images, labels, n, example_size, perm, cursor, batch, norm, x, labels_out,
                       stream_.get());
  }
  void advance_cursor(std::int64_t* cursor) override {
    cuda::advance_cursor(cursor, stream_.get());
  }
  void fake_quant_affine(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                         const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask,
                         ClipCount* clip_count) override {
    cuda::fake_quant_affine(x, y, layout, scale, zero_point, quant, mask, clip_count,
                            stream_.get());
  }
  void ste_backward(const float* dy, const std::uint32_t* mask, MaskFormat mask_format,
                    std::int64_t n, float* dx) override {
    cuda::ste_backward(dy, mask, mask_format, n, dx, stream_.get());
  }
  void ema_state_init(EmaRangeState* state) override {
    cuda::ema_state_init(state, stream_.get());
  }
  void ema_fake_quant(const float* x, float* y, std::int64_t n, EmaRangeState* state,
                      const EmaConfig& config, std::uint32_t* mask,
                      ClipCount* clip_count) override {
    cuda::ema_fake_quant(x, y, n, state, config, mask, MaskFormat::pass, clip_count, stream_.get());
  }
  void weight_range(const float* w, const ChannelLayout& layout, bool symmetric, float* min,
                    float* max, Workspace workspace) override {
    cuda::weight_range(w, layout, symmetric, min, max, workspace, stream_.get());
  }
  void fake_quant_weights(const float* w, float* y, const ChannelLayout& layout, RangeQuant quant,
                          bool symmetric, float* min, float* max, std::uint32_t* mask,
                          Workspace workspace) override {
    cuda::fake_quant_weights(w, y, layout, quant, symmetric, min, max, mask, workspace,
                             stream_.get());
  }
  void quant_delay_identity(const float* x, float* y, std::int64_t n, const std::int64_t* step,
                            std::int64_t quant_delay, std::uint32_t* mask) override {
    cuda::quant_delay_identity(x, y, n, step, quant_delay, mask, stream_.get());
  }
  void affine_params_from_range(const float* min, const float* max, std::int64_t channels,
                                AffineQuant quant, bool symmetric, float* scale,
                                std::int32_t* zero_point) override {
    cuda::affine_params_from_range(min, max, channels, quant, symmetric, scale, zero_point,
                                   stream_.get());
  }
  void lsq_forward(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                   LsqQuant quant, ClipCount* clip_count) override {
    cuda::lsq_forward(x, y, layout, scale, quant, clip_count, stream_.get());
  }
  void lsq_backward(const float* dy, const float* x, const ChannelLayout& layout,
                    const float* scale, LsqQuant quant, float* dx, float* d_scale,
                    Workspace workspace) override {
    cuda::lsq_backward(dy, x, layout, scale, quant, dx, d_scale, workspace, stream_.get());
  }
  void lsq_init_scale(const float* x, const ChannelLayout& layout, LsqQuant quant, float* scale,
                      Workspace workspace) override {
    cuda::lsq_init_scale(x, layout, quant, scale, workspace, stream_.get());
  }

 private:
  void expect_not_capturing(const std::string& what) const {
    LOWBIT_EXPECTS(!capturing_, what + " cannot run while capture() records a step");
  }

  /// Ends a capture whose step threw; the exception in flight reports why.
  void abandon_capture() noexcept {
    capturing_ = false;
    cudaGraph_t partial = nullptr;
    // Fails when the step's error already invalidated the capture; the stream
    // leaves capture mode either way.
    (void)cudaStreamEndCapture(stream_.get(), &partial);
    const gpu::Graph discarded(partial);
    // That error is already being thrown; a later launch check must not see it.
    (void)cudaGetLastError();
  }

  const ConvPlan& conv_plan(const Conv2dShape& s) {
    const ConvKey key{s.batch, s.in_channels, s.height,  s.width,
                      s.out_channels, s.kernel, s.stride, s.padding};
    if (const auto found = conv_plans_.find(key); found != conv_plans_.end()) return found->second;
    expect_not_capturing(first_call(describe(s)));
    ConvPlan plan{
        gpu::make_tensor_descriptor(to_int(s.batch), to_int(s.in_channels), to_int(s.height),
                                    to_int(s.width)),
        gpu::make_filter_descriptor(to_int(s.out_channels), to_int(s.in_channels),
                                    to_int(s.kernel), to_int(s.kernel)),
        gpu::make_tensor_descriptor(to_int(s.batch), to_int(s.out_channels),
                                    to_int(s.out_height()), to_int(s.out_width())),
        gpu::make_convolution_descriptor(to_int(s.padding), to_int(s.stride)),
        {}, {}, {}, Buffer()};
    choose_algorithms(describe(s), plan);
    std::size_t forward = 0, backward_data = 0, backward_filter = 0;
    LOWBIT_CUDNN_TRY(cudnnGetConvolutionForwardWorkspaceSize(
        cudnn_.get(), plan.x.get(), plan.w.get(), plan.conv.get(), plan.y.get(), plan.forward,
        &forward));
    LOWBIT_CUDNN_TRY(cudnnGetConvolutionBackwardDataWorkspaceSize(
        cudnn_.get(), plan.w.get(), plan.y.get(), plan.conv.get(), plan.x.get(),
        plan.backward_data, &backward_data));
    LOWBIT_CUDNN_TRY(cudnnGetConvolutionBackwardFilterWorkspaceSize(
        cudnn_.get(), plan.x.get(), plan.y.get(), plan.conv.get(), plan.w.get(),
        plan.backward_filter, &backward_filter));
    plan.workspace = allocate(std::max({forward, backward_data, backward_filter}));
    return conv_plans_.emplace(key, std::move(plan)).first->second;
  }

  /// cuDNN's heuristic ranking of each direction's algorithms for this shape
  /// (no timing runs, so nothing is launched), first usable one kept.
  void choose_algorithms(const std::string& shape, ConvPlan& plan) {
    int count = 0;
    std::array<cudnnConvolutionFwdAlgoPerf_t, CUDNN_CONVOLUTION_FWD_ALGO_COUNT> forward{};
    LOWBIT_CUDNN_TRY(cudnnGetConvolutionForwardAlgorithm_v7(
        cudnn_.get(), plan.x.get(), plan.w.get(), plan.conv.get(), plan.y.get(),
        static_cast<int>(forward.size()), &count, forward.data()));
    plan.forward = gpu::first_usable_algorithm(forward.data(), count, shape + ", forward");
    std::array<cudnnConvolutionBwdDataAlgoPerf_t, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT> data{};
    LOWBIT_CUDNN_TRY(cudnnGetConvolutionBackwardDataAlgorithm_v7(
        cudnn_.get(), plan.w.get(), plan.y.get(), plan.conv.get(), plan.x.get(),
        static_cast<int>(data.size()), &count, data.data()));
    plan.backward_data =
        gpu::first_usable_algorithm(data.data(), count, shape + ", backward data");
    std::array<cudnnConvolutionBwdFilterAlgoPerf_t, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT>
        filter{};
    LOWBIT_CUDNN_TRY(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
        cudnn_.get(), plan.x.get(), plan.y.get(), plan.conv.get(), plan.w.get(),
        static_cast<int>(filter.size()), &count, filter.data()));
    plan.backward_filter =
        gpu::first_usable_algorithm(filter.data(), count, shape + ", backward filter");
  }

  // Declaration order is destruction order reversed: the plans' workspaces
  // and the handles go before the stream they use.
  gpu::Stream stream_;
  bool capturing_ = false;
  gpu::CudnnHandle cudnn_;
  Buffer cublas_workspace_;
  gpu::CublasHandle cublas_;
  std::string description_;
  std::map<ConvKey, ConvPlan> conv_plans_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend() {
  const std::string problem = cuda::device_problem();
  LOWBIT_EXPECTS(problem.empty(), problem);
  return std::make_unique<CudaBackend>();
}

std::string cuda_device_problem() { return cuda::device_problem(); }

}  // namespace lowbit
