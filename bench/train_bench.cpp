// Training-step benchmarks: one SGD step of LeNet-5 on 28×28 inputs, as
// `lowbit train` runs it (host/session.hpp), at fp32 and at QAT 8, 4 and 2
// bits, batch 64, 256 and 1024, eager and replayed as a CUDA graph.
//
// With a CUDA device it runs the CUDA backend (names start "gpu/"); without
// one, the CPU backend ("cpu/"). The data is synthetic (fixed-seed pixels and
// labels), uploaded once as the trainer uploads Fashion-MNIST: step time does
// not depend on pixel values, and the benchmark then needs no dataset. QAT
// uses the trainer's defaults (ema ranges from 4 bits up, lsq below) with
// quant_delay 0, so every quantizer runs from the first step.
//
// Benchmarks and counters:
//   train_step/<config>/batch:B/<mode>   wall time per iteration: one step
//       on the CPU; on the GPU, 20 steps queued and waited for once.
//       images_per_s     training images per second
//       step_ms          milliseconds per step
//       qat_overhead_pct 100·(fp32 img/s ÷ this img/s − 1), against fp32 at
//                        the same batch and mode in this run
//       loss             mean training loss over every step run (finite, or
//                        the benchmark fails)
//   train_breakdown/<config>/batch:B     one eager step with a timeline stamp
//       after every backend call (stage_timed_backend.hpp)
//       ms_<stage>       milliseconds per step in each stage
//       ms_step          their sum
// The binary exits 1 if any benchmark failed (harness.hpp).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "harness.hpp"
#include "lenet_configs.hpp"
#include "lowbit/backend.hpp"
#include "lowbit/trainer.hpp"
#include "train/session.hpp"
#include "stage_timed_backend.hpp"

namespace {

using lowbit::Backend;
using lowbit::Session;
using lowbit::TrainOptions;
using lowbit::bench::config_name;
using lowbit::bench::fail;
using lowbit::bench::StageTimedBackend;

constexpr std::int64_t kExamples = 60000;  // Fashion-MNIST's training split
constexpr std::int64_t kSide = 28;
constexpr int kGpuStepsPerIteration = 20;

TrainOptions options_for(int bits, std::int64_t batch, bool graph) {
  TrainOptions o;
  o.batch = batch;
  o.use_graph = graph;
  o.quantize = lowbit::bench::quantize_options(bits);
  return o;
}

/// Fixed-seed pixels and labels shaped like Fashion-MNIST; the small test
/// split is there because a session needs one, and is never evaluated.
const lowbit::DatasetSplits& synthetic_data() {
  static const lowbit::DatasetSplits splits = [] {
    const auto make = [](std::int64_t count, std::uint32_t seed) {
      std::mt19937 random(seed);
      lowbit::Dataset d;
      d.count = count;
      d.rows = d.cols = kSide;
      d.images.resize(static_cast<std::size_t>(count * kSide * kSide));
      d.labels.resize(static_cast<std::size_t>(count));
      for (auto& p : d.images) p = static_cast<std::uint8_t>(random() & 0xff);
      for (auto& l : d.labels) l = static_cast<std::uint8_t>(random() % 10);
      return d;
    };
    return lowbit::DatasetSplits{make(kExamples, 1), make(1024, 2)};
  }();
  return splits;
}

/// A session ready to step: parameters initialised, LSQ steps calibrated,
/// first epoch shuffled.
std::unique_ptr<Session> ready_session(const TrainOptions& options, Backend& backend) {
  auto session = std::make_unique<Session>(options, backend, synthetic_data());
  session->network().initialize_parameters(options.seed);
  if (options.quantize.range == lowbit::RangeMode::lsq) session->calibrate();
  session->begin_epoch(0);
  return session;
}

using Clock = std::chrono::steady_clock;

/// Steps through epochs, reshuffling when an epoch's batches run out, and
/// keeps the training loss of every step it ran.
class Stepper {
 public:
  explicit Stepper(Session& session) : session_(session) {}

  /// Readies the next `steps` steps: starts a new epoch unless they fit in this one.
  void reserve(std::int64_t steps) {
    if (done_ + steps <= session_.steps_per_epoch()) return;
    loss_sum_ += session_.totals().loss_sum;
    session_.begin_epoch(++epoch_);
    done_ = 0;
  }

  void step() {
    session_.run_step();
    ++done_;
    ++steps_;
  }

  /// Mean loss per example over every step run.
  double mean_loss(std::int64_t batch) {
    const double sum = loss_sum_ + session_.totals().loss_sum;
    return sum / static_cast<double>(steps_ * batch);
  }

