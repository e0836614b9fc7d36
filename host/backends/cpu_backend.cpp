// The CPU backend: host memory, the lowbit::cpu layer math (cpu_ops.hpp) and
// quantizer ops (cpu_quant.hpp, cpu_reductions.hpp), and lowbit::ref for the
// rest, all run at once on the calling thread (with OpenMP inside), so
// synchronize() has nothing to wait for.
#include <omp.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "backends/cpu_ops.hpp"
#include "backends/cpu_quant.hpp"
#include "backends/cpu_reductions.hpp"
#include "lowbit/backend.hpp"
#include "lowbit/error.hpp"
#include "lowbit/ref.hpp"

namespace lowbit {
namespace {

// A cache line, and the widest vector a compiler may use on the data.
constexpr std::size_t kAlignment = 64;

void release_host(void* data) noexcept { std::free(data); }

void check_copy(const void* dst, const void* src, std::size_t bytes, const char* op) {
  LOWBIT_EXPECTS(bytes == 0 || (dst != nullptr && src != nullptr),
                 std::string(op) + ": null pointer with " + std::to_string(bytes) + " bytes");
}

// The step itself: on the CPU there is nothing to record.
class CpuStepGraph final : public StepGraph {
 public:
  explicit CpuStepGraph(std::function<void()> step) : step_(std::move(step)) {}
  void replay() override { step_(); }

 private:
  std::function<void()> step_;
};

class CpuTimeline final : public Timeline {
 public:
  explicit CpuTimeline(std::size_t capacity) : capacity_(capacity) { stamps_.reserve(capacity); }

  void stamp() override {
    LOWBIT_EXPECTS(stamps_.size() < capacity_, "cpu timeline: more than " +
                                                   std::to_string(capacity_) + " stamps");
    stamps_.push_back(Clock::now());
  }

  std::vector<double> take_intervals_ms() override {
    std::vector<double> intervals;
    for (std::size_t i = 1; i < stamps_.size(); ++i)
      intervals.push_back(
          std::chrono::duration<double, std::milli>(stamps_[i] - stamps_[i - 1]).count());
    stamps_.clear();
    return intervals;
  }

 private:
  using Clock = std::chrono::steady_clock;
  std::size_t capacity_;
  std::vector<Clock::time_point> stamps_;
};

class CpuBackend final : public Backend {
 public:
  DeviceKind kind() const override { return DeviceKind::cpu; }

  std::string description() const override {
    const int threads = omp_get_max_threads();
    return "cpu (" + std::to_string(threads) + (threads == 1 ? " thread)" : " threads)");
  }

  Buffer allocate(std::size_t bytes) override {
    // aligned_alloc wants a multiple of the alignment; a 0-byte request still
    // gets a distinct pointer.
    const std::size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    LOWBIT_EXPECTS(rounded >= bytes, "cpu allocate: " + std::to_string(bytes) + " bytes overflow");
    void* data = std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
    LOWBIT_EXPECTS(data != nullptr,
                   "cpu allocate: cannot allocate " + std::to_string(bytes) + " bytes");
    std::memset(data, 0, rounded == 0 ? kAlignment : rounded);
    return Buffer(data, bytes, release_host);
  }

  void upload(void* dst, const void* host_src, std::size_t bytes) override {
    copy(dst, host_src, bytes);
  }
  void download(void* host_dst, const void* src, std::size_t bytes) override {
    copy(host_dst, src, bytes);
  }
  void copy(void* dst, const void* src, std::size_t bytes) override {
    check_copy(dst, src, bytes, "cpu copy");
    if (bytes != 0) std::memmove(dst, src, bytes);
  }
  void fill_zero(void* dst, std::size_t bytes) override {
    check_copy(dst, dst, bytes, "cpu fill_zero");
    if (bytes != 0) std::memset(dst, 0, bytes);
  }
  void synchronize() override {}

  std::unique_ptr<StepGraph> capture(const std::function<void()>& step) override {
    LOWBIT_EXPECTS(static_cast<bool>(step), "cpu capture: empty step");
    return std::make_unique<CpuStepGraph>(step);
  }

  std::unique_ptr<Timeline> make_timeline(std::size_t capacity) override {
    return std::make_unique<CpuTimeline>(capacity);
  }

  void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, float* y) override {
    cpu::conv2d_forward(s, x, w, y, scratch_);
  }
  void conv2d_backward(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                       float* dx, float* dw) override {
    cpu::conv2d_backward(s, x, w, dy, dx, dw, scratch_);
  }
  void linear_forward(const LinearShape& s, const float* x, const float* w, float* y) override {
    cpu::linear_forward(s, x, w, y);
  }
  void linear_backward(const LinearShape& s, const float* x, const float* w, const float* dy,
                       float* dx, float* dw) override {
    cpu::linear_backward(s, x, w, dy, dx, dw);
  }
  void max_pool_forward(const Pool2dShape& s, const float* x, float* y) override {
    cpu::max_pool_forward(s, x, y);
  }
  // The maxima are found again in x, so y is not needed.
  void max_pool_backward(const Pool2dShape& s, const float* x, const float*, const float* dy,
                         float* dx) override {
    cpu::max_pool_backward(s, x, dy, dx);
  }
  void integer_conv2d(const Conv2dShape& s, const std::uint8_t* x, std::int32_t x_zero_point, int x_fraction_bits,
                      const std::uint8_t* w, const std::int32_t* w_zero_point,
                      const std::int32_t* bias, int accumulator_shift, const Requantization& r,
                      std::uint8_t* y) override {
    cpu::integer_conv2d(s, x, x_zero_point, x_fraction_bits, w, w_zero_point, bias, accumulator_shift, r, y);
  }
  void max_pool_codes(const Pool2dShape& s, const std::uint8_t* x, std::uint8_t* y) override {
    ref::max_pool_codes(s, x, y);
  }

