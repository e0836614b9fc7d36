// A Backend that forwards every call to another and, while recording, puts a
// timeline stamp after each one: the intervals between stamps then split a
// training step into stages (convolutions, GEMMs, lowbit quantizers, ...). On the GPU the
// stamps are CUDA events on the backend's stream, so a stage's time is the
// time the stream spent on its calls, including any wait for the host to
// queue them (eager mode).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/backend.hpp"

namespace lowbit::bench {

enum class Stage : std::size_t {
  conv,             ///< convolutions, forward and backward (cuDNN)
  gemm,             ///< fully connected layers (cuBLAS)
  pool,             ///< max pooling
  quantizers,       ///< fake quant, observers, STE, LSQ, the fused bias+ReLU+EMA quantizer
  bias_activation,  ///< fp32 bias, ReLU and add, forward and backward
  loss_sgd,         ///< softmax cross-entropy and the SGD update
  data,             ///< batch gather, cursor, shuffle
  memory,           ///< copies and fills
  count
};

inline constexpr std::array<const char*, static_cast<std::size_t>(Stage::count)> kStageNames = {
    "conv", "gemm", "pool", "quantizers", "bias_activation", "loss_sgd", "data", "memory"};

class StageTimedBackend final : public Backend {
 public:
  using StageTimes = std::array<double, static_cast<std::size_t>(Stage::count)>;

  /// Records at most `max_calls` calls between start() and stop().
  StageTimedBackend(Backend& inner, std::size_t max_calls)
      : inner_(inner), timeline_(inner.make_timeline(max_calls + 1)) {}

  /// Stamps every call from now until stop() (eagerly queued work only).
  void start() {
    stages_.clear();
    timeline_->stamp();
    recording_ = true;
  }

  /// Stops recording; milliseconds per stage since start(), once the calls are done.
  StageTimes stop() {
    recording_ = false;
    const std::vector<double> intervals = timeline_->take_intervals_ms();
    StageTimes ms{};
    for (std::size_t i = 0; i < intervals.size() && i < stages_.size(); ++i)
      ms[static_cast<std::size_t>(stages_[i])] += intervals[i];
    return ms;
  }

  DeviceKind kind() const override { return inner_.kind(); }
  std::string description() const override { return inner_.description(); }

  Buffer allocate(std::size_t bytes) override { return inner_.allocate(bytes); }
  void upload(void* dst, const void* host_src, std::size_t bytes) override {
    timed(Stage::memory, [&] { inner_.upload(dst, host_src, bytes); });
  }
  void download(void* host_dst, const void* src, std::size_t bytes) override {
    timed(Stage::memory, [&] { inner_.download(host_dst, src, bytes); });
  }
  void copy(void* dst, const void* src, std::size_t bytes) override {
    timed(Stage::memory, [&] { inner_.copy(dst, src, bytes); });
  }
  void fill_zero(void* dst, std::size_t bytes) override {
    timed(Stage::memory, [&] { inner_.fill_zero(dst, bytes); });
  }
  void synchronize() override { inner_.synchronize(); }
  std::unique_ptr<StepGraph> capture(const std::function<void()>& step) override {
    return inner_.capture(step);
  }
  std::unique_ptr<Timeline> make_timeline(std::size_t capacity) override {
    return inner_.make_timeline(capacity);
  }