 private:
  Session& session_;
  std::int64_t epoch_ = 0;
  std::int64_t done_ = 0;
  std::int64_t steps_ = 0;
  double loss_sum_ = 0.0;
};

/// fp32 images/s by batch and mode. fp32 is registered first, so it runs first.
std::map<std::pair<std::int64_t, bool>, double>& fp32_rate() {
  static std::map<std::pair<std::int64_t, bool>, double> by_config;
  return by_config;
}

void set_config_counters(benchmark::State& state, int bits, std::int64_t batch,
                         const TrainOptions& options) {
  state.counters["bits"] = bits;
  state.counters["batch"] = static_cast<double>(batch);
  state.SetLabel(bits == 0 ? "fp32" : lowbit::to_string(options.quantize.range));
}

void bench_step(benchmark::State& state, Backend& backend, int bits, std::int64_t batch,
                bool graph) {
  const TrainOptions options = options_for(bits, batch, graph);
  const auto session = ready_session(options, backend);
  const std::int64_t per_iteration =
      backend.kind() == lowbit::DeviceKind::cuda ? kGpuStepsPerIteration : 1;
  Stepper stepper(*session);
  // Untimed: the eager set-up step, the capture and a few replays.
  stepper.reserve(3);
  for (int i = 0; i < 3; ++i) stepper.step();
  backend.synchronize();

  double seconds = 0.0;
  for (auto _ : state) {
    stepper.reserve(per_iteration);  // outside the timed span: it waits for the queue
    const Clock::time_point start = Clock::now();
    for (std::int64_t i = 0; i < per_iteration; ++i) stepper.step();
    backend.synchronize();
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    state.SetIterationTime(elapsed);
    seconds += elapsed;
  }
  const double loss = stepper.mean_loss(batch);
  if (!std::isfinite(loss)) return fail(state, "the training loss is not finite");
  const double steps = static_cast<double>(state.iterations() * per_iteration);
  const double rate = steps * static_cast<double>(batch) / seconds;
  state.SetItemsProcessed(static_cast<std::int64_t>(steps) * batch);
  state.counters["images_per_s"] = rate;
  state.counters["step_ms"] = 1e3 * seconds / steps;
  state.counters["loss"] = loss;
  set_config_counters(state, bits, batch, options);
  if (bits == 0)
    fp32_rate()[{batch, graph}] = rate;
  else if (const auto fp32 = fp32_rate().find({batch, graph}); fp32 != fp32_rate().end())
    state.counters["qat_overhead_pct"] = 100.0 * (fp32->second / rate - 1.0);
}

// Calls per step are about 60; this leaves room for every layout of LeNet-5.
constexpr std::size_t kMaxCallsPerStep = 512;

void bench_breakdown(benchmark::State& state, Backend& backend, int bits, std::int64_t batch) {
  StageTimedBackend timed(backend, kMaxCallsPerStep);
  const TrainOptions options = options_for(bits, batch, false);
  const auto session = ready_session(options, timed);
  Stepper stepper(*session);
  stepper.reserve(1);
  stepper.step();
  backend.synchronize();

  StageTimedBackend::StageTimes total{};
  for (auto _ : state) {
    stepper.reserve(1);
    const Clock::time_point start = Clock::now();
    timed.start();
    stepper.step();
    const StageTimedBackend::StageTimes ms = timed.stop();  // waits for the step
    state.SetIterationTime(std::chrono::duration<double>(Clock::now() - start).count());
    for (std::size_t i = 0; i < ms.size(); ++i) total[i] += ms[i];
  }
  const double steps = static_cast<double>(state.iterations());
  double step_ms = 0.0;
  for (std::size_t i = 0; i < total.size(); ++i) {
    state.counters[std::string("ms_") + lowbit::bench::kStageNames[i]] = total[i] / steps;
    step_ms += total[i] / steps;
  }
  state.counters["ms_step"] = step_ms;
  set_config_counters(state, bits, batch, options);
}

template <class Body>
void add(const std::string& name, Body body) {
  lowbit::bench::add_guarded(name, body)->Unit(benchmark::kMillisecond)->UseManualTime();
}

void register_all(Backend& backend, const std::string& prefix) {
  const std::vector<int> configs = {0, 8, 4, 2};  // fp32 first: the overhead needs it
  const std::vector<std::int64_t> batches = {64, 256, 1024};
  Backend* b = &backend;
  for (const bool graph : {true, false})
    for (const std::int64_t batch : batches)
      for (const int bits : configs)
        add(prefix + "/train_step/" + config_name(bits) + "/batch:" + std::to_string(batch) +
                (graph ? "/graph" : "/eager"),
            [=](benchmark::State& s) { bench_step(s, *b, bits, batch, graph); });
  for (const std::int64_t batch : batches)
    for (const int bits : configs)
      add(prefix + "/train_breakdown/" + config_name(bits) + "/batch:" + std::to_string(batch),
          [=](benchmark::State& s) { bench_breakdown(s, *b, bits, batch); });
}

}  // namespace

int main(int argc, char** argv) {
  std::unique_ptr<Backend> backend;  // outlives every benchmark
  return lowbit::bench::run_benchmarks(argc, argv, [&] {
    const bool gpu = lowbit::cuda_device_problem().empty();
    backend = gpu ? lowbit::make_cuda_backend() : lowbit::make_cpu_backend();
    benchmark::AddCustomContext("backend", backend->description());
    register_all(*backend, gpu ? "gpu" : "cpu");
  });
}