  void bias_activation(const float* x, const float* bias, const ChannelLayout& layout, bool relu,
                       float* y) override {
    cpu::bias_activation(x, bias, layout, relu, y);
  }
  void bias_activation_backward(const float* dy, const float* y, const ChannelLayout& layout,
                                bool relu, const std::uint32_t* pass_mask, float* dx,
                                float* d_bias, Workspace workspace) override {
    cpu::bias_activation_backward(dy, y, layout, relu, pass_mask, dx, d_bias, workspace);
  }
  void bias_relu_ema_fake_quant(const float* x, const float* bias, const ChannelLayout& layout,
                                float* y, EmaRangeState* state, const EmaConfig& config,
                                std::uint32_t* mask, ClipCount* clip_count) override {
    cpu::bias_relu_ema_fake_quant(x, bias, layout, y, state, config, mask, clip_count);
  }
  void add(const float* a, const float* b, std::int64_t n, float* y) override {
    cpu::add(a, b, n, y);
  }
  void softmax_cross_entropy(const float* logits, const std::int32_t* labels, std::int64_t batch,
                             int classes, float* d_logits, LossTotals* totals) override {
    ref::softmax_cross_entropy(logits, labels, batch, classes, d_logits, totals);
  }
  void sgd_step(float* params, const float* grads, float* velocity, std::int64_t n,
                std::int64_t decay_count, SgdConfig config) override {
    ref::sgd_step(params, grads, velocity, n, decay_count, config);
  }
  std::size_t shuffle_workspace_bytes(std::int64_t n) const override {
    return ref::shuffle_workspace_bytes(n);
  }
  void shuffle_indices(std::uint64_t seed, std::int64_t epoch, std::int64_t n, std::int32_t* perm,
                       Workspace workspace) override {
    ref::shuffle_indices(seed, epoch, n, perm, workspace);
  }
  void gather_batch(const std::uint8_t* images, const std::uint8_t* labels, std::int64_t n,
                    std::int64_t example_size, const std::int32_t* perm, const std::int64_t* cursor,
                    std::int64_t batch, Normalization norm, float* x,
                    std::int32_t* labels_out) override {
    ref::gather_batch(images, labels, n, example_size, perm, cursor, batch, norm, x, labels_out);
  }
  void advance_cursor(std::int64_t* cursor) override { ref::advance_cursor(cursor); }

  void fake_quant_affine(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                         const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask,
                         ClipCount* clip_count) override {
    cpu::fake_quant_affine(x, y, layout, scale, zero_point, quant, mask, clip_count);
  }
  void ste_backward(const float* dy, const std::uint32_t* mask, MaskFormat mask_format,
                    std::int64_t n, float* dx) override {
    cpu::ste_backward(dy, mask, mask_format, n, dx);
  }
  void ema_state_init(EmaRangeState* state) override { ref::ema_state_init(state); }
  void ema_fake_quant(const float* x, float* y, std::int64_t n, EmaRangeState* state,
                      const EmaConfig& config, std::uint32_t* mask,
                      ClipCount* clip_count) override {
    cpu::ema_fake_quant(x, y, n, state, config, mask, MaskFormat::pass, clip_count);
  }
  void weight_range(const float* w, const ChannelLayout& layout, bool symmetric, float* min,
                    float* max, Workspace workspace) override {
    cpu::weight_range(w, layout, symmetric, min, max, workspace);
  }
  void fake_quant_weights(const float* w, float* y, const ChannelLayout& layout, RangeQuant quant,
                          bool symmetric, float* min, float* max, std::uint32_t* mask,
                          Workspace workspace) override {
    cpu::fake_quant_weights(w, y, layout, quant, symmetric, min, max, mask, workspace);
  }
  void quant_delay_identity(const float* x, float* y, std::int64_t n, const std::int64_t* step,
                            std::int64_t quant_delay, std::uint32_t* mask) override {
    cpu::quant_delay_identity(x, y, n, step, quant_delay, mask);
  }
  void affine_params_from_range(const float* min, const float* max, std::int64_t channels,
                                AffineQuant quant, bool symmetric, float* scale,
                                std::int32_t* zero_point) override {
    ref::affine_params_from_range(min, max, channels, quant, symmetric, scale, zero_point);
  }
  void lsq_forward(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                   LsqQuant quant, ClipCount* clip_count) override {
    cpu::lsq_forward(x, y, layout, scale, quant, clip_count);
  }
  void lsq_backward(const float* dy, const float* x, const ChannelLayout& layout,
                    const float* scale, LsqQuant quant, float* dx, float* d_scale,
                    Workspace workspace) override {
    cpu::lsq_backward(dy, x, layout, scale, quant, dx, d_scale, workspace);
  }
  void lsq_init_scale(const float* x, const ChannelLayout& layout, LsqQuant quant, float* scale,
                      Workspace workspace) override {
    cpu::lsq_init_scale(x, layout, quant, scale, workspace);
  }

 private:
  cpu::Scratch scratch_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  LOWBIT_EXPECTS(threads >= 0, "cpu backend: threads must be >= 0, got " + std::to_string(threads));
  // The calling thread's setting, which its parallel regions (every CPU op) use.
  if (threads > 0) omp_set_num_threads(threads);
  return std::make_unique<CpuBackend>();
}

}  // namespace lowbit