  void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, float* y) override {
    timed(Stage::conv, [&] { inner_.conv2d_forward(s, x, w, y); });
  }
  void conv2d_backward(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                       float* dx, float* dw) override {
    timed(Stage::conv, [&] { inner_.conv2d_backward(s, x, w, dy, dx, dw); });
  }
  void linear_forward(const LinearShape& s, const float* x, const float* w, float* y) override {
    timed(Stage::gemm, [&] { inner_.linear_forward(s, x, w, y); });
  }
  void linear_backward(const LinearShape& s, const float* x, const float* w, const float* dy,
                       float* dx, float* dw) override {
    timed(Stage::gemm, [&] { inner_.linear_backward(s, x, w, dy, dx, dw); });
  }
  void max_pool_forward(const Pool2dShape& s, const float* x, float* y) override {
    timed(Stage::pool, [&] { inner_.max_pool_forward(s, x, y); });
  }
  void max_pool_backward(const Pool2dShape& s, const float* x, const float* y, const float* dy,
                         float* dx) override {
    timed(Stage::pool, [&] { inner_.max_pool_backward(s, x, y, dy, dx); });
  }
  void integer_conv2d(const Conv2dShape& s, const std::uint8_t* x, std::int32_t x_zero_point, int x_fraction_bits,
                      const std::uint8_t* w, const std::int32_t* w_zero_point,
                      const std::int32_t* bias, int accumulator_shift, const Requantization& r,
                      std::uint8_t* y) override {
    timed(Stage::conv, [&] {
      inner_.integer_conv2d(s, x, x_zero_point, x_fraction_bits, w, w_zero_point, bias, accumulator_shift, r, y);
    });
  }
  void max_pool_codes(const Pool2dShape& s, const std::uint8_t* x, std::uint8_t* y) override {
    timed(Stage::pool, [&] { inner_.max_pool_codes(s, x, y); });
  }

  void bias_activation(const float* x, const float* bias, const ChannelLayout& layout, bool relu,
                       float* y) override {
    timed(Stage::bias_activation, [&] { inner_.bias_activation(x, bias, layout, relu, y); });
  }
  void bias_activation_backward(const float* dy, const float* y, const ChannelLayout& layout,
                                bool relu, const std::uint32_t* pass_mask, float* dx,
                                float* d_bias, Workspace workspace) override {
    timed(Stage::bias_activation, [&] {
      inner_.bias_activation_backward(dy, y, layout, relu, pass_mask, dx, d_bias, workspace);
    });
  }
  void bias_relu_ema_fake_quant(const float* x, const float* bias, const ChannelLayout& layout,
                                float* y, EmaRangeState* state, const EmaConfig& config,
                                std::uint32_t* mask, ClipCount* clip_count) override {
    timed(Stage::quantizers, [&] {
      inner_.bias_relu_ema_fake_quant(x, bias, layout, y, state, config, mask, clip_count);
    });
  }
  void add(const float* a, const float* b, std::int64_t n, float* y) override {
    timed(Stage::bias_activation, [&] { inner_.add(a, b, n, y); });
  }
  void softmax_cross_entropy(const float* logits, const std::int32_t* labels, std::int64_t batch,
                             int classes, float* d_logits, LossTotals* totals) override {
    timed(Stage::loss_sgd, [&] {
      inner_.softmax_cross_entropy(logits, labels, batch, classes, d_logits, totals);
    });
  }
  void sgd_step(float* params, const float* grads, float* velocity, std::int64_t n,
                std::int64_t decay_count, SgdConfig config) override {
    timed(Stage::loss_sgd,
          [&] { inner_.sgd_step(params, grads, velocity, n, decay_count, config); });
  }
  std::size_t shuffle_workspace_bytes(std::int64_t n) const override {
    return inner_.shuffle_workspace_bytes(n);
  }
  void shuffle_indices(std::uint64_t seed, std::int64_t epoch, std::int64_t n, std::int32_t* perm,
                       Workspace workspace) override {
    timed(Stage::data, [&] { inner_.shuffle_indices(seed, epoch, n, perm, workspace); });
  }
  void gather_batch(const std::uint8_t* images, const std::uint8_t* labels, std::int64_t n,
                    std::int64_t example_size, const std::int32_t* perm,
                    const std::int64_t* cursor, std::int64_t batch, Normalization norm, float* x,
                    std::int32_t* labels_out) override {
    timed(Stage::data, [&] {
      inner_.gather_batch(images, labels, n, example_size, perm, cursor, batch, norm, x,
                          labels_out);
    });
  }
  void advance_cursor(std::int64_t* cursor) override {
    timed(Stage::data, [&] { inner_.advance_cursor(cursor); });
  }

