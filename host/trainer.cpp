#include "lowbit/trainer.hpp"

#include <algorithm>
#include <chrono>

#include "checkpoint.hpp"
#include "lowbit/error.hpp"
#include "session.hpp"

namespace lowbit {

QuantizeOptions default_train_quantization() {
  QuantizeOptions q;
  q.quant_delay = 500;
  return q;
}

RangeMode recommended_range(int weight_bits, int activation_bits) {
  const auto low = [](int bits) { return bits > 0 && bits < 4; };
  return low(weight_bits) || low(activation_bits) ? RangeMode::lsq : RangeMode::ema;
}

DeviceSelection select_device(DeviceChoice choice) {
  switch (choice) {
    case DeviceChoice::cpu: return {make_cpu_backend(), "requested with --device cpu"};
    case DeviceChoice::cuda: {
      const std::string problem = cuda_device_problem();
      LOWBIT_EXPECTS(problem.empty(), "--device cuda: " + problem + " (use --device cpu)");
      return {make_cuda_backend(), "requested with --device cuda"};
    }
    case DeviceChoice::automatic: break;
  }
  const std::string problem = cuda_device_problem();
  if (problem.empty()) return {make_cuda_backend(), "auto: a CUDA device is present"};
  return {make_cpu_backend(), "auto: " + problem};
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void check_options(const TrainOptions& o) {
  LOWBIT_EXPECTS(o.epochs >= 1, "train: epochs must be >= 1");
  LOWBIT_EXPECTS(o.batch >= 1, "train: batch must be >= 1");
  LOWBIT_EXPECTS(o.limit_train >= 0 && o.limit_test >= 0, "train: limits must be >= 0");
  LOWBIT_EXPECTS(o.sgd.learning_rate > 0.0f, "train: the learning rate must be positive");
  LOWBIT_EXPECTS(o.sgd.momentum >= 0.0f && o.sgd.momentum < 1.0f,
                 "train: momentum must be in [0, 1)");
  LOWBIT_EXPECTS(o.sgd.weight_decay >= 0.0f, "train: weight decay must be >= 0");
  LOWBIT_EXPECTS(o.normalization.std > 0.0f, "train: the normalisation std must be positive");
}

/// The options that decide the computation must match to resume bit-identically.
void check_resumable(const TrainOptions& now, const TrainOptions& saved, const std::string& path) {
  const auto same = [&](bool equal, const char* what) {
    LOWBIT_EXPECTS(equal, path + ": cannot resume with a different " + what +
                              " than the checkpoint was trained with");
  };
  const QuantizeOptions& a = now.quantize;
  const QuantizeOptions& b = saved.quantize;
  same(a.weight_bits == b.weight_bits, "--weight-bits");
  same(a.activation_bits == b.activation_bits, "--act-bits");
  same(a.output_bits == b.output_bits, "logit width");
  same(a.ema_decay == b.ema_decay, "--ema-decay");
  same(a.quant_delay == b.quant_delay, "--quant-delay");
  same(a.range == b.range, "--range");
  same(a.rounding == b.rounding && a.per_channel == b.per_channel &&
           a.symmetric_weights == b.symmetric_weights &&
           a.freeze_ranges_step == b.freeze_ranges_step,
       "quantization setting");
  bool same_layers = a.layer_bits.size() == b.layer_bits.size();
  for (const auto& [name, bits] : a.layer_bits) {
    const auto it = b.layer_bits.find(name);
    same_layers = same_layers && it != b.layer_bits.end() &&
                  it->second.weight_bits == bits.weight_bits &&
                  it->second.activation_bits == bits.activation_bits;
  }
  same(same_layers, "per-layer bit setting");
  same(now.batch == saved.batch, "--batch");
  same(now.seed == saved.seed, "--seed");
  same(now.limit_train == saved.limit_train, "--limit-train");
  same(now.normalization.mean == saved.normalization.mean &&
           now.normalization.std == saved.normalization.std,
       "input normalisation");
}

double accuracy(const LossTotals& t) {
  return t.examples > 0 ? static_cast<double>(t.correct) / static_cast<double>(t.examples) : 0.0;
}

double mean_loss(const LossTotals& t) {
  return t.examples > 0 ? t.loss_sum / static_cast<double>(t.examples) : 0.0;
}

}  // namespace

TrainReport train(const TrainOptions& options, Backend& backend, TrainObserver* observer) {
  check_options(options);
  Checkpoint resumed;
  if (!options.resume_path.empty()) {
    resumed = read_checkpoint(options.resume_path);
    check_resumable(options, resumed.options, options.resume_path);
  }
  const DatasetSplits data =
      load_mnist_directory(options.data_dir, options.limit_train, options.limit_test);
  Session session(options, backend, data);
  TrainProgress progress;
  if (options.resume_path.empty()) {
    session.network().initialize_parameters(options.seed);
    if (options.quantize.range == RangeMode::lsq) session.calibrate();
  } else {
    restore_checkpoint(resumed, session.network(), backend, session.velocity());
    progress = resumed.progress;
  }

  TrainReport report;
  report.device = backend.description();
  report.weight_bits = options.quantize.weight_bits;
  report.activation_bits = options.quantize.activation_bits;
  const std::int64_t steps = session.steps_per_epoch();
  const std::int64_t log_every = std::max<std::int64_t>(1, steps / 20);
  double train_seconds = 0.0;
  std::int64_t train_images = 0;
  for (std::int64_t epoch = progress.epochs_done; epoch < options.epochs; ++epoch) {
    if (observer) observer->epoch_started(epoch + 1, options.epochs, steps);
    session.begin_epoch(epoch);
    const Clock::time_point start = Clock::now();
    for (std::int64_t step = 1; step <= steps; ++step) {
      session.run_step();
      if (observer && (step % log_every == 0 || step == steps)) {
        const LossTotals t = session.totals();  // the one sync per log interval
        observer->progress(step, steps, mean_loss(t),
                           static_cast<double>(step * options.batch) / seconds_since(start));
      }
    }
    const LossTotals train_totals = session.totals();
    const double seconds = seconds_since(start);
    progress = {epoch + 1, progress.steps_done + steps};
    EpochReport e;
    e.epoch = epoch + 1;
    e.loss = mean_loss(train_totals);
    e.train_accuracy = accuracy(train_totals);
    e.seconds = seconds;
    e.images_per_second = static_cast<double>(steps * options.batch) / seconds;
    e.test_accuracy = accuracy(session.evaluate());
    train_seconds += seconds;
    train_images += steps * options.batch;
    if (!options.save_path.empty())
      save_checkpoint(options.save_path, options, progress, session.network(), backend,
                      session.velocity());
    report.epochs.push_back(e);
    if (observer) observer->epoch_finished(e);
  }
  report.test_accuracy =
      report.epochs.empty() ? accuracy(session.evaluate()) : report.epochs.back().test_accuracy;
  report.train_images_per_second =
      train_seconds > 0.0 ? static_cast<double>(train_images) / train_seconds : 0.0;
  report.skipped_ema_batches = session.skipped_ema_batches();
  return report;
}

TrainOptions checkpoint_options(const std::string& path) { return read_checkpoint(path).options; }

EvalReport evaluate(const std::string& checkpoint_path, const std::string& data_dir,
                    std::int64_t limit_test, Backend& backend) {
  const Checkpoint checkpoint = read_checkpoint(checkpoint_path);
  TrainOptions options = checkpoint.options;
  options.limit_test = limit_test;
  LOWBIT_EXPECTS(limit_test >= 0, "eval: --limit-test must be >= 0");
  DatasetSplits data;
  data.test = load_mnist_directory(data_dir, 1, limit_test).test;
  Session session(options, backend, data);
  restore_checkpoint(checkpoint, session.network(), backend, nullptr);
  const LossTotals totals = session.evaluate();
  EvalReport report;
  report.device = backend.description();
  report.weight_bits = options.quantize.weight_bits;
  report.activation_bits = options.quantize.activation_bits;
  report.examples = totals.examples;
  report.test_accuracy = accuracy(totals);
  report.loss = mean_loss(totals);
  return report;
}

}  // namespace lowbit