  void fake_quant_affine(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                         const std::int32_t* zero_point, AffineQuant quant, std::uint32_t* mask,
                         ClipCount* clip_count) override {
    timed(Stage::quantizers, [&] {
      inner_.fake_quant_affine(x, y, layout, scale, zero_point, quant, mask, clip_count);
    });
  }
  void ste_backward(const float* dy, const std::uint32_t* mask, MaskFormat mask_format,
                    std::int64_t n, float* dx) override {
    timed(Stage::quantizers, [&] { inner_.ste_backward(dy, mask, mask_format, n, dx); });
  }
  void ema_state_init(EmaRangeState* state) override {
    timed(Stage::quantizers, [&] { inner_.ema_state_init(state); });
  }
  void ema_fake_quant(const float* x, float* y, std::int64_t n, EmaRangeState* state,
                      const EmaConfig& config, std::uint32_t* mask,
                      ClipCount* clip_count) override {
    timed(Stage::quantizers,
          [&] { inner_.ema_fake_quant(x, y, n, state, config, mask, clip_count); });
  }
  void weight_range(const float* w, const ChannelLayout& layout, bool symmetric, float* min,
                    float* max, Workspace workspace) override {
    timed(Stage::quantizers,
          [&] { inner_.weight_range(w, layout, symmetric, min, max, workspace); });
  }
  void fake_quant_weights(const float* w, float* y, const ChannelLayout& layout, RangeQuant quant,
                          bool symmetric, float* min, float* max, std::uint32_t* mask,
                          Workspace workspace) override {
    timed(Stage::quantizers, [&] {
      inner_.fake_quant_weights(w, y, layout, quant, symmetric, min, max, mask, workspace);
    });
  }
  void quant_delay_identity(const float* x, float* y, std::int64_t n, const std::int64_t* step,
                            std::int64_t quant_delay, std::uint32_t* mask) override {
    timed(Stage::quantizers,
          [&] { inner_.quant_delay_identity(x, y, n, step, quant_delay, mask); });
  }
  void affine_params_from_range(const float* min, const float* max, std::int64_t channels,
                                AffineQuant quant, bool symmetric, float* scale,
                                std::int32_t* zero_point) override {
    timed(Stage::quantizers, [&] {
      inner_.affine_params_from_range(min, max, channels, quant, symmetric, scale, zero_point);
    });
  }
  void lsq_forward(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                   LsqQuant quant, ClipCount* clip_count) override {
    timed(Stage::quantizers, [&] { inner_.lsq_forward(x, y, layout, scale, quant, clip_count); });
  }
  void lsq_backward(const float* dy, const float* x, const ChannelLayout& layout,
                    const float* scale, LsqQuant quant, float* dx, float* d_scale,
                    Workspace workspace) override {
    timed(Stage::quantizers, [&] {
      inner_.lsq_backward(dy, x, layout, scale, quant, dx, d_scale, workspace);
    });
  }
  void lsq_init_scale(const float* x, const ChannelLayout& layout, LsqQuant quant, float* scale,
                      Workspace workspace) override {
    timed(Stage::quantizers, [&] { inner_.lsq_init_scale(x, layout, quant, scale, workspace); });
  }

 private:
  /// Runs `call`; while recording, the stamp after it closes its interval.
  template <class Call>
  void timed(Stage stage, const Call& call) {
    call();
    if (!recording_) return;
    stages_.push_back(stage);
    timeline_->stamp();
  }

  Backend& inner_;
  std::unique_ptr<Timeline> timeline_;
  std::vector<Stage> stages_;
  bool recording_ = false;
};

}  // namespace lowbit::bench
